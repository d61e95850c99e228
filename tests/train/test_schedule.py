"""Learning-rate schedule: step decay by epoch and linear warmup."""

import pytest
import torch

from fpr_plugin.train.schedule import StepDecaySchedule, lr_at_step


def test_step_decay_at_epoch_boundaries():
    kw = dict(base_lr=0.1, steps_per_epoch=10, lr_steps=[2, 3], lr_decay=0.1)
    assert lr_at_step(0, **kw) == pytest.approx(0.1)
    assert lr_at_step(19, **kw) == pytest.approx(0.1)  # last step of epoch 1
    assert lr_at_step(20, **kw) == pytest.approx(0.01)  # first step of epoch 2
    assert lr_at_step(29, **kw) == pytest.approx(0.01)
    assert lr_at_step(30, **kw) == pytest.approx(0.001)
    assert lr_at_step(999, **kw) == pytest.approx(0.001)


def test_bupt_balancedface_schedule():
    kw = dict(base_lr=0.1, steps_per_epoch=100, lr_steps=[20, 32, 36])
    by_epoch = {e: lr_at_step(e * 100, **kw) for e in (0, 19, 20, 31, 32, 35, 36, 39)}
    expected = {0: 0.1, 19: 0.1, 20: 0.01, 31: 0.01, 32: 1e-3, 35: 1e-3, 36: 1e-4, 39: 1e-4}
    assert by_epoch == pytest.approx(expected)


def test_linear_warmup_reaches_base_lr():
    kw = dict(base_lr=0.2, steps_per_epoch=4, lr_steps=[], warmup_epoch=2.0)  # 8 warmup steps
    values = [lr_at_step(s, **kw) for s in range(10)]
    assert values[:8] == pytest.approx([0.2 * (s + 1) / 8 for s in range(8)])
    assert values[8:] == pytest.approx([0.2, 0.2])


def test_schedule_sets_every_param_group_and_is_stateless():
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                           {"params": [torch.zeros(1, requires_grad=True)]}], lr=1.0)
    sched = StepDecaySchedule(opt, base_lr=0.1, steps_per_epoch=5, lr_steps=[1])
    assert sched.apply(7) == pytest.approx(0.01)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.01])
    # stateless: a new schedule (as after a resume) gives the same rate for the same step
    other = StepDecaySchedule(opt, base_lr=0.1, steps_per_epoch=5, lr_steps=[1])
    assert other.apply(7) == sched.apply(7) == pytest.approx(0.1 * 0.1)
    assert not hasattr(other, "state_dict")


def test_bad_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lr_at_step(0, base_lr=0.1, steps_per_epoch=0)
