"""cosface / arcface / combined against per-entry formulas, and the call contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fpr_plugin.losses.margin import ArcFace, CombinedMargin, CosFace, margin_target
from fpr_plugin.registry import build_loss


def reference_logits(cos, labels, s, m1, m2, m3):
    """Loop over entries: target s*(cos(m1*theta + m2) - m3) (continued past pi), others s*cos."""
    out = torch.empty_like(cos)
    for i in range(cos.shape[0]):
        for j in range(cos.shape[1]):
            c = cos[i, j].item()
            if j != labels[i]:
                out[i, j] = s * c
                continue
            theta = math.acos(c)
            if m1 * theta + m2 <= math.pi:
                out[i, j] = s * (math.cos(m1 * theta + m2) - m3)
            else:
                theta0 = (math.pi - m2) / m1
                out[i, j] = s * (c - math.cos(theta0) - 1 - m3)
    return out


LOSSES = [
    (lambda: CosFace(s=30.0, m=0.4), (1.0, 0.0, 0.4)),
    (lambda: ArcFace(s=30.0, m=0.5), (1.0, 0.5, 0.0)),
    (lambda: CombinedMargin(s=30.0, m1=1.0, m2=0.3, m3=0.2), (1.0, 0.3, 0.2)),
    (lambda: CombinedMargin(s=30.0, m1=1.35, m2=0.0, m3=0.0), (1.35, 0.0, 0.0)),
]


@pytest.mark.parametrize("make, margins", LOSSES)
def test_logits_and_gradients_match_entrywise_formulas(make, margins):
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(6, 5, generator=g, dtype=torch.float64) * 1.98 - 0.99
    cos[0, 2] = -0.97  # theta + m > pi for the angular margins
    labels = torch.tensor([2, 0, -1, 4, 1, 3])
    loss = make()
    logits = loss(cos, labels)
    expected = reference_logits(cos, labels, 30.0, *margins)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    # gradient of a random linear functional vs central differences of the formula
    weight = torch.randn(6, 5, generator=g, dtype=torch.float64)
    leaf = cos.clone().requires_grad_()
    (grad,) = torch.autograd.grad((loss(leaf, labels) * weight).sum(), leaf)
    eps = 1e-7
    numeric = (
        (reference_logits(cos + eps, labels, 30.0, *margins) - reference_logits(cos - eps, labels, 30.0, *margins))
        / (2 * eps)
        * weight
    )
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-6)
    assert loss.last_stats == {} and loss.last_instance_fpr is None


def test_row_labelled_minus_one_is_plain_scaled_cosines():
    cos = torch.rand(3, 4, dtype=torch.float64)
    logits = CosFace(s=10.0)(cos, torch.tensor([-1, 1, -1]))
    torch.testing.assert_close(logits[[0, 2]], 10.0 * cos[[0, 2]])
    assert logits[1, 1].item() == pytest.approx(10.0 * (cos[1, 1].item() - 0.35))


def test_arcface_target_is_continuous_and_decreasing_past_pi():
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    for m1, m2, m3 in [(1.0, 0.5, 0.0), (1.0, 1.2, 0.1), (1.5, 0.3, 0.0)]:
        g = margin_target(torch.cos(theta), m1, m2, m3)
        steps = g[1:] - g[:-1]
        assert bool((steps < 0).all()), (m1, m2, m3)  # strictly decreasing in theta
        assert steps.abs().max() < 0.01  # no jump where m1*theta + m2 crosses pi


def test_labels_as_column_vector_and_in_place_overwrite():
    cos = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0], [5], [2], [2]])
    logits = ArcFace(s=8.0)(cos, labels)
    expected_grad = torch.autograd.grad(F.cross_entropy(logits, labels[:, 0]), cos, retain_graph=True)[0]
    reused = ArcFace(s=8.0)(cos, labels)
    probs = reused.softmax(dim=1).detach()
    with torch.no_grad():
        reused.zero_()  # the caller owns the result (as arcface_torch's cross-entropy does)
    grad_out = (probs - F.one_hot(labels[:, 0], 6)) / 4
    (grad,) = torch.autograd.grad(reused, cos, grad_out)
    torch.testing.assert_close(grad, expected_grad)


def test_registry_defaults_and_bad_parameters():
    assert (build_loss("cosface").s, build_loss("cosface").m) == (64.0, 0.35)
    assert build_loss("arcface").m == 0.5
    combined = build_loss("combined")
    assert (combined.m1, combined.m2, combined.m3) == (1.0, 0.5, 0.0)
    with pytest.raises(ValueError, match="s must be > 0, got -1"):
        CosFace(s=-1)
    with pytest.raises(ValueError, match="m must be a finite number, got nan"):
        ArcFace(m=float("nan"))
    with pytest.raises(ValueError, match="m1 must be > 0"):
        CombinedMargin(m1=0.0)
