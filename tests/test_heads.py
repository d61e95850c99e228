"""ClassifierHead: local behaviour, and 2-process gloo runs equal to one process."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fpr_plugin.heads import ClassifierHead
from fpr_plugin.registry import build_loss
from gloo import run_two_ranks
from head_step import run_head

NUM_CLASSES = 11  # 6 + 5 over two ranks
DIM = 6
ROWS = (5, 4)  # uneven local batches
LOSSES = {
    "cosface": ("cosface", dict(s=16.0)),
    "arcface": ("arcface", dict(s=16.0)),
    "fpr_penalty": ("fpr_penalty", dict(s=16.0, gamma_u=0.05)),
    "fpr_penalty_embeddings_arcface": (
        "fpr_penalty",
        dict(s=16.0, gamma_u=0.08, base="arcface", m=0.5, penalty_grad="embeddings"),
    ),
    "fpr_penalty_tface": ("fpr_penalty_tface", dict(s=16.0)),
}


def global_batch():
    """The same global batch in every process (float64)."""
    g = torch.Generator().manual_seed(123)
    W = torch.randn(NUM_CLASSES, DIM, generator=g, dtype=torch.float64)
    labels = torch.randint(0, NUM_CLASSES, (sum(ROWS),), generator=g)
    x = W[labels] + 1.2 * torch.randn(sum(ROWS), DIM, generator=g, dtype=torch.float64)
    return x, W, labels


def make_head(key, W, parallel="classes"):
    name, params = LOSSES[key]
    head = ClassifierHead(DIM, NUM_CLASSES, build_loss(name, **params), parallel=parallel).double()
    with torch.no_grad():
        head.weight.copy_(W[head.class_start : head.class_end])
    return head


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=120)
    )
    try:
        x, W, labels = global_batch()
        start = sum(ROWS[:rank])
        rows = slice(start, start + ROWS[rank])
        results = {}
        for key in LOSSES:
            for parallel in ("classes", "data"):
                head = make_head(key, W, parallel)
                out = run_head(head, x[rows], labels[rows])
                out["class_range"] = (head.class_start, head.class_end)
                logits, raw = head(x[rows], labels[rows])
                out["logits_shape"] = tuple(logits.shape)
                results[key, parallel] = out
        torch.manual_seed(rank)  # different local initialisations...
        results["data_init"] = ClassifierHead(DIM, NUM_CLASSES, build_loss("cosface"), parallel="data").weight.detach()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_two_ranks(_worker, tmp_path_factory.mktemp("heads"))


@pytest.fixture(scope="module")
def one_process():
    x, W, labels = global_batch()
    return {key: run_head(make_head(key, W), x, labels) for key in LOSSES}


@pytest.mark.distributed
@pytest.mark.parametrize("key", list(LOSSES))
def test_class_sharded_head_equals_one_process(two_ranks, one_process, key):
    expected = one_process[key]
    assert [two_ranks[r][key, "classes"]["class_range"] for r in range(2)] == [(0, 6), (6, 11)]
    for rank, results in enumerate(two_ranks):
        got = results[key, "classes"]
        start = sum(ROWS[:rank])
        lo, hi = got["class_range"]
        assert got["loss"].item() == pytest.approx(expected["loss"].item(), rel=1e-9, abs=1e-6)
        torch.testing.assert_close(got["grad_x"], expected["grad_x"][start : start + ROWS[rank]], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got["grad_W"], expected["grad_W"][lo:hi], rtol=1e-6, atol=1e-6)
        assert got["logits_shape"] == (sum(ROWS), hi - lo)  # global rows, own classes
        for name, value in expected["stats"].items():
            assert got["stats"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
        if expected["instance_fpr"] is not None:
            torch.testing.assert_close(got["instance_fpr"], expected["instance_fpr"])
    if key.startswith("fpr"):
        assert expected["stats"]["penalty_mean"] > 0  # the penalty took part


@pytest.mark.distributed
@pytest.mark.parametrize("key", list(LOSSES))
def test_data_parallel_head_equals_one_process(two_ranks, one_process, key):
    expected = one_process[key]
    summed_grad_W = two_ranks[0][key, "data"]["grad_W"] + two_ranks[1][key, "data"]["grad_W"]
    torch.testing.assert_close(summed_grad_W, expected["grad_W"], rtol=1e-6, atol=1e-6)
    for rank, results in enumerate(two_ranks):
        got = results[key, "data"]
        start = sum(ROWS[:rank])
        assert got["class_range"] == (0, NUM_CLASSES)
        assert got["loss"].item() == pytest.approx(expected["loss"].item(), rel=1e-9, abs=1e-6)
        torch.testing.assert_close(got["grad_x"], expected["grad_x"][start : start + ROWS[rank]], rtol=1e-6, atol=1e-6)
        if "threshold" in expected["stats"]:
            # the threshold and rank are those of the global batch
            assert got["stats"]["threshold"] == pytest.approx(expected["stats"]["threshold"], abs=1e-12)
            assert got["stats"]["k"] == expected["stats"]["k"]
            torch.testing.assert_close(got["instance_fpr"], expected["instance_fpr"][start : start + ROWS[rank]])


@pytest.mark.distributed
def test_data_parallel_head_starts_from_the_same_weights_on_every_rank(two_ranks):
    # ...replaced by the first rank's weights at construction
    torch.testing.assert_close(two_ranks[0]["data_init"], two_ranks[1]["data_init"], rtol=0, atol=0)


def test_half_precision_cosines_run_the_loss_in_float32():
    torch.manual_seed(0)
    head = ClassifierHead(32, 300, build_loss("fpr_penalty", gamma_u=0.01))
    x, labels = torch.randn(16, 32), torch.randint(0, 300, (16,))
    exact = head.training_loss(x, labels).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = head.training_loss(x, labels)
    assert value.dtype == torch.float32
    assert head.loss.last_stats["weighted_fpr_max"] > 0
    assert value.item() == pytest.approx(exact, rel=0.05)


def test_local_head_matches_normalised_fc_and_loss():
    x, W, labels = global_batch()
    head = make_head("fpr_penalty", W)
    assert not head.sharded and (head.class_start, head.class_end) == (0, NUM_CLASSES)
    logits, raw = head(x, labels)
    cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
    torch.testing.assert_close(raw, 16.0 * cos)
    expected_logits = build_loss("fpr_penalty", s=16.0, gamma_u=0.05)(cos, labels)
    torch.testing.assert_close(logits, expected_logits)
    assert head.training_loss(x, labels).item() == pytest.approx(F.cross_entropy(expected_logits, labels).item())


def test_weight_init_and_bad_inputs():
    torch.manual_seed(0)
    head = ClassifierHead(64, 500, build_loss("cosface"))
    assert head.weight.shape == (500, 64)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 500\), got 500"):
        head(torch.randn(2, 64), torch.tensor([1, 500]))
    with pytest.raises(ValueError, match=r"embeddings must have shape \[N, 64\]"):
        head(torch.randn(2, 32), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="labels must hold 2 class ids"):
        head(torch.randn(2, 64), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        ClassifierHead(64, 0, build_loss("cosface"))
    with pytest.raises(ValueError, match="parallel must be"):
        ClassifierHead(64, 5, build_loss("cosface"), parallel="model")
