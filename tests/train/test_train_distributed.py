"""Two gloo processes under torchrun follow the one-process trajectory; re-sharding on resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fpr_plugin.backbones import backbone_from_config
from fpr_plugin.train import trainer
from fpr_plugin.train.checkpoint import CHECKPOINT_DIR, complete_checkpoints, load_file
from fpr_plugin.train.config import load_config

# lr 0.01 and no clipping: clipping would hide a wrongly scaled (averaged instead of summed)
# gradient. Five steps: in this 4-channel network, float rounding differences between the
# two computations grow quickly after that (BatchNorm over near-constant channels).
SETS = ["max_steps=5", "save_every=3", "keep_checkpoints=5", "frequent=1", "num_workers=0",
        "grad_clip=None", "lr=0.01"]


def _losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in sorted(records, key=lambda r: r["global_step"])]


@pytest.fixture
def one_thread():
    """Run the in-process reference with one intra-op thread, like the torchrun workers.

    A different thread count changes float summation order; over a few steps the
    threshold's hard indicator turns such rounding into visibly different losses.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _per_rank_batchnorm(world_size: int):
    """Run the one-process backbone on each rank's share of the batch separately.

    DDP (like arcface_torch, and as SyncBatchNorm is CUDA-only) normalises each
    rank's slice of the batch with that slice's statistics; this is the
    one-process computation with the same BatchNorm behaviour.
    """
    def build_backbone(cfg):
        model = backbone_from_config(cfg)
        forward = model.forward
        model.forward = lambda x: torch.cat([forward(part) for part in x.chunk(world_size)])
        return model

    return build_backbone


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_match_one_process_and_reshard(tiny_recipe, tmp_path, one_thread):
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "fpr_plugin.train", str(tiny_recipe), "--loss", "fpr_penalty",
           *[a for s in SETS + [f"output={two}"] for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]

    one = tmp_path / "one"
    trainer.train(load_config(tiny_recipe, loss="fpr_penalty", overrides=SETS + [f"output={one}"]),
                  build_backbone=_per_rank_batchnorm(2))
    reference = _losses(one)
    assert len(reference) == 5
    assert _losses(two) == pytest.approx(reference, rel=1e-4)

    # each rank saved its half of the 8 classes
    saved = {c.global_step: c for c in complete_checkpoints(two)}
    assert set(saved) == {3, 4, 5} and saved[3].world_size == 2
    shards = [load_file(saved[3].rank_file(r))["head_shard"] for r in range(2)]
    assert [(s["class_start"], s["class_end"]) for s in shards] == [(0, 4), (4, 8)]

    # resume the 2-process checkpoint of step 3 in one process: the classifier is re-sharded
    merged = tmp_path / "merged"
    shutil.copytree(saved[3].folder, merged / CHECKPOINT_DIR / saved[3].folder.name)
    summary = trainer.train(
        load_config(tiny_recipe, loss="fpr_penalty", overrides=SETS + [f"output={merged}", "resume=True"]),
        build_backbone=_per_rank_batchnorm(2),
    )
    assert summary["resumed_from"] == 3
    assert _losses(merged) == pytest.approx(reference[3:], rel=1e-4)
