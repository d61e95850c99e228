"""Margin losses with arcface_torch's ``CombinedMarginLoss`` call contract.

``logits = loss(cos, labels)``: ``cos`` ``[N, C]`` cosines of N samples
against this rank's classes, ``labels`` the column of each sample's class or
-1 (class elsewhere: the row stays plain scaled cosines). The result is the
scaled logits; softmax cross-entropy over all ranks' columns is the loss.
The caller may overwrite the returned tensor in place: nothing saved for the
backward pass refers to it.

With ``stats_gamma_u`` set, a margin loss also measures, without a gradient,
the training signal an FPR penalty would see at that target FPR: ``T_u`` and
the Eq. 9 instance FPR of every row (``last_stats``, ``last_instance_fpr``),
so a baseline's signal is logged by the same code as the penalty's. The
logits and gradients are unchanged; with the default None nothing is measured.
``stats_pairs_gamma_u`` does the same for the signal of
``fpr_penalty(negatives="pairs")``: ``T_u`` and Eq. 9 over the impostor pairs of
the global batch (:func:`fpr_plugin.losses.pairs.pair_fpr`), kept as
``last_pair_instance_fpr`` and the ``pairs_*`` keys of ``last_stats``.
"""

from __future__ import annotations

import math

import torch

from fpr_plugin.distributed import Layout
from fpr_plugin.losses.entries import EntryGradients
from fpr_plugin.losses.pairs import pair_fpr
from fpr_plugin.losses.selection import fpr_rank, mine_above_threshold
from fpr_plugin.losses.stats import FprStats
from fpr_plugin.losses.validation import (
    check_cosines,
    check_embeddings,
    check_in_open_interval,
    check_positive,
    check_real,
)
from fpr_plugin.registry import register_loss

__all__ = [
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "MarginLoss",
    "margin_target",
    "measure_instance_fpr",
    "scaled_logits",
    "target_entries",
]

# d theta / d cos is infinite at cos = +-1: sin(theta)^2 is kept >= _SIN2_EPS
# (a value error below 1e-6) and cosines fed to arccos inside +-(1 - _ACOS_EPS).
_SIN2_EPS = 1e-12
_ACOS_EPS = 1e-7


def margin_target(cos_y: torch.Tensor, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0) -> torch.Tensor:
    """Target logit before scaling: ``G(cos) = cos(m1 * theta + m2) - m3``, theta = arccos(cos).

    (m1, m2, m3) = (1, 0, m) is CosFace, (1, m, 0) ArcFace, (m, 0, 0)
    SphereFace-like. Where ``m1 * theta + m2 > pi`` the cosine would rise
    again and reward a worse angle; there G continues as
    ``cos(theta) - cos(theta0) - 1 - m3`` (theta0: where m1*theta0 + m2 = pi),
    continuous and still decreasing in theta.
    """
    if m1 == 1.0 and m2 == 0.0:
        return cos_y - m3
    theta0 = (math.pi - m2) / m1
    if m1 == 1.0:
        # cos(theta + m2) without arccos.
        sin_y = torch.sqrt((1.0 - cos_y * cos_y).clamp_min(_SIN2_EPS))
        angular = cos_y * math.cos(m2) - sin_y * math.sin(m2)
    else:
        theta = torch.acos(cos_y.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))
        angular = torch.cos(m1 * theta + m2)
    if theta0 < math.pi:
        cos_theta0 = math.cos(max(theta0, 0.0))
        angular = torch.where(cos_y < cos_theta0, cos_y - cos_theta0 - 1.0, angular)
    return angular - m3


def target_entries(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of the target entries: rows with a label >= 0 and their columns."""
    rows = (labels >= 0).nonzero().squeeze(1)
    return rows, labels[rows]


class _ScaledLogits(torch.autograd.Function):
    """``scale * (cos + row_shift)`` with the target entries replaced by ``scale * target``."""

    @staticmethod
    def forward(ctx, cos, target, row_shift, rows, cols, scale, entries):  # type: ignore[override]
        if row_shift is None:
            out = cos * scale
        else:
            out = torch.add(row_shift.unsqueeze(1) * scale, cos, alpha=scale)
        out[rows, cols] = target.to(out.dtype) * scale
        ctx.save_for_backward(rows, cols)
        ctx.scale = scale
        ctx.entries = entries
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        rows, cols = ctx.saved_tensors
        scale = ctx.scale
        grad_at_target = grad[rows, cols]
        grad_cos = grad_target = grad_shift = None
        if ctx.needs_input_grad[0]:
            grad_cos = grad * scale
            grad_cos[rows, cols] = 0
            if ctx.entries is not None:
                ctx.entries.deliver(grad_cos)
        if ctx.needs_input_grad[1]:
            grad_target = grad_at_target * scale
        if ctx.needs_input_grad[2]:
            row_sums = grad.sum(dim=1)
            grad_shift = (row_sums.index_add(0, rows, -grad_at_target)) * scale
        return grad_cos, grad_target, grad_shift, None, None, None, None


def scaled_logits(
    cos: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    target: torch.Tensor,
    scale: float,
    row_shift: torch.Tensor | None = None,
    entries: EntryGradients | None = None,
) -> torch.Tensor:
    """Scaled logits: ``scale * (cos[i, j] + row_shift[i])``, and ``scale * target`` at (rows, cols).

    One pass over the matrix forward and one backward, and nothing that
    refers to the result is saved (the caller may overwrite it in place).
    Entries of ``cos`` read through ``entries`` (and feeding ``target`` or
    ``row_shift``) get their gradient added into this function's dense
    gradient of ``cos``.
    """
    return _ScaledLogits.apply(cos, target, row_shift, rows, cols, scale, entries)


def measure_instance_fpr(
    cos: torch.Tensor, labels: torch.Tensor, gamma_u: float, layout: Layout
) -> tuple[torch.Tensor, int, torch.Tensor] | None:
    """``(T_u, k, instance_fpr)`` of Algorithm 1 steps 2-3 and Eq. 9, measured without a gradient.

    ``T_u`` is the k-th largest non-target cosine over the global batch and
    all classes (``k = ceil(gamma_u * n * (c - 1))``), ``instance_fpr[i]`` the
    share of row i's ``c - 1`` non-target cosines strictly above it (over all
    class shards of ``layout``). None when there are fewer than 2 classes.
    """
    with torch.no_grad():
        cos = cos.detach()
        n = layout.global_rows(cos.shape[0], cos.device)
        c = layout.global_classes(cos.shape[1], cos.device)
        if c < 2:
            return None
        k = fpr_rank(gamma_u, n * (c - 1))
        threshold, rows, _, _ = mine_above_threshold(cos, labels, k, layout)
        counts = torch.bincount(rows, minlength=cos.shape[0]).to(cos.dtype)
        return threshold, k, layout.sum_over_classes(counts) / (c - 1)


class MarginLoss(torch.nn.Module):
    """Base of every loss here: scale ``s``, the target transform, stats and layout.

    ``layout`` (a :class:`fpr_plugin.distributed.Layout`) says how the batch
    and classes are split over processes. :class:`fpr_plugin.heads.ClassifierHead`
    sets it; a loss used in another head is given it explicitly::

        loss = build_loss("fpr_penalty", gamma_u=1e-4).shard_classes(num_classes)   # PartialFC_V2
        loss = build_loss("fpr_penalty").shard_classes(sampled=True)                # sample_rate < 1
        loss = build_loss("fpr_penalty").data_parallel()                            # all classes per rank

    The FPR losses refuse to run with a local layout under several ranks
    (``per_rank()`` asks for a per-rank threshold on purpose). ``last_stats``
    (plain floats, see :class:`fpr_plugin.losses.stats.FprStats`) and
    ``last_instance_fpr`` describe the last call: for a pure margin loss
    they are empty / None unless ``stats_gamma_u`` asks for the measurement
    (:func:`measure_instance_fpr`, ``penalty_mean`` 0: nothing is added);
    ``last_pair_instance_fpr`` is None unless ``stats_pairs_gamma_u`` asks for
    the pair form (:meth:`_measure_pairs`).
    """

    def __init__(self, s: float, stats_gamma_u: float | None = None,
                 stats_pairs_gamma_u: float | None = None) -> None:
        super().__init__()
        self.s = check_positive("s", s)
        self.stats_gamma_u = (None if stats_gamma_u is None
                              else check_in_open_interval("stats_gamma_u", stats_gamma_u, 0.0, 1.0))
        self.stats_pairs_gamma_u = (None if stats_pairs_gamma_u is None
                                    else check_in_open_interval("stats_pairs_gamma_u", stats_pairs_gamma_u, 0.0, 1.0))
        self.layout = Layout.local()
        self.last_stats: dict[str, float] = {}
        self.last_instance_fpr: torch.Tensor | None = None
        self.last_pair_instance_fpr: torch.Tensor | None = None

    def set_layout(self, layout: Layout) -> "MarginLoss":
        """Use ``layout`` for the global counts, sums and threshold; returns self."""
        if not isinstance(layout, Layout):
            raise TypeError(f"layout must be a fpr_plugin.distributed.Layout, got {type(layout).__name__}")
        self.layout = layout
        return self

    def shard_classes(self, num_classes: int | None = None, group=None, sampled: bool = False) -> "MarginLoss":
        """Class-sharded (each rank: the global batch, its own class block of ``num_classes``); returns self.

        ``sampled=True`` is PartialFC's ``sample_rate < 1``: each rank holds the
        columns it sampled, and ``c`` is their count over all ranks (no
        ``num_classes`` then).
        """
        if sampled:
            if num_classes is not None:
                raise ValueError("shard_classes(sampled=True) counts the sampled columns itself: leave num_classes out")
            return self.set_layout(Layout.class_sampled(group))
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"shard_classes needs num_classes, the class count over all ranks (an int >= 1), got {num_classes!r}")
        return self.set_layout(Layout.class_sharded(num_classes, group))

    def data_parallel(self, group=None) -> "MarginLoss":
        """Every rank holds all classes and its own rows; the threshold is the global batch's. Returns self."""
        return self.set_layout(Layout.data_parallel(group))

    def per_rank(self) -> "MarginLoss":
        """Each rank computes its own threshold and FPRs, on purpose, under any world size. Returns self."""
        return self.set_layout(Layout.per_rank())

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        """``G(cos_y)`` before scaling."""
        raise NotImplementedError

    def forward(
        self,
        cos: torch.Tensor,
        labels: torch.Tensor,
        norm_embeddings: torch.Tensor | None = None,
        norm_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled logits ``[N, C]`` for cosines ``cos`` and column labels (-1: not here)."""
        labels = check_cosines(cos, labels)
        rows, cols = target_entries(labels)
        entries = EntryGradients()
        target = self.target_logit(entries.gather(cos, rows, cols))
        logits = scaled_logits(cos, rows, cols, target, self.s, entries=entries)
        if self.stats_gamma_u is not None:
            self._measure(cos, labels)
        if self.stats_pairs_gamma_u is not None:
            self._measure_pairs(cos, labels, norm_embeddings)
        return logits

    def _measure(self, cos: torch.Tensor, labels: torch.Tensor) -> None:
        """Set ``last_stats`` / ``last_instance_fpr`` at ``stats_gamma_u`` (no gradient)."""
        self.layout.check_not_silently_local(f"{type(self).__name__} with stats_gamma_u")
        measured = measure_instance_fpr(cos, labels, self.stats_gamma_u, self.layout)
        if measured is None:
            self.last_stats, self.last_instance_fpr = {}, None
            return
        threshold, k, instance_fpr = measured
        self.last_instance_fpr = instance_fpr
        self.last_stats = FprStats.summarize(threshold, k, instance_fpr, torch.zeros_like(instance_fpr)).as_dict()

    def _measure_pairs(self, cos: torch.Tensor, labels: torch.Tensor, norm_embeddings: torch.Tensor | None) -> None:
        """Set ``last_pair_instance_fpr`` and the ``pairs_*`` stats at ``stats_pairs_gamma_u`` (no gradient)."""
        check_embeddings(norm_embeddings, cos, f"{type(self).__name__} with stats_pairs_gamma_u")
        self.layout.check_not_silently_local(f"{type(self).__name__} with stats_pairs_gamma_u")
        with torch.no_grad():
            found = pair_fpr(norm_embeddings.detach(), labels, self.stats_pairs_gamma_u, 1.0, self.layout,
                             dtype=cos.dtype)
        self.last_pair_instance_fpr = found.instance_fpr
        if self.stats_gamma_u is None:
            self.last_stats = {}
        measured = FprStats.summarize(found.threshold, found.k, found.instance_fpr, torch.zeros_like(found.instance_fpr))
        self.last_stats.update({f"pairs_{key}": value for key, value in measured.as_dict().items()
                                if key != "penalty_mean"})

    def _stats_repr(self) -> str:
        return ("" if self.stats_gamma_u is None else f", stats_gamma_u={self.stats_gamma_u}") + (
            "" if self.stats_pairs_gamma_u is None else f", stats_pairs_gamma_u={self.stats_pairs_gamma_u}")


@register_loss("combined")
class CombinedMargin(MarginLoss):
    """arcface_torch's combined margin: target logit ``s * (cos(m1 * theta + m2) - m3)``."""

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 stats_gamma_u: float | None = None, stats_pairs_gamma_u: float | None = None) -> None:
        super().__init__(s, stats_gamma_u, stats_pairs_gamma_u)
        self.m1 = check_positive("m1", m1)
        self.m2 = check_real("m2", m2)
        self.m3 = check_real("m3", m3)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        return margin_target(cos_y, self.m1, self.m2, self.m3)

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}" + self._stats_repr()


@register_loss("cosface")
class CosFace(MarginLoss):
    """CosFace (additive cosine margin): target logit ``s * (cos - m)``."""

    def __init__(self, s: float = 64.0, m: float = 0.35, stats_gamma_u: float | None = None,
                 stats_pairs_gamma_u: float | None = None) -> None:
        super().__init__(s, stats_gamma_u, stats_pairs_gamma_u)
        self.m = check_real("m", m)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        return cos_y - self.m

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}" + self._stats_repr()


@register_loss("arcface")
class ArcFace(MarginLoss):
    """ArcFace (additive angular margin): target logit ``s * cos(theta + m)`` (see :func:`margin_target`)."""

    def __init__(self, s: float = 64.0, m: float = 0.5, stats_gamma_u: float | None = None,
                 stats_pairs_gamma_u: float | None = None) -> None:
        super().__init__(s, stats_gamma_u, stats_pairs_gamma_u)
        self.m = check_real("m", m)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        return margin_target(cos_y, 1.0, self.m, 0.0)

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}" + self._stats_repr()
