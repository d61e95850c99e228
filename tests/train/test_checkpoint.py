"""Checkpoint files: atomic writes, complete saves, pruning, RNG state, compatibility, re-sharding."""

import random

import numpy as np
import pytest
import torch

from fpr_plugin.train import checkpoint as ckpt


def test_save_file_is_atomic_and_loads_weights_only(tmp_path):
    path = tmp_path / "a" / "x.pt"
    state = {"w": torch.arange(4.0), "epoch": 3, "cfg": {"lr": 0.1, "steps": [1, 2]}, "rng": ckpt.rng_state()}
    ckpt.save_file(state, path)
    loaded = ckpt.load_file(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["cfg"] == state["cfg"]
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]  # no temporary left


def test_failed_write_leaves_no_file(tmp_path):
    def failing(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.atomic_write(tmp_path / "x.pt", failing)
    assert list(tmp_path.iterdir()) == []


def _touch(output, step, rank, world):
    ckpt.save_file({"step": step}, ckpt.checkpoint_path(output, step, rank, world))


def test_latest_checkpoint_skips_incomplete_saves(tmp_path):
    for rank in range(2):
        _touch(tmp_path, 4, rank, 2)
    _touch(tmp_path, 8, 0, 2)  # rank 1 crashed before writing
    latest = ckpt.latest_checkpoint(tmp_path)
    assert (latest.global_step, latest.world_size) == (4, 2)
    assert latest.rank_file(1).is_file()
    assert ckpt.latest_checkpoint(tmp_path / "nothing") is None


def test_prune_keeps_the_newest_complete_saves(tmp_path):
    for step in (2, 4, 6):
        _touch(tmp_path, step, 0, 1)
    _touch(tmp_path, 8, 0, 2)  # newer incomplete save: possibly still being written
    ckpt.prune_checkpoints(tmp_path, keep=2)
    steps = sorted(p.name for p in (tmp_path / ckpt.CHECKPOINT_DIR).iterdir())
    assert steps == ["step_00000004", "step_00000006", "step_00000008"]


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    ckpt.save_file(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.normal(size=3), [random.random() for _ in range(3)])
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    ckpt.set_rng_state(ckpt.load_file(tmp_path / "rng.pt"))
    again = (torch.rand(3), np.random.normal(size=3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_check_compatible_names_the_differing_key():
    saved = {"lr": 0.1, "loss": "cosface", "max_steps": None, "output": "a"}
    ckpt.check_compatible(saved, {**saved, "max_steps": 50, "output": "b"}, "ck")  # may differ
    with pytest.raises(ValueError, match=r"key 'loss' was 'cosface' there and is 'fpr_penalty'"):
        ckpt.check_compatible(saved, {**saved, "loss": "fpr_penalty"}, "ck")
    with pytest.raises(ValueError, match="'seed'"):
        ckpt.check_compatible(saved, {**saved, "seed": 1}, "ck")


def _shard_states(full, momentum, bounds):
    states = []
    for lo, hi in bounds:
        states.append({
            "backbone": {"w": torch.ones(1)},
            "head": {"weight": full[lo:hi].clone()},
            "head_shard": {"class_start": lo, "class_end": hi, "num_classes": full.shape[0]},
            "head_param_ids": [1],
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(1)},
                                    1: {"momentum_buffer": momentum[lo:hi].clone()}},
                          "param_groups": [{"params": [0]}, {"params": [1]}]},
            "rng": {}, "epoch": 2,
        })
    return states


def test_reshard_from_three_ranks_to_two():
    full, momentum = torch.randn(10, 3), torch.randn(10, 3)
    states = _shard_states(full, momentum, [(0, 4), (4, 7), (7, 10)])
    for lo, hi in [(0, 5), (5, 10)]:
        state = ckpt.reshard_state(states, lo, hi)
        assert torch.equal(state["head"]["weight"], full[lo:hi])
        assert torch.equal(state["optimizer"]["state"][1]["momentum_buffer"], momentum[lo:hi])
        assert torch.equal(state["optimizer"]["state"][0]["momentum_buffer"], torch.ones(1))
        assert state["head_shard"]["class_start"] == lo and "rng" not in state


def test_slice_class_rows_detects_a_gap():
    with pytest.raises(ValueError, match=r"do not cover classes \[0, 6\)"):
        ckpt.slice_class_rows([(0, 2, torch.zeros(2)), (4, 6, torch.zeros(2))], 0, 6)


def _tiny_state(num_classes=6, steps_per_epoch=4):
    from fpr_plugin.train.environment import RunEnvironment

    backbone, head = torch.nn.Linear(3, 2), torch.nn.Linear(2, num_classes, bias=False)
    optimizer = torch.optim.SGD([{"params": list(backbone.parameters())}, {"params": list(head.parameters())}],
                                lr=0.1, momentum=0.9)
    env = RunEnvironment(0, 1, 0, torch.device("cpu"), None, False)
    return ckpt.TrainState(backbone, head, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                           {"num_classes": num_classes, "lr": 0.1}, env=env, steps_per_epoch=steps_per_epoch)


def test_train_state_round_trip_and_epoch_rollover(tmp_path):
    state = _tiny_state()
    state.backbone(torch.ones(1, 3)).sum().backward()
    state.optimizer.step()  # momentum buffers exist now
    state.epoch, state.step_in_epoch, state.global_step = 1, 4, 8  # the epoch's last step is done
    saved = state.state_dict()
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (2, 0, 8)
    assert saved["head_param_ids"] == [2] and saved["head_shard"] == {"class_start": 0, "class_end": 6,
                                                                      "num_classes": 6}
    assert not {"format", "sampler", "scheduler"} & set(saved)
    path = state.save(tmp_path, keep=2)
    assert path == ckpt.checkpoint_path(tmp_path, 8, 0, 1) and (tmp_path / "model.pt").is_file()
    assert state.save(tmp_path, keep=2) == path  # the same step again: nothing new
    other = _tiny_state()
    assert other.resume(tmp_path).global_step == 8
    assert (other.epoch, other.step_in_epoch, other.global_step, other.last_saved) == (2, 0, 8, path)
    for mine, theirs in zip(other.optimizer.state_dict()["state"].values(), saved["optimizer"]["state"].values()):
        assert torch.equal(mine["momentum_buffer"], theirs["momentum_buffer"])
    assert torch.equal(other.head.weight, state.head.weight)


def test_train_state_never_saves_non_finite_values(tmp_path):
    state = _tiny_state()
    with torch.no_grad():
        state.head.weight[1, 0] = float("nan")
    state.global_step = 3
    with pytest.raises(ckpt.NonFiniteStateError, match=r"head\.weight"):
        state.save(tmp_path, keep=2)
    assert list(tmp_path.iterdir()) == [] and state.last_saved is None


def test_train_state_resume_skips_a_damaged_newest_checkpoint(tmp_path):
    state = _tiny_state()
    state.global_step = 2
    good = state.save(tmp_path, keep=3)
    state.global_step = 4
    state.save(tmp_path, keep=3).write_bytes(b"torn")
    other = _tiny_state()
    assert other.resume(tmp_path).global_step == 2 and other.last_saved == good
    assert _tiny_state().resume(tmp_path / "empty") is None
