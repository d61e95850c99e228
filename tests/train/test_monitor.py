"""Training logs: per-group instance FPR meter (against loops), log lines, metrics.jsonl."""

import json

import numpy as np
import pytest
import torch

from fpr_plugin.train.monitor import GroupFprMeter, TrainingMonitor, format_record, truncate_metrics


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


def test_group_meter_from_groups_tsv_mapping():
    meter = GroupFprMeter.from_groups({0: "B", 1: "A", 3: "B", 9: "A"}, num_classes=5)  # class 9: outside
    assert meter.names == ["A", "B"]
    assert meter.class_to_group.tolist() == [1, 0, -1, 1, -1]
    assert GroupFprMeter.from_groups(None, 5) is None and GroupFprMeter.from_groups({}, 5) is None


def test_group_meter_reads_the_instance_fpr_a_loss_kept():
    meter = GroupFprMeter(torch.tensor([0, 1]), ["A", "B"])
    loss = torch.nn.Module()
    meter.update_from_loss(loss, torch.tensor([0, 1]))  # a loss without last_instance_fpr: nothing
    assert meter.summary() == {}
    loss.last_instance_fpr = torch.tensor([0.25, 0.0, 0.75])
    meter.update_from_loss(loss, torch.tensor([0, 1, 0]))
    out = meter.summary()
    assert out["group_fpr_mean/A"] == pytest.approx(0.5) and out["group_fpr_mean/B"] == 0.0
    assert out["group_sample_share/A"] == pytest.approx(2 / 3)


def test_a_pairs_meter_reads_its_own_attribute_and_prefixes_its_keys():
    meter = GroupFprMeter.from_groups({0: "A", 1: "B"}, 2, source="last_pair_instance_fpr", prefix="pairs_")
    loss = torch.nn.Module()
    loss.last_instance_fpr = torch.tensor([1.0, 0.0])  # the class form's: not this meter's
    loss.last_pair_instance_fpr = torch.tensor([0.1, 0.3, 0.2])
    meter.update_from_loss(loss, torch.tensor([0, 1, 1]))
    out = meter.summary()
    assert set(out) == {f"pairs_group_{kind}/{g}" for kind in ("fpr_mean", "above_share", "sample_share") for g in "AB"}
    assert out["pairs_group_fpr_mean/A"] == pytest.approx(0.1) and out["pairs_group_fpr_mean/B"] == pytest.approx(0.25)
    assert out["pairs_group_above_share/A"] == pytest.approx(0.1 / 0.6)


def test_truncate_metrics_keeps_records_up_to_the_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"global_step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4))
                    + '{"global_step": 5, "lo')  # a line cut by a kill
    truncate_metrics(path, 2)
    assert [json.loads(line)["global_step"] for line in path.read_text().splitlines()] == [1, 2]
    truncate_metrics(path, 0)
    assert path.read_text() == ""
    truncate_metrics(tmp_path / "absent.jsonl", 3)
    assert not (tmp_path / "absent.jsonl").exists()
