"""fpr_penalty(negatives="pairs"): the instance FPR over the impostor pairs of the global batch.

Checked against a float64 loop reference written here from the definition
(every cosine a separate dot product, T_u from a sorted Python list over the
ordered impostor pairs (i, j) and (j, i), each row's loss an explicit
log-sum-exp), in one process and in 2 and 4 gloo processes.
"""

from __future__ import annotations

import math
import sys
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gloo import run_ranks  # noqa: E402
from head_step import run_head  # noqa: E402

from fpr_plugin.cli_errors import UserError  # noqa: E402
from fpr_plugin.distributed import Layout, shard_bounds  # noqa: E402
from fpr_plugin.heads import ClassifierHead  # noqa: E402
from fpr_plugin.losses.fpr_penalty import FprPenalty  # noqa: E402
from fpr_plugin.losses.margin import CosFace  # noqa: E402
from fpr_plugin.losses.pairs import pair_fpr, row_block  # noqa: E402
from fpr_plugin.registry import build_loss  # noqa: E402


# ---- the reference ------------------------------------------------------------------------------
def pair_reference(x, W, labels, *, s=64.0, m=0.35, gamma_u=1e-4, p=2.0, alpha=1.0, base="cosface", orders=1):
    """Mean Eq. 10 loss with g_i over impostor pairs; T_u, k and per-row FPRs (float64 loops).

    T_u is the k-th largest cosine of the unordered impostor pairs {i, j}
    (``orders=2``: of the list with both (i, j) and (j, i), k over its length).
    Rows labelled -1 have no class: they are left out of the pairs and of the loss.
    """
    n, c = x.shape[0], W.shape[0]
    xn = [x[i] / torch.sqrt((x[i] * x[i]).sum()) for i in range(n)]
    wn = [W[j] / torch.sqrt((W[j] * W[j]).sum()) for j in range(c)]
    pair = {}
    for i in range(n):
        for j in range(i + 1, n):
            if labels[i] >= 0 and labels[j] >= 0 and labels[i] != labels[j]:
                pair[i, j] = pair[j, i] = (xn[i] * xn[j]).sum()
    ordered = sorted((v.item() for (i, j), v in pair.items() if orders == 2 or i < j), reverse=True)
    if ordered:
        k = max(1, math.ceil(Fraction(repr(gamma_u)) * len(ordered)))
        threshold = ordered[k - 1]
    else:
        k, threshold = 0, math.inf
    rows, fprs, weighted = [], [], []
    for i in range(n):
        impostors = [j for j in range(n) if (i, j) in pair]
        above = [j for j in impostors if pair[i, j].item() > threshold]
        fprs.append(len(above) / len(impostors) if impostors else 0.0)
        g = sum((pair[i, j] ** p for j in above if pair[i, j].item() > 0), torch.zeros((), dtype=x.dtype))
        g = g / len(impostors) if impostors else g
        weighted.append(g)
        if labels[i] < 0:
            continue
        cos = [(xn[i] * wn[j]).sum() for j in range(c)]
        y = labels[i]
        if base == "cosface":
            target = cos[y] - m
        else:
            target = cos[y] * math.cos(m) - torch.sqrt(1 - cos[y] * cos[y]) * math.sin(m)
        logits = [s * (cos[j] + alpha * g / gamma_u) if j != y else s * target for j in range(c)]
        rows.append(torch.logsumexp(torch.stack(logits), 0) - logits[y])
    return {
        "loss": torch.stack(rows).mean(),
        "threshold": threshold,
        "k": k,
        "instance_fpr": fprs,
        "weighted_fpr": [g.item() for g in weighted],
    }


def reference_with_grads(x, W, labels, **params):
    x = x.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    out = pair_reference(x, W, labels, **params)
    gx, gW = torch.autograd.grad(out["loss"], (x, W))
    return out, gx, gW


def implementation(loss, x, W, labels):
    """Loss, gradients and stats of the library loss on one process (cos and the embeddings it needs)."""
    x = x.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    xn = F.normalize(x, dim=1)
    cos = xn @ F.normalize(W, dim=1).T
    value = F.cross_entropy(loss(cos, labels, norm_embeddings=xn), labels, ignore_index=-1)
    gx, gW = torch.autograd.grad(value, (x, W))
    return value.detach(), gx, gW


def make_batch(n, c, d, seed, classes_used=None, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(c, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes_used or c, (n,), generator=g)
    x = W[labels] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, W, labels


CASES = [
    dict(n=10, c=6, d=5, seed=0, params=dict(s=16.0, gamma_u=0.05)),
    dict(n=12, c=7, d=4, seed=1, params=dict(s=8.0, gamma_u=0.2, p=1.5, alpha=0.3)),
    dict(n=9, c=5, d=6, seed=2, params=dict(s=16.0, m=0.5, gamma_u=0.1, base="arcface", alpha=0.7)),
    dict(n=14, c=9, d=3, seed=3, params=dict(s=32.0, gamma_u=0.02, p=3.0)),  # k = 2
]


# ---- one process --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda case: f"seed{case['seed']}")
def test_loss_gradients_and_stats_match_the_loop_reference(case):
    x, W, labels = make_batch(case["n"], case["c"], case["d"], case["seed"], classes_used=4)
    params = case["params"]
    expected, gx, gW = reference_with_grads(x, W, labels.tolist(), **params)
    loss = FprPenalty(negatives="pairs", **params)
    value, got_x, got_W = implementation(loss, x, W, labels)
    assert value.item() == pytest.approx(expected["loss"].item(), rel=1e-10)
    torch.testing.assert_close(got_x, gx, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(got_W, gW, rtol=1e-8, atol=1e-10)
    stats = loss.last_stats
    assert stats["threshold"] == pytest.approx(expected["threshold"], abs=1e-12)
    assert stats["k"] == expected["k"]
    torch.testing.assert_close(loss.last_instance_fpr, torch.tensor(expected["instance_fpr"], dtype=torch.float64))
    assert stats["instance_fpr_mean"] == pytest.approx(sum(expected["instance_fpr"]) / case["n"], rel=1e-12)
    assert stats["weighted_fpr_max"] == pytest.approx(max(expected["weighted_fpr"]), rel=1e-10)
    assert stats["penalty_mean"] > 0  # the penalty took part


def test_the_pair_form_is_not_the_class_form():
    # Same batch: the two definitions see different negatives, so T_u and the FPRs differ.
    x, W, labels = make_batch(10, 6, 5, 0, classes_used=4)
    pairs, classes = FprPenalty(s=16.0, gamma_u=0.05, negatives="pairs"), FprPenalty(s=16.0, gamma_u=0.05)
    implementation(pairs, x, W, labels)
    implementation(classes, x, W, labels)
    assert pairs.last_stats["threshold"] != pytest.approx(classes.last_stats["threshold"], abs=1e-6)
    assert pairs.last_stats["k"] == pair_reference(x, W, labels.tolist(), gamma_u=0.05)["k"]
    assert pairs.last_stats["k"] == math.ceil(0.05 * sum((labels[i] != labels[j]).item() for i in range(10) for j in range(i)))
    assert classes.last_stats["k"] == math.ceil(0.05 * 10 * 5)


@pytest.mark.parametrize("gamma_u", [0.01, 0.015, 0.02, 0.1, 0.37])
def test_counting_both_orders_gives_the_same_threshold_and_fprs(gamma_u):
    # k = ceil(2 gamma_u M) over the doubled list lands on the ceil(gamma_u M)-th pair, twins and all
    x, W, labels = make_batch(14, 9, 3, 3, classes_used=4)
    once = pair_reference(x, W, labels.tolist(), s=32.0, gamma_u=gamma_u)
    both = pair_reference(x, W, labels.tolist(), s=32.0, gamma_u=gamma_u, orders=2)
    assert both["k"] in (2 * once["k"], 2 * once["k"] - 1)
    assert both["threshold"] == once["threshold"] and both["instance_fpr"] == once["instance_fpr"]
    loss = FprPenalty(s=32.0, gamma_u=gamma_u, negatives="pairs")
    implementation(loss, x, W, labels)
    assert loss.last_stats["k"] == once["k"]
    assert loss.last_stats["threshold"] == pytest.approx(once["threshold"], abs=1e-12)
    assert loss.last_instance_fpr.tolist() == pytest.approx(once["instance_fpr"], abs=1e-15)


def test_finite_differences():
    x, W, labels = make_batch(8, 5, 4, 7, classes_used=3)
    loss = FprPenalty(s=4.0, gamma_u=0.1, alpha=0.5, negatives="pairs")

    def fn(x, W):
        xn = F.normalize(x, dim=1)
        return F.cross_entropy(loss(xn @ F.normalize(W, dim=1).T, labels, norm_embeddings=xn), labels)

    assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(), W.clone().requires_grad_()), eps=1e-6, atol=1e-6)


def tie_batch(seed, n=12, c=5):
    """Embeddings with entries +-0.5 in D = 4: unit norm exactly, every pair cosine in {-1, -0.5, 0, 0.5, 1}."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 2, (n, 4), generator=g).to(torch.float64) - 0.5)
    W = torch.randn(c, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (n,), generator=g)
    return x, W, labels


@pytest.mark.parametrize("gamma_u", [0.05, 0.3, 0.6])
def test_ties_at_the_threshold_are_not_mined(gamma_u):
    x, W, labels = tie_batch(11)
    expected, gx, gW = reference_with_grads(x, W, labels.tolist(), s=8.0, gamma_u=gamma_u)
    ordered = sorted(
        (F.normalize(x, dim=1)[i] @ F.normalize(x, dim=1)[j]).item()
        for i in range(12) for j in range(i + 1, 12) if labels[i] != labels[j]
    )[::-1]
    k = expected["k"]
    assert ordered.count(ordered[k - 1]) > 1 and ordered[k] == ordered[k - 1]  # a tie straddles rank k
    loss = FprPenalty(s=8.0, gamma_u=gamma_u, negatives="pairs")
    value, got_x, got_W = implementation(loss, x, W, labels)
    assert loss.last_stats["threshold"] == expected["threshold"]
    assert loss.last_instance_fpr.tolist() == expected["instance_fpr"]  # exact: cosines and counts are exact
    assert value.item() == pytest.approx(expected["loss"].item(), rel=1e-12)
    torch.testing.assert_close(got_x, gx, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_W, gW, rtol=1e-9, atol=1e-12)
    if expected["threshold"] <= 0:  # cosines at or below zero above T_u carry no weight
        assert sum(expected["weighted_fpr"]) < sum(expected["instance_fpr"])


def test_one_class_in_the_batch_means_no_penalty():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    W = torch.randn(3, 4, generator=g, dtype=torch.float64)
    labels = torch.full((6,), 2)
    loss = FprPenalty(s=16.0, gamma_u=0.1, negatives="pairs")
    value, got_x, got_W = implementation(loss, x, W, labels)
    plain, plain_x, plain_W = implementation(CosFace(s=16.0), x, W, labels)
    assert value.item() == plain.item()  # nothing added: exactly the margin loss
    torch.testing.assert_close(got_x, plain_x, rtol=0, atol=0)
    torch.testing.assert_close(got_W, plain_W, rtol=0, atol=0)
    stats = loss.last_stats
    assert stats["k"] == 0 and stats["threshold"] == math.inf
    assert stats["instance_fpr_max"] == 0 and stats["penalty_mean"] == 0
    expected = pair_reference(x, W, labels.tolist(), s=16.0, gamma_u=0.1)
    assert expected["k"] == 0 and expected["loss"].item() == pytest.approx(value.item(), rel=1e-12)


def test_rows_without_a_class_take_no_part_in_the_pairs():
    x, W, labels = make_batch(10, 6, 5, 4, classes_used=3)
    labels[[2, 7]] = -1
    expected, gx, gW = reference_with_grads(x, W, labels.tolist(), s=16.0, gamma_u=0.1)
    loss = FprPenalty(s=16.0, gamma_u=0.1, negatives="pairs")
    value, got_x, got_W = implementation(loss, x, W, labels)
    assert loss.last_stats["k"] == expected["k"]
    assert loss.last_stats["threshold"] == pytest.approx(expected["threshold"], abs=1e-12)
    torch.testing.assert_close(loss.last_instance_fpr, torch.tensor(expected["instance_fpr"], dtype=torch.float64))
    assert value.item() == pytest.approx(expected["loss"].item(), rel=1e-10)
    torch.testing.assert_close(got_x, gx, rtol=1e-8, atol=1e-10)
    assert got_x[[2, 7]].abs().max().item() == 0  # unlabelled rows: in no pair and no loss term


def test_half_precision_embeddings_give_float32_pair_cosines():
    x, W, labels = make_batch(10, 6, 8, 9, classes_used=4)
    xn = F.normalize(x.float(), dim=1)
    cos = xn @ F.normalize(W.float(), dim=1).T
    loss = FprPenalty(s=16.0, gamma_u=0.05, negatives="pairs")
    logits = loss(cos, labels, norm_embeddings=xn.half())
    assert logits.dtype == torch.float32
    expected = pair_reference(x, W, labels.tolist(), s=16.0, gamma_u=0.05)
    assert loss.last_stats["threshold"] == pytest.approx(expected["threshold"], abs=2e-3)


def test_through_the_head_and_with_alpha_warmup():
    x, W, labels = make_batch(10, 6, 5, 0, classes_used=4)
    head = ClassifierHead(5, 6, FprPenalty(s=16.0, gamma_u=0.05, alpha=0.8, alpha_warmup=4, negatives="pairs")).double()
    with torch.no_grad():
        head.weight.copy_(W)
    for step in (1, 2):
        expected = pair_reference(x, W, labels.tolist(), s=16.0, gamma_u=0.05, alpha=0.8 * step / 4)
        assert head.training_loss(x, labels).item() == pytest.approx(expected["loss"].item(), rel=1e-10)


def test_default_is_the_class_form_and_needs_no_embeddings():
    loss = build_loss("fpr_penalty")
    assert loss.negatives == "classes" and "negatives" not in repr(loss)
    x, W, labels = make_batch(6, 4, 3, 1)
    loss(F.normalize(x, dim=1) @ F.normalize(W, dim=1).T, labels)  # no norm_embeddings needed
    assert "negatives='pairs'" in repr(build_loss("fpr_penalty", negatives="pairs"))


def test_pairs_need_the_embeddings_and_a_known_choice():
    x, W, labels = make_batch(6, 4, 3, 1)
    cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
    loss = FprPenalty(negatives="pairs")
    with pytest.raises(ValueError, match="norm_embeddings"):
        loss(cos, labels)
    with pytest.raises(ValueError, match=r"norm_embeddings must be .*\[6, D\]"):
        loss(cos, labels, norm_embeddings=x[:5])
    with pytest.raises(ValueError, match="negatives must be one of 'classes', 'pairs', got 'pear'"):
        FprPenalty(negatives="pear")


def test_recipe_override_builds_and_a_bad_value_is_one_line(tmp_path, capsys):
    from fpr_plugin.train.cli import main
    from fpr_plugin.train.config import load_config

    recipe = tmp_path / "r.py"
    recipe.write_text("config = {}\n")
    cfg = load_config(recipe, loss="fpr_penalty", overrides=["loss_params.negatives=pairs"])
    assert build_loss(cfg.loss, **cfg.loss_params).negatives == "pairs"
    with pytest.raises(UserError, match="'pear'"):
        load_config(recipe, loss="fpr_penalty", overrides=["loss_params.negatives=pear"])
    assert main([str(recipe), "--loss", "fpr_penalty", "--set", "loss_params.negatives=pear", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "negatives" in err and "'pear'" in err and "'classes', 'pairs'" in err


def test_arcface_torch_route_passes_the_embeddings_for_pairs():
    from fpr_plugin.hosts.arcface_torch.margins import needs_features

    assert needs_features("fpr_penalty", {"negatives": "pairs"})
    assert not needs_features("fpr_penalty", {"negatives": "classes"})


def test_row_blocks_cover_the_rows_once():
    for n, w in [(9, 2), (9, 4), (3, 4), (0, 2), (8, 8)]:
        blocks = [row_block(n, w, r) for r in range(w)]
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert max(e - s for s, e in blocks) - min(e - s for s, e in blocks) <= 1


# ---- several processes --------------------------------------------------------------------------
NUM_CLASSES = 11
DIM = 6
ROWS = {2: (5, 4), 4: (3, 2, 2, 2)}  # uneven local batches, 9 rows in all
PARAMS = dict(s=16.0, gamma_u=0.05, alpha=0.9, negatives="pairs")
SMALL = 3  # rows of the direct class-sharded call: fewer than 4 ranks, so a block is empty


def global_batch():
    g = torch.Generator().manual_seed(321)
    W = torch.randn(NUM_CLASSES, DIM, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (9,), generator=g)  # 4 classes in the batch: many same-label pairs
    x = W[labels] + 1.2 * torch.randn(9, DIM, generator=g, dtype=torch.float64)
    return x, W, labels


def make_head(W, parallel="classes", sample_rate=1.0):
    head = ClassifierHead(DIM, NUM_CLASSES, build_loss("fpr_penalty", **PARAMS), parallel=parallel,
                          sample_rate=sample_rate).double()
    with torch.no_grad():
        head.weight.copy_(W[head.class_start : head.class_end])
    return head


def small_call(x, rank=0, world=1):
    """pair_fpr on SMALL gathered rows under a class-sharded layout, loss = this rank's share of a weighted sum."""
    labels = torch.tensor([0, 2, 3])  # global classes of 4, one block each on 4 ranks
    e = F.normalize(x[:SMALL], dim=1).detach().requires_grad_()
    start, end = shard_bounds(4, world, rank)
    local = torch.where((labels >= start) & (labels < end), labels - start, torch.full_like(labels, -1))
    found = pair_fpr(e, local, 0.6, 2.0, Layout.class_sharded(4) if world > 1 else Layout.local())
    share = torch.arange(1.0, SMALL + 1, dtype=torch.float64) / world  # shares sum to the one-process weights
    (share * found.weighted_fpr).sum().backward()
    return {"threshold": found.threshold.item(), "k": found.k, "instance_fpr": found.instance_fpr.detach(),
            "weighted_fpr": found.weighted_fpr.detach(), "grad_e": e.grad}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    world = len(next(r for r in ROWS.values() if Path(out_dir, f"world{len(r)}").exists()))
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:
        x, W, labels = global_batch()
        start = sum(ROWS[world][:rank])
        rows = slice(start, start + ROWS[world][rank])
        results = {}
        for parallel in ("classes", "data"):
            head = make_head(W, parallel)
            out = run_head(head, x[rows], labels[rows])
            out["class_range"] = (head.class_start, head.class_end)
            results[parallel] = out
        torch.manual_seed(rank)
        results["sampled"] = run_head(make_head(W, "classes", sample_rate=0.5), x[rows], labels[rows])
        results["small"] = small_call(x, rank, world)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def one_process():
    x, W, labels = global_batch()
    out = run_head(make_head(W), x, labels)
    out["reference"] = reference_with_grads(x, W, labels.tolist(), **{k: v for k, v in PARAMS.items() if k != "negatives"})
    out["small"] = small_call(x)
    return out


@pytest.fixture(scope="module", params=[2, 4], ids=["2 ranks", "4 ranks"])
def ranks(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"pairs{request.param}")
    (folder / f"world{request.param}").touch()
    return run_ranks(_worker, folder, nprocs=request.param)


def test_one_process_head_matches_the_reference(one_process):
    expected, gx, gW = one_process["reference"]
    assert one_process["loss"].item() == pytest.approx(expected["loss"].item(), rel=1e-10)
    torch.testing.assert_close(one_process["grad_x"], gx, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(one_process["grad_W"], gW, rtol=1e-8, atol=1e-10)
    assert one_process["stats"]["k"] == expected["k"] and one_process["stats"]["penalty_mean"] > 0


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", ["classes", "data"])
def test_several_processes_equal_one_process(ranks, one_process, parallel):
    world = len(ranks)
    expected = one_process
    if parallel == "data":  # replicated weights: the ranks' gradients sum to one process's
        torch.testing.assert_close(sum(r["data"]["grad_W"] for r in ranks), expected["grad_W"], rtol=1e-8, atol=1e-10)
    for rank, results in enumerate(ranks):
        got = results[parallel]
        start = sum(ROWS[world][:rank])
        rows = slice(start, start + ROWS[world][rank])
        assert got["loss"].item() == pytest.approx(expected["loss"].item(), rel=1e-10)
        # each row's gradient once: not W times (class-sharded ranks all hold every row)
        torch.testing.assert_close(got["grad_x"], expected["grad_x"][rows], rtol=1e-8, atol=1e-10)
        assert got["stats"]["threshold"] == pytest.approx(expected["stats"]["threshold"], abs=1e-12)
        assert got["stats"]["k"] == expected["stats"]["k"]
        if parallel == "classes":
            lo, hi = got["class_range"]
            torch.testing.assert_close(got["grad_W"], expected["grad_W"][lo:hi], rtol=1e-8, atol=1e-10)
            torch.testing.assert_close(got["instance_fpr"], expected["instance_fpr"])
            for name, value in expected["stats"].items():
                assert got["stats"][name] == pytest.approx(value, rel=1e-10, abs=1e-12), name
        else:
            torch.testing.assert_close(got["instance_fpr"], expected["instance_fpr"][rows])


@pytest.mark.distributed
def test_sampled_columns_leave_the_pair_statistics_unchanged(ranks, one_process):
    # PartialFC sampling changes the softmax's columns, not the pairs of the batch.
    for results in ranks:
        got = results["sampled"]
        assert got["stats"]["threshold"] == pytest.approx(one_process["stats"]["threshold"], abs=1e-12)
        torch.testing.assert_close(got["instance_fpr"], one_process["instance_fpr"])
        assert got["stats"]["weighted_fpr_mean"] == pytest.approx(one_process["stats"]["weighted_fpr_mean"], rel=1e-10)


@pytest.mark.distributed
def test_class_sharded_pair_gradient_is_summed_once(ranks, one_process):
    expected = one_process["small"]
    assert expected["k"] > 0 and expected["weighted_fpr"].abs().sum() > 0
    for results in ranks:
        got = results["small"]
        assert got["threshold"] == pytest.approx(expected["threshold"], abs=1e-12) and got["k"] == expected["k"]
        torch.testing.assert_close(got["instance_fpr"], expected["instance_fpr"])
        torch.testing.assert_close(got["weighted_fpr"], expected["weighted_fpr"])
    torch.testing.assert_close(sum(r["small"]["grad_e"] for r in ranks), expected["grad_e"], rtol=1e-10, atol=1e-12)
