"""Entry reads with in-place gradient accumulation and weight-detached cosines."""

from __future__ import annotations

import pytest
import torch

from fpr_plugin.losses.entries import EntryGradients, weight_detached_entries
from fpr_plugin.losses.margin import scaled_logits


def test_gathered_entries_get_their_gradient_through_scaled_logits():
    g = torch.Generator().manual_seed(0)
    cos = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    rows, cols = torch.tensor([0, 1, 3]), torch.tensor([2, 0, 4])
    mined_rows, mined_cols = torch.tensor([0, 0, 2]), torch.tensor([1, 3, 1])
    weight = torch.randn(4, 5, generator=g, dtype=torch.float64)

    def through_library(matrix):
        entries = EntryGradients()
        target = entries.gather(matrix, rows, cols) ** 3
        shift = torch.zeros(4, dtype=matrix.dtype).index_add(0, mined_rows, entries.gather(matrix, mined_rows, mined_cols) ** 2)
        return (scaled_logits(matrix, rows, cols, target, 3.0, row_shift=shift, entries=entries) * weight).sum()

    def plain(matrix):
        out = 3.0 * (matrix + torch.zeros(4, dtype=matrix.dtype).index_add(0, mined_rows, matrix[mined_rows, mined_cols] ** 2)[:, None])
        out = out.index_put((rows, cols), 3.0 * matrix[rows, cols] ** 3)
        return (out * weight).sum()

    (expected,) = torch.autograd.grad(plain(cos), cos)
    (grad,) = torch.autograd.grad(through_library(cos), cos)
    torch.testing.assert_close(grad, expected)
    assert torch.autograd.gradcheck(through_library, (cos,))


def test_gather_without_scaled_logits_fails_clearly():
    cos = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    value = EntryGradients().gather(cos, torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(RuntimeError, match="must feed scaled_logits"):
        value.sum().backward()


def test_weight_detached_entries_route_gradient_to_embeddings_only():
    g = torch.Generator().manual_seed(1)
    xn = torch.nn.functional.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    wn = torch.nn.functional.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    rows, cols = torch.tensor([0, 2, 2]), torch.tensor([1, 1, 4])
    values = (xn @ wn.T)[rows, cols].detach()
    out = weight_detached_entries(values, xn, wn, rows, cols)
    torch.testing.assert_close(out, values, rtol=0, atol=0)
    grad_x, grad_w = torch.autograd.grad(out.sum(), (xn, wn), allow_unused=True)
    assert grad_w is None
    expected = torch.zeros_like(xn)
    expected.index_add_(0, rows, wn.detach()[cols])
    torch.testing.assert_close(grad_x, expected)
