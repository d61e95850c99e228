"""The real arcface_torch ``PartialFC_V2`` on 2 gloo ranks, with our loss through the adapter, equals ClassifierHead.

Gated on ``ARCFACE_TORCH_ROOT`` (marker ``host``). Also, without the gate:
the plugin's own ``PartialFC`` on 2 ranks equals one process, with and without
sampling, and a local FPR loss refuses to run under 2 ranks.
"""

from __future__ import annotations

import functools
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gloo import run_two_ranks  # noqa: E402

from fpr_plugin.heads import ClassifierHead  # noqa: E402
from fpr_plugin.registry import build_loss  # noqa: E402

ROOT = os.environ.get("ARCFACE_TORCH_ROOT")
needs_host = pytest.mark.skipif(not ROOT, reason="set ARCFACE_TORCH_ROOT to a checkout's recognition/arcface_torch")

DIM, ROWS = 8, 6  # rows per rank (PartialFC_V2 needs equal local batches)
SCALE = 16.0  # train_v2.py passes 64; smaller keeps every row under the host's probability clamp
# name -> (loss, loss_params, margin_list)
CASES = {
    "cosface": ("cosface", {}, (1.0, 0.0, 0.35)),
    "fpr_penalty_cosface": ("fpr_penalty", {"gamma_u": 0.05}, (1.0, 0.0, 0.35)),
    "fpr_penalty_arcface": ("fpr_penalty", {"gamma_u": 0.05}, (1.0, 0.5, 0.0)),
    "fpr_penalty_embeddings": ("fpr_penalty", {"gamma_u": 0.05, "penalty_grad": "embeddings"}, (1.0, 0.0, 0.35)),
    "fpr_penalty_tface": ("fpr_penalty_tface", {}, (1.0, 0.0, 0.35)),
}


def global_batch(num_classes: int):
    """The same float64 global batch in every process: weights W, embeddings x, labels."""
    g = torch.Generator().manual_seed(7)
    W = torch.randn(num_classes, DIM, generator=g, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (2 * ROWS,), generator=g)
    x = W[labels] + 1.5 * torch.randn(2 * ROWS, DIM, generator=g, dtype=torch.float64)
    return x, W, labels


def _cfg(case: str, num_classes: int, sample_rate: float) -> dict:
    loss, params, margins = CASES[case]
    return {"loss": loss, "loss_params": params, "margin_list": margins, "num_classes": num_classes,
            "sample_rate": sample_rate, "frequent": 1000}


def _worker(case: str, num_classes: int, sample_rate: float, use_host: bool, rank: int, port: int, out_dir: str) -> None:
    torch.set_default_dtype(torch.float64)  # the host allocates its gather buffers with the default dtype
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    from fpr_plugin.hosts.arcface_torch.install import _bindings

    cfg = _cfg(case, num_classes, sample_rate)
    names = _bindings(cfg)
    loss = names["CombinedMarginLoss"](SCALE, *cfg["margin_list"], 0)
    if use_host and "PartialFC_V2" not in names:
        from fpr_plugin.hosts.arcface_torch.checkout import import_host_module
        from fpr_plugin.hosts.arcface_torch.cpu import enable_cpu

        enable_cpu()  # .cuda() is the identity, as on a GPU it would be a move
        module_class = import_host_module(Path(ROOT).resolve(), "partial_fc_v2").PartialFC_V2
    else:
        from fpr_plugin.hosts.arcface_torch.partial_fc import PartialFC as module_class
    torch.manual_seed(100 + rank)  # the sampling draws differ per rank, as on GPUs
    module = module_class(loss, DIM, num_classes, sample_rate, False)
    x, W, labels = global_batch(num_classes)
    start = module.class_start
    with torch.no_grad():
        module.weight.copy_(W[start : start + module.weight.shape[0]])
    local_x = x[rank * ROWS : (rank + 1) * ROWS].clone().requires_grad_()
    value = module(local_x, labels[rank * ROWS : (rank + 1) * ROWS].clone())
    value.backward()
    index = getattr(module, "weight_index", None)
    torch.save({"loss": value.detach(), "grad_x": local_x.grad, "grad_W": module.weight.grad, "start": start,
                "index": None if index is None or sample_rate == 1 else index + start,
                "stats": dict(loss.last_stats), "type": type(module).__name__},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def reference(case: str, num_classes: int, columns: torch.Tensor | None):
    """One process, float64: ClassifierHead over the global batch (restricted to ``columns`` when sampled)."""
    loss_name, params, margins = CASES[case]
    from fpr_plugin.hosts.arcface_torch.margins import loss_params_from_margins

    x, W, labels = global_batch(num_classes)
    if columns is not None:  # the sampled definition: only the sampled columns exist this step
        W = W[columns]
        labels = torch.searchsorted(columns, labels)
    head = ClassifierHead(DIM, W.shape[0], build_loss(loss_name, **loss_params_from_margins(loss_name, SCALE, *margins), **params)).double()
    with torch.no_grad():
        head.weight.copy_(W)
    x = x.clone().requires_grad_()
    value = head.training_loss(x, labels)
    value.backward()
    with torch.no_grad():
        per_row = torch.nn.functional.cross_entropy(head(x, labels)[0], labels, reduction="none")
    # arcface_torch clamps each row's target probability at 1e-30: keep every row below that
    assert per_row.max() < 60, "test data must keep every row's loss below the host's clamp (69.1)"
    return {"loss": value.detach(), "grad_x": x.grad, "grad_W": head.weight.grad, "stats": dict(head.loss.last_stats)}


def check_against_reference(case, num_classes, sample_rate, use_host, tmp_path):
    got = run_two_ranks(functools.partial(_worker, case, num_classes, sample_rate, use_host), tmp_path)
    columns = None if sample_rate == 1 else torch.cat([g["index"] for g in got])
    ref = reference(case, num_classes, columns)
    full_grad_W = torch.zeros(num_classes, DIM, dtype=torch.float64)
    if columns is None:
        full_grad_W = ref["grad_W"]
    else:
        full_grad_W[columns] = ref["grad_W"]
    for rank, g in enumerate(got):
        torch.testing.assert_close(g["loss"], ref["loss"], rtol=1e-6, atol=1e-6)
        # the host's convention: world_size * d(loss)/d(local x), for DDP's averaging
        torch.testing.assert_close(g["grad_x"] / 2, ref["grad_x"][rank * ROWS : (rank + 1) * ROWS], rtol=1e-6, atol=1e-6)
        shard = slice(g["start"], g["start"] + g["grad_W"].shape[0])
        torch.testing.assert_close(g["grad_W"], full_grad_W[shard], rtol=1e-6, atol=1e-6)
        for key, value in ref["stats"].items():
            assert g["stats"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    if CASES[case][0].startswith("fpr"):
        assert ref["stats"]["penalty_mean"] > 0  # the penalty took part
    if columns is not None:
        assert 0 < columns.numel() < num_classes
        assert (full_grad_W.abs().sum(1) == 0).sum() >= num_classes - columns.numel()
    return got


@pytest.mark.host
@pytest.mark.distributed
@needs_host
@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
@pytest.mark.parametrize("case", list(CASES))
def test_real_partial_fc_v2_equals_classifier_head(case, sample_rate, tmp_path):
    num_classes = 11 if sample_rate == 1 else 40
    got = check_against_reference(case, num_classes, sample_rate, True, tmp_path)
    uses_features = case in ("fpr_penalty_embeddings", "fpr_penalty_tface")
    assert got[0]["type"] == ("PartialFC" if uses_features else "PartialFC_V2")


@pytest.mark.distributed
@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
@pytest.mark.parametrize("case", ["fpr_penalty_cosface", "fpr_penalty_tface"])
def test_plugin_partial_fc_on_two_ranks_equals_one_process(case, sample_rate, tmp_path):
    got = check_against_reference(case, 11 if sample_rate == 1 else 40, sample_rate, False, tmp_path)
    assert got[0]["type"] == "PartialFC"


def _local_worker(per_rank: bool, rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    loss = build_loss("fpr_penalty", gamma_u=0.1)
    if per_rank:
        loss.per_rank()
    cos = torch.rand(4, 5) * 2 - 1
    try:
        loss(cos, torch.tensor([0, 1, -1, 2]))
        outcome = "ran"
    except RuntimeError as exc:
        outcome = str(exc)
    torch.save({"outcome": outcome}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.distributed
def test_local_fpr_loss_refuses_several_ranks_unless_per_rank(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    refused = run_two_ranks(functools.partial(_local_worker, False), tmp_path / "a")
    for got in refused:
        assert "local layout but torch.distributed runs 2 ranks" in got["outcome"]
        assert "shard_classes(num_classes)" in got["outcome"] and "per_rank()" in got["outcome"]
    allowed = run_two_ranks(functools.partial(_local_worker, True), tmp_path / "b")
    assert [g["outcome"] for g in allowed] == ["ran", "ran"]
