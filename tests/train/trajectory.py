"""Helpers shared by the tests that compare a distributed run with the one-process trajectory."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fpr_plugin.backbones import backbone_from_config


def losses_of(out: Path) -> list[float]:
    """The loss of every step in ``out/metrics.jsonl``, in step order."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in sorted(records, key=lambda r: r["global_step"])]


def per_rank_batchnorm(world_size: int):
    """A ``build_backbone`` running the one-process backbone on each rank's share of the batch separately.

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
