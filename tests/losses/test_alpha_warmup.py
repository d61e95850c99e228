"""fpr_penalty's alpha_warmup: a linear ramp of alpha over the first training steps, off by default."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fpr_plugin.losses.fpr_penalty import FprPenalty
from fpr_reference import paper_loss


def batch(seed=1, n=7, c=9, d=5):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(c, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    return W[labels] + torch.randn(n, d, generator=g, dtype=torch.float64), W, labels


def library_loss(loss, x, W, labels):
    cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
    return F.cross_entropy(loss(cos, labels), labels).item()


def test_ramp_follows_the_reference_at_each_step_then_stays_at_alpha():
    x, W, labels = batch()
    loss = FprPenalty(s=16.0, gamma_u=0.05, alpha=0.8, alpha_warmup=4).train()
    for step in range(1, 7):
        expected = paper_loss(x, W, labels.tolist(), s=16.0, gamma_u=0.05, alpha=0.8 * min(1.0, step / 4))
        assert library_loss(loss, x, W, labels) == pytest.approx(expected["loss"].item(), rel=1e-10)
    assert int(loss.warmup_step) == 6


def test_eval_calls_do_not_advance_the_ramp_and_the_step_is_checkpointed():
    x, W, labels = batch(2)
    loss = FprPenalty(s=16.0, gamma_u=0.05, alpha=1.0, alpha_warmup=10).train()
    library_loss(loss, x, W, labels)
    loss.eval()
    library_loss(loss, x, W, labels)
    assert int(loss.warmup_step) == 1
    state = loss.state_dict()
    restored = FprPenalty(s=16.0, gamma_u=0.05, alpha=1.0, alpha_warmup=10)
    restored.load_state_dict(state)
    assert restored.current_alpha() == pytest.approx(0.2)


def test_off_by_default_exactly_the_paper_form_and_no_new_state():
    x, W, labels = batch(3)
    plain = FprPenalty(s=16.0, gamma_u=0.05, alpha=0.7)
    assert plain.alpha_warmup == 0 and "warmup_step" not in plain.state_dict()
    expected = paper_loss(x, W, labels.tolist(), s=16.0, gamma_u=0.05, alpha=0.7)
    for _ in range(3):
        assert library_loss(plain.train(), x, W, labels) == pytest.approx(expected["loss"].item(), rel=1e-10)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "3"])
def test_bad_alpha_warmup_is_named(bad):
    with pytest.raises(ValueError, match="alpha_warmup"):
        FprPenalty(alpha_warmup=bad)
