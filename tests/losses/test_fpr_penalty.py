"""fpr_penalty (paper Eq. 10/11) against the float64 loop reference in fpr_reference.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fpr_plugin.losses.fpr_penalty import FprPenalty
from fpr_plugin.registry import build_loss
from fpr_reference import paper_loss


def implementation(loss, x, W, labels):
    """Loss and gradients of the library's loss on the FC cosines of (x, W)."""
    x = x.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    xn, wn = F.normalize(x, dim=1), F.normalize(W, dim=1)
    cos = xn @ wn.T
    logits = loss(cos, labels, norm_embeddings=xn, norm_weight=wn)
    value = F.cross_entropy(logits, labels)
    grad_x, grad_W = torch.autograd.grad(value, (x, W))
    return value.detach(), grad_x, grad_W


def reference(x, W, labels, **params):
    """Reference loss and gradients (target-shift form) plus its statistics."""
    x = x.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    out = paper_loss(x, W, labels.tolist(), **params)
    grad_x, grad_W = torch.autograd.grad(out["loss"], (x, W))
    out["grad_x"], out["grad_W"] = grad_x, grad_W
    return out


def make_batch(n, c, d, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(c, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    # samples near their class centre, so targets are high and negatives spread out
    x = W[labels] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, W, labels


CASES = {
    "random": dict(n=7, c=9, d=5, seed=1, params=dict(gamma_u=0.05)),
    "c=2": dict(n=6, c=2, d=3, seed=2, params=dict(gamma_u=0.3)),
    "n=1": dict(n=1, c=8, d=4, seed=3, params=dict(gamma_u=0.2)),
    "threshold<=0": dict(n=5, c=6, d=3, seed=4, params=dict(gamma_u=0.7, p=1.5)),
    "arcface": dict(n=6, c=7, d=4, seed=5, params=dict(gamma_u=0.1, base="arcface", m=0.5)),
    "embeddings-only": dict(n=6, c=7, d=4, seed=6, params=dict(gamma_u=0.1, penalty_grad="embeddings")),
    "p=0.5 alpha=0.3": dict(n=5, c=6, d=4, seed=7, params=dict(gamma_u=0.15, p=0.5, alpha=0.3)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_loss_and_gradients_match_loop_reference(case):
    spec = CASES[case]
    x, W, labels = make_batch(spec["n"], spec["c"], spec["d"], spec["seed"])
    params = dict(s=16.0, **spec["params"])
    loss = FprPenalty(**params)
    value, grad_x, grad_W = implementation(loss, x, W, labels)
    ref = reference(x, W, labels, **params)
    assert any(w > 0 for w in ref["weighted_fpr"]), "case must exercise the penalty"
    assert value.item() == pytest.approx(ref["loss"].item(), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(grad_x, ref["grad_x"], rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(grad_W, ref["grad_W"], rtol=1e-8, atol=1e-11)
    assert loss.last_stats["threshold"] == pytest.approx(ref["threshold"], abs=1e-12)
    assert loss.last_stats["k"] == ref["k"]
    torch.testing.assert_close(loss.last_instance_fpr, torch.tensor(ref["instance_fpr"], dtype=torch.float64))
    assert loss.last_stats["instance_fpr_max"] == pytest.approx(max(ref["instance_fpr"]))
    assert loss.last_stats["weighted_fpr_mean"] == pytest.approx(sum(ref["weighted_fpr"]) / len(labels))
    expected_penalty = params.get("alpha", 1.0) / params["gamma_u"] * sum(ref["weighted_fpr"]) / len(labels)
    assert loss.last_stats["penalty_mean"] == pytest.approx(expected_penalty)


def test_threshold_at_or_below_zero_gives_no_weight_to_negative_cosines():
    x, W, labels = make_batch(5, 6, 3, 4)
    ref = reference(x, W, labels, s=16.0, gamma_u=0.7, p=1.5)
    assert ref["threshold"] <= 0
    loss = FprPenalty(s=16.0, gamma_u=0.7, p=1.5)
    implementation(loss, x, W, labels)
    # rows count negatives above T (Eq. 9) but only positive cosines carry weight (Eq. 11)
    assert loss.last_stats["instance_fpr_mean"] > loss.last_stats["weighted_fpr_mean"]
    assert loss.last_stats["threshold"] == pytest.approx(ref["threshold"])


def test_embeddings_mode_changes_only_the_weight_gradient():
    x, W, labels = make_batch(6, 7, 4, 6)
    both = implementation(FprPenalty(s=16.0, gamma_u=0.1), x, W, labels)
    emb = implementation(FprPenalty(s=16.0, gamma_u=0.1, penalty_grad="embeddings"), x, W, labels)
    assert both[0].item() == pytest.approx(emb[0].item(), rel=1e-12)  # same loss
    torch.testing.assert_close(both[1], emb[1])  # same embedding gradient
    assert not torch.allclose(both[2], emb[2], atol=1e-6)  # the weights lose the penalty's gradient


def test_target_shift_and_non_target_forms_agree():
    x, W, labels = make_batch(6, 8, 4, 11)
    params = dict(s=16.0, gamma_u=0.08)
    target_form = reference(x, W, labels, form="target", **params)
    non_target = reference(x, W, labels, form="non_target", **params)
    assert target_form["loss"].item() == pytest.approx(non_target["loss"].item(), rel=1e-12)
    torch.testing.assert_close(target_form["grad_x"], non_target["grad_x"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(target_form["grad_W"], non_target["grad_W"], rtol=1e-10, atol=1e-12)
    value, grad_x, _ = implementation(FprPenalty(**params), x, W, labels)
    assert value.item() == pytest.approx(non_target["loss"].item(), rel=1e-10)
    torch.testing.assert_close(grad_x, non_target["grad_x"], rtol=1e-8, atol=1e-11)


def test_ties_at_the_threshold_are_not_mined():
    # classes 0, 1, 2 share one centre: each sample's cosines to them tie exactly
    a, b, e = torch.eye(4, dtype=torch.float64)[:3]
    W = torch.stack([a, a, a, b, e])
    x = torch.stack([b + 0.8 * a, b + 0.3 * a + 0.1 * e, b + 0.1 * e])
    labels = torch.tensor([3, 3, 3])
    cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
    assert cos[0, 0] == cos[0, 1] == cos[0, 2] > cos[1, 0] == cos[1, 1] == cos[1, 2] > cos[1, 4]
    # n (c - 1) = 12 negatives; gamma_u 1/12 -> k = 1, 2/12 -> 2: T is the tied top value
    for gamma_u, mined_row0 in ((0.08, 0), (0.16, 0), (0.3, 3)):
        loss = FprPenalty(s=8.0, gamma_u=gamma_u)
        value, grad_x, grad_W = implementation(loss, x, W, labels)
        ref = reference(x, W, labels, s=8.0, gamma_u=gamma_u)
        assert loss.last_stats["threshold"] == ref["threshold"]
        assert loss.last_instance_fpr[0].item() * 4 == mined_row0  # strict: ties at T are not mined
        torch.testing.assert_close(loss.last_instance_fpr, torch.tensor(ref["instance_fpr"], dtype=torch.float64))
        assert value.item() == pytest.approx(ref["loss"].item(), rel=1e-10)
        torch.testing.assert_close(grad_W, ref["grad_W"], rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize(
    "params, wrt_weights",
    [
        (dict(gamma_u=0.1), True),
        (dict(gamma_u=0.1, base="arcface", m=0.5, p=3.0), True),
        # class weights detached in the penalty: only the embedding gradient is a true derivative
        (dict(gamma_u=0.2, penalty_grad="embeddings"), False),
    ],
)
def test_gradcheck(params, wrt_weights):
    x, W, labels = make_batch(4, 5, 3, 21)
    loss = FprPenalty(s=4.0, **params)

    def fn(x, W):
        xn, wn = F.normalize(x, dim=1), F.normalize(W, dim=1)
        return F.cross_entropy(loss(xn @ wn.T, labels, norm_embeddings=xn, norm_weight=wn), labels)

    x.requires_grad_()
    W.requires_grad_(wrt_weights)
    assert torch.autograd.gradcheck(fn, (x, W), eps=1e-6, atol=1e-6)
    assert loss.last_stats["weighted_fpr_max"] > 0


def test_returned_logits_may_be_overwritten_in_place():
    """arcface_torch's distributed cross-entropy turns the logits into probabilities in place."""

    class InPlaceSoftmaxCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, labels):
            logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
            logits.div_(logits.sum(dim=1, keepdim=True))
            ctx.save_for_backward(logits, labels)
            return -logits[torch.arange(len(labels)), labels].log().mean()

        @staticmethod
        def backward(ctx, grad):
            probs, labels = ctx.saved_tensors
            out = probs.clone()
            out[torch.arange(len(labels)), labels] -= 1
            return out * grad / len(labels), None

    x, W, labels = make_batch(6, 7, 4, 8)
    params = dict(s=16.0, gamma_u=0.1)
    expected = implementation(FprPenalty(**params), x, W, labels)
    x.requires_grad_()
    xn, wn = F.normalize(x, dim=1), F.normalize(W, dim=1)
    logits = FprPenalty(**params)(xn @ wn.T, labels)
    value = InPlaceSoftmaxCrossEntropy.apply(logits, labels)
    (grad_x,) = torch.autograd.grad(value, (x,))
    assert value.item() == pytest.approx(expected[0].item(), rel=1e-10)
    torch.testing.assert_close(grad_x, expected[1])


def test_rows_labelled_minus_one_have_all_columns_as_negatives():
    x, W, labels = make_batch(5, 6, 4, 9)
    cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
    local = labels.clone()
    local[1] = -1
    loss = FprPenalty(s=10.0, gamma_u=0.2)
    logits = loss(cos, local)
    # row 1 keeps plain (shifted) cosines in every column, including its true class
    shift = logits[1] / 10.0 - cos[1]
    torch.testing.assert_close(shift, shift[0].expand(6))


def test_registry_builds_with_documented_defaults():
    loss = build_loss("fpr_penalty")
    assert (loss.s, loss.m, loss.gamma_u, loss.p, loss.alpha, loss.base, loss.penalty_grad) == (
        64.0, 0.35, 1e-4, 2.0, 1.0, "cosface", "both",
    )


@pytest.mark.parametrize(
    "params, name",
    [
        (dict(gamma_u=0.0), "gamma_u"),
        (dict(gamma_u=1.0), "gamma_u"),
        (dict(gamma_u=-0.1), "gamma_u"),
        (dict(gamma_u=math.nan), "gamma_u"),
        (dict(p=0.0), "p"),
        (dict(p=-2.0), "p"),
        (dict(alpha=-1.0), "alpha"),
        (dict(s=0.0), "s"),
        (dict(base="sphereface"), "base"),
        (dict(penalty_grad="weights"), "penalty_grad"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(params, name):
    with pytest.raises(ValueError, match=rf"^{name} ") as info:
        FprPenalty(**params)
    assert repr(params[name]) in str(info.value)


def test_bad_inputs_raise_value_error_naming_them():
    x, W, labels = make_batch(4, 5, 3, 0)
    cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
    loss = FprPenalty(gamma_u=0.1)
    with pytest.raises(ValueError, match=r"labels must be -1 or in \[0, 5\).*got 5"):
        loss(cos, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(ValueError, match="labels.*got -2"):
        loss(cos, torch.tensor([0, -2, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        loss(cos, labels[:3])
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        loss(cos, labels.double())
    with pytest.raises(ValueError, match="cos must be a floating-point tensor"):
        loss(cos.long(), labels)
    with pytest.raises(ValueError, match=r"cos must have shape \[N, C\]"):
        loss(cos[0], labels)
    for bad in (math.nan, math.inf, -math.inf):
        broken = cos.clone()
        broken[2, 3] = bad
        with pytest.raises(ValueError, match=rf"cos must be finite, got {bad} at row 2, column 3"):
            loss(broken, labels)
    with pytest.raises(ValueError, match="needs norm_embeddings"):
        FprPenalty(penalty_grad="embeddings")(cos, labels)
    with pytest.raises(ValueError, match="at least 2 classes"):
        loss(cos[:, :1], torch.zeros(4, dtype=torch.long))
