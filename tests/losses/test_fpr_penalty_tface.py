"""fpr_penalty_tface (the released variant) against its float64 loop reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fpr_plugin.losses.fpr_penalty_tface import FprPenaltyTFace
from fpr_plugin.registry import build_loss
from fpr_reference import tface_loss


def implementation(loss, x, W, labels):
    x = x.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    xn, wn = F.normalize(x, dim=1), F.normalize(W, dim=1)
    logits = loss(xn @ wn.T, labels, norm_embeddings=xn, norm_weight=wn)
    value = F.cross_entropy(logits, labels)
    grad_x, grad_W = torch.autograd.grad(value, (x, W))
    return value.detach(), grad_x, grad_W


def reference(x, W, labels, **params):
    x = x.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    out = tface_loss(x, W, labels.tolist(), **params)
    out["grad_x"], out["grad_W"] = torch.autograd.grad(out["loss"], (x, W))
    return out


def make_batch(n, c, d, seed, spread):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(c, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    x = W[labels] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, W, labels


CASES = {
    "random": dict(n=8, c=9, d=4, seed=1, spread=1.2),
    "many excluded": dict(n=7, c=8, d=3, seed=2, spread=3.0),
    "c=2": dict(n=6, c=2, d=3, seed=3, spread=1.5),
    "n=1": dict(n=1, c=12, d=3, seed=4, spread=0.8),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_loss_and_gradients_match_loop_reference(case):
    spec = CASES[case]
    x, W, labels = make_batch(spec["n"], spec["c"], spec["d"], spec["seed"], spec["spread"])
    loss = FprPenaltyTFace(s=16.0, m=0.35)
    value, grad_x, grad_W = implementation(loss, x, W, labels)
    ref = reference(x, W, labels, s=16.0, m=0.35)
    assert value.item() == pytest.approx(ref["loss"].item(), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(grad_x, ref["grad_x"], rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(grad_W, ref["grad_W"], rtol=1e-8, atol=1e-11)
    assert loss.last_stats["k"] == max(1, ref["k"])
    assert loss.last_stats["threshold"] == pytest.approx(ref["threshold"], abs=1e-12)
    torch.testing.assert_close(loss.last_instance_fpr, torch.tensor(ref["instance_fpr"], dtype=torch.float64))
    assert loss.last_stats["mined_cos2_max"] == pytest.approx(max(ref["mined_cos2"]))


def test_cases_exercise_exclusion_mining_and_both_gradient_routes():
    x, W, labels = make_batch(**CASES["random"])
    ref = reference(x, W, labels)
    assert ref["excluded"] > 0 and max(ref["mined_cos2"]) > 0
    cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
    mined = [
        (i, j)
        for i in range(len(labels))
        for j in range(W.shape[0])
        if j != labels[i] and ref["threshold"] < cos[i, j] <= cos[i, labels[i]]
    ]
    routes = {bool(cos[i, j] < cos[i, labels[i]] - 0.35) for i, j in mined}
    assert routes == {True, False}


def test_all_negatives_above_their_targets_leaves_nothing_to_mine():
    # every sample points away from its own class: all negatives are excluded, k > 0 candidates
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], dtype=torch.float64)
    x = torch.tensor([[-1.0, 0.1], [0.1, -1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    loss = FprPenaltyTFace(s=8.0)
    value, grad_x, grad_W = implementation(loss, x, W, labels)
    ref = reference(x, W, labels, s=8.0)
    assert ref["excluded"] == 4 and ref["k"] == 0
    assert loss.last_stats["threshold"] == float("-inf")
    assert loss.last_instance_fpr.sum().item() == 0
    assert value.item() == pytest.approx(ref["loss"].item(), rel=1e-12)
    torch.testing.assert_close(grad_W, ref["grad_W"])


def test_gradient_routing_differs_from_the_derivative_of_the_forward():
    """The released code's routing is not d(loss)/dW: compare with central differences."""
    x, W, labels = make_batch(**CASES["random"])
    loss = FprPenaltyTFace(s=16.0)
    _, _, grad_W = implementation(loss, x, W, labels)

    def value_at(Wp):
        xn, wn = F.normalize(x, dim=1), F.normalize(Wp, dim=1)
        return F.cross_entropy(loss(xn @ wn.T, labels, norm_embeddings=xn, norm_weight=wn), labels).item()

    eps = 1e-6
    numerical = torch.zeros_like(W)
    for idx in range(W.numel()):
        step = torch.zeros(W.numel(), dtype=W.dtype)
        step[idx] = eps
        step = step.view_as(W)
        numerical.view(-1)[idx] = (value_at(W + step) - value_at(W - step)) / (2 * eps)
    assert not torch.allclose(numerical, grad_W, atol=1e-4)


def test_gradcheck_embeddings():
    # the embeddings always receive the true derivative of the forward
    x, W, labels = make_batch(5, 6, 3, 7, 1.2)
    loss = FprPenaltyTFace(s=4.0)

    def fn(x):
        xn, wn = F.normalize(x, dim=1), F.normalize(W, dim=1)
        return F.cross_entropy(loss(xn @ wn.T, labels, norm_embeddings=xn, norm_weight=wn), labels)

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(),), eps=1e-6, atol=1e-6)
    assert loss.last_stats["mined_cos2_max"] > 0


def test_needs_features_and_registry_defaults():
    x, W, labels = make_batch(3, 4, 2, 0, 1.0)
    cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
    with pytest.raises(ValueError, match="fpr_penalty_tface needs norm_embeddings"):
        FprPenaltyTFace()(cos, labels)
    with pytest.raises(ValueError, match=r"norm_weight must have shape \[4, 2\]"):
        FprPenaltyTFace()(cos, labels, norm_embeddings=F.normalize(x, dim=1), norm_weight=W[:3])
    loss = build_loss("fpr_penalty_tface")
    assert (loss.s, loss.m) == (64.0, 0.35)
