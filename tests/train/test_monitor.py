"""Training logs: per-group instance FPR meter (against loops), log lines, metrics.jsonl."""

import json

import numpy as np
import pytest
import torch

from fpr_plugin.train.monitor import GroupFprMeter, TrainingMonitor, format_record


def test_group_meter_matches_loops():
    rng = np.random.default_rng(0)
    class_to_group = np.array([0, 0, 1, 2, 1, -1])
    names = ["African", "Asian", "Caucasian"]
    meter = GroupFprMeter(torch.tensor(class_to_group), names)
    steps = []
    for _ in range(3):
        labels = rng.integers(0, 6, size=20)
        fpr = rng.random(20) * (rng.random(20) < 0.5)
        steps.append((labels, fpr))
        meter.update(torch.tensor(fpr, dtype=torch.float32), torch.tensor(labels))
    out = meter.summary()
    rows = [(class_to_group[l], f) for labels, fpr in steps for l, f in zip(labels, np.float32(fpr)) if class_to_group[l] >= 0]
    total = sum(f for _, f in rows)
    for g, name in enumerate(names):
        mine = [f for gg, f in rows if gg == g]
        assert out[f"group_fpr_mean/{name}"] == pytest.approx(sum(mine) / len(mine), rel=1e-6)
        assert out[f"group_above_share/{name}"] == pytest.approx(sum(mine) / total, rel=1e-6)
        assert out[f"group_sample_share/{name}"] == pytest.approx(len(mine) / len(rows))
    assert meter.summary() == {}  # reset after reading


def test_log_line_and_metrics_file(tmp_path):
    monitor = TrainingMonitor(tmp_path, is_main=True, total_steps=10, start_step=0, global_batch=8,
                              use_tensorboard=False)
    for loss in (2.0, 4.0):
        monitor.step(loss)
    record = monitor.log({"epoch": 0, "global_step": 2, "loss": 4.0, "lr": 0.1, "threshold": 0.31,
                          "instance_fpr_mean": 1e-4, "instance_fpr_max": 3e-3, "penalty_mean": 0.5})
    monitor.close()
    assert record["loss_avg"] == pytest.approx(3.0) and record["samples_per_s"] > 0
    line = format_record(record)
    for text in ("loss 4.0000", "lr 0.1", "samples/s", "ETA", "T_u 0.31", "FPR mean 0.0001", "FPR max 0.003", "penalty 0.5"):
        assert text in line
    saved = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert saved[0]["threshold"] == 0.31 and saved[0]["global_step"] == 2
    assert "T_u 0.31" in (tmp_path / "training.log").read_text()


def test_other_ranks_write_nothing(tmp_path):
    monitor = TrainingMonitor(tmp_path / "out", is_main=False, total_steps=4, start_step=0, global_batch=2)
    monitor.step(1.0)
    monitor.log({"epoch": 0, "global_step": 1, "loss": 1.0, "lr": 0.1})
    monitor.close()
    assert not (tmp_path / "out").exists()
