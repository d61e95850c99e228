"""The FPR penalty loss of the paper (CIFP, Eq. 10/11 and Algorithm 1).

For a global batch of n samples and c classes:

- ``T_u``: the k-th largest non-target cosine, ``k = ceil(gamma_u * n * (c - 1))``;
- ``I_ij = 1(cos_ij > T_u)`` for ``j != y_i`` (strict, no gradient);
- Eq. 11: ``g_i = sum_{j != y_i} I_ij * max(cos_ij, 0)^p / (c - 1)``;
- Eq. 10: softmax cross-entropy with ``alpha * g_i / gamma_u`` added to every
  non-target cosine of row i, and the margin ``G`` (CosFace or ArcFace) on the
  target.

The penalty is added to the non-target columns (not subtracted from the
target) so that class-sharded ranks need to all-reduce only the per-row sum
``g_i``; both forms give the same loss and gradients.

``alpha_warmup`` (a project option, not in the paper; 0 = off, the paper's
form exactly) ramps alpha linearly over the first ``alpha_warmup`` training
steps: step t (counted from 1, forward calls in training mode) uses
``alpha * min(1, t / alpha_warmup)``. The step count is a buffer of the loss,
so it is saved and restored with the head's checkpoint.

``negatives="pairs"`` (a project option, not in the paper; the default
``"classes"`` is the paper's form exactly) takes the instance FPR of sample i
over the other samples of the global batch with a different label, through
the embedding-to-embedding cosines (:mod:`fpr_plugin.losses.pairs`), with the
same threshold rule and Eq. 10 form; the margin softmax is unchanged.
"""

from __future__ import annotations

import torch

from fpr_plugin.losses.entries import EntryGradients, weight_detached_entries
from fpr_plugin.losses.margin import MarginLoss, margin_target, scaled_logits, target_entries
from fpr_plugin.losses.pairs import pair_fpr
from fpr_plugin.losses.selection import fpr_rank, mine_above_threshold
from fpr_plugin.losses.stats import FprStats
from fpr_plugin.losses.validation import (
    check_choice,
    check_cosines,
    check_embeddings,
    check_features,
    check_in_open_interval,
    check_positive,
    check_real,
)
from fpr_plugin.registry import register_loss

__all__ = ["FprPenalty"]


@register_loss("fpr_penalty")
class FprPenalty(MarginLoss):
    """CIFP FPR-penalty loss (paper form), a drop-in margin loss.

    Args:
        s: scale. m: margin of ``base``.
        gamma_u: target overall FPR, in (0, 1).
        p: exponent of ``F(z) = max(z, 0)^p``, > 0.
        alpha: penalty strength (>= 0).
        base: ``"cosface"`` (``G = cos - m``) or ``"arcface"`` (``G = cos(theta + m)``).
        penalty_grad: ``"both"`` (autograd of Eq. 10/11) or ``"embeddings"``
            (class weights detached inside the penalty term only; needs
            ``norm_embeddings`` and ``norm_weight`` in the call).
        alpha_warmup: training steps over which alpha ramps linearly from
            ``alpha / alpha_warmup`` to ``alpha`` (an int >= 0; 0: no ramp).
        negatives: ``"classes"`` (the paper: non-target class weights) or
            ``"pairs"`` (the other samples of the global batch with a
            different label, through embedding-to-embedding cosines; needs
            ``norm_embeddings`` in the call; ``penalty_grad`` has no effect
            there, since the pair term holds no class weight).
    """

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.35,
        gamma_u: float = 1e-4,
        p: float = 2.0,
        alpha: float = 1.0,
        base: str = "cosface",
        penalty_grad: str = "both",
        alpha_warmup: int = 0,
        negatives: str = "classes",
    ) -> None:
        super().__init__(s)
        self.m = check_real("m", m)
        self.gamma_u = check_in_open_interval("gamma_u", gamma_u, 0.0, 1.0)
        self.p = check_positive("p", p)
        self.alpha = check_real("alpha", alpha)
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.base = check_choice("base", base, ("cosface", "arcface"))
        self.penalty_grad = check_choice("penalty_grad", penalty_grad, ("both", "embeddings"))
        if isinstance(alpha_warmup, bool) or not isinstance(alpha_warmup, int) or alpha_warmup < 0:
            raise ValueError(f"alpha_warmup must be an int >= 0 (training steps; 0: off), got {alpha_warmup!r}")
        self.alpha_warmup = alpha_warmup
        self.negatives = check_choice("negatives", negatives, ("classes", "pairs"))
        if alpha_warmup:
            # only with a ramp, so that checkpoints of the paper's form keep their keys
            self.register_buffer("warmup_step", torch.zeros((), dtype=torch.long))

    def current_alpha(self) -> float:
        """The alpha of the next training step (``alpha`` itself without a warm-up)."""
        if not self.alpha_warmup:
            return self.alpha
        return self.alpha * min(1.0, (int(self.warmup_step) + 1) / self.alpha_warmup)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        """``G(cos_y)``: CosFace ``cos - m`` or ArcFace ``cos(theta + m)``."""
        if self.base == "cosface":
            return cos_y - self.m
        return margin_target(cos_y, 1.0, self.m, 0.0)

    def forward(
        self,
        cos: torch.Tensor,
        labels: torch.Tensor,
        norm_embeddings: torch.Tensor | None = None,
        norm_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled logits ``[N, C]`` of Eq. 10 (non-target form) for this rank's columns."""
        labels = check_cosines(cos, labels)
        if self.negatives == "pairs":
            return self._forward_pairs(cos, labels, norm_embeddings)
        if self.penalty_grad == "embeddings":
            check_features(norm_embeddings, norm_weight, cos, "fpr_penalty with penalty_grad='embeddings'")
        layout = self.layout
        layout.check_not_silently_local("fpr_penalty")
        local_rows, local_classes = cos.shape
        n = layout.global_rows(local_rows, cos.device)
        c = layout.global_classes(local_classes, cos.device)
        if c < 2:
            raise ValueError(f"fpr_penalty needs at least 2 classes, got {c}")
        k = fpr_rank(self.gamma_u, n * (c - 1))
        rows_t, cols_t = target_entries(labels)
        threshold, rows, cols, values = mine_above_threshold(cos, labels, k, layout)

        # Eq. 11 over this rank's columns; F(z) = 0 for z <= 0.
        positive = values > 0
        rows_p, cols_p = rows[positive], cols[positive]
        entries = EntryGradients()
        if self.penalty_grad == "both":
            z = entries.gather(cos, rows_p, cols_p)
        else:
            z = weight_detached_entries(values[positive], norm_embeddings, norm_weight, rows_p, cols_p)
        partial = cos.new_zeros(local_rows).index_add(0, rows_p, z.to(cos.dtype).pow(self.p))
        weighted_fpr = layout.sum_over_classes(partial) / (c - 1)
        alpha = self.current_alpha()
        if self.alpha_warmup and self.training:
            self.warmup_step += 1
        penalty = (alpha / self.gamma_u) * weighted_fpr

        target = self.target_logit(entries.gather(cos, rows_t, cols_t))
        logits = scaled_logits(cos, rows_t, cols_t, target, self.s, row_shift=penalty, entries=entries)

        with torch.no_grad():
            counts = torch.bincount(rows, minlength=local_rows).to(cos.dtype)
            instance_fpr = layout.sum_over_classes(counts) / (c - 1)  # Eq. 9
        self.last_instance_fpr = instance_fpr
        self.last_stats = FprStats.summarize(threshold, k, instance_fpr, penalty, weighted_fpr=weighted_fpr).as_dict()
        return logits

    def _forward_pairs(self, cos: torch.Tensor, labels: torch.Tensor, norm_embeddings: torch.Tensor | None) -> torch.Tensor:
        """Eq. 10 logits with ``g_i`` and ``T_u`` over the impostor pairs of the global batch."""
        check_embeddings(norm_embeddings, cos, "fpr_penalty with negatives='pairs'")
        self.layout.check_not_silently_local("fpr_penalty")
        found = pair_fpr(norm_embeddings, labels, self.gamma_u, self.p, self.layout, dtype=cos.dtype)
        alpha = self.current_alpha()
        if self.alpha_warmup and self.training:
            self.warmup_step += 1
        penalty = (alpha / self.gamma_u) * found.weighted_fpr
        rows_t, cols_t = target_entries(labels)
        entries = EntryGradients()
        target = self.target_logit(entries.gather(cos, rows_t, cols_t))
        logits = scaled_logits(cos, rows_t, cols_t, target, self.s, row_shift=penalty, entries=entries)
        self.last_instance_fpr = found.instance_fpr
        self.last_stats = FprStats.summarize(
            found.threshold, found.k, found.instance_fpr, penalty, weighted_fpr=found.weighted_fpr
        ).as_dict()
        return logits

    def extra_repr(self) -> str:
        return (
            f"s={self.s}, m={self.m}, gamma_u={self.gamma_u}, p={self.p}, alpha={self.alpha}, "
            f"base={self.base!r}, penalty_grad={self.penalty_grad!r}"
            + (f", alpha_warmup={self.alpha_warmup}" if self.alpha_warmup else "")
            + (f", negatives={self.negatives!r}" if self.negatives != "classes" else "")
        )
