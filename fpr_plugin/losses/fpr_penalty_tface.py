"""The FPR penalty as the authors' released code computes it (TFace ``Cifp`` head).

Differs from the paper (see method.md, "The released code differs"):

- ``gamma_u = 1 / (c - 1)``, ``p = 2``, no ``alpha``, CosFace margin;
- negatives above their own target (``cos_ij > cos_iy``) are excluded from
  the threshold's candidates and from mining; ``k = ceil(gamma_u * (n (c-1) - E))``
  with E the number of excluded entries over all ranks;
- ``S_i = {j : not excluded, cos_ij > T_u}``, ``P_i = mean_{j in S_i} cos_ij^2``
  (0 when empty);
- target logit ``s * ((cos_iy - m) - (1 + cos~_iy) * P_i)``, other logits
  ``s * cos_ij``; cross-entropy as usual;
- ``cos~`` is the cosine with the class weights detached: the factor
  ``(1 + cos~_iy)`` sends no gradient into ``W_y``; a mined ``cos_ij`` sends
  gradient into ``W_j`` only where ``cos_ij < cos_iy - m`` and into ``x_i``
  always.

The weight-detached cosines are computed only at the target and mined
entries (one dot product each), not with a second matmul.
"""

from __future__ import annotations

import torch

from fpr_plugin.losses.entries import EntryGradients, weight_detached_entries
from fpr_plugin.losses.margin import MarginLoss, scaled_logits, target_entries
from fpr_plugin.losses.selection import mine_above_threshold
from fpr_plugin.losses.stats import FprStats
from fpr_plugin.losses.validation import check_cosines, check_features, check_real
from fpr_plugin.registry import register_loss

__all__ = ["FprPenaltyTFace"]


@register_loss("fpr_penalty_tface")
class FprPenaltyTFace(MarginLoss):
    """The released (TFace) variant of the FPR penalty on a CosFace margin.

    Needs ``norm_embeddings`` and ``norm_weight`` in the call (the head passes
    them) for the gradient routing.
    """

    def __init__(self, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(s)
        self.m = check_real("m", m)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        """CosFace ``cos - m`` (the penalty is added in :meth:`forward`)."""
        return cos_y - self.m

    def forward(
        self,
        cos: torch.Tensor,
        labels: torch.Tensor,
        norm_embeddings: torch.Tensor | None = None,
        norm_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled logits ``[N, C]`` with the released code's penalty on the target logit."""
        labels = check_cosines(cos, labels)
        check_features(norm_embeddings, norm_weight, cos, "fpr_penalty_tface")
        layout = self.layout
        layout.check_not_silently_local("fpr_penalty_tface")
        local_rows, local_classes = cos.shape
        n = layout.global_rows(local_rows, cos.device)
        c = layout.global_classes(local_classes, cos.device)
        if c < 2:
            raise ValueError(f"fpr_penalty_tface needs at least 2 classes, got {c}")
        rows_t, cols_t = target_entries(labels)
        detached = cos.detach()

        with torch.no_grad():
            # Each row's target cosine, wherever its class lives (+inf: no target anywhere).
            partial = detached.new_zeros(local_rows, 2)
            partial[rows_t, 0] = detached[rows_t, cols_t]
            partial[rows_t, 1] = 1.0
            summed = layout.sum_over_classes(partial)
            cos_y = torch.where(summed[:, 1] > 0, summed[:, 0], torch.full_like(summed[:, 0], float("inf")))
            excluded = detached > cos_y.unsqueeze(1)
            num_excluded = int(layout.sum_counts(excluded.sum()).item())
            candidates = detached.masked_fill(excluded, float("-inf"))
            candidates[rows_t, cols_t] = float("-inf")
            del excluded
            negatives = n * (c - 1) - num_excluded
            k = max(1, -(-negatives // (c - 1)))  # ceil(negatives / (c - 1)), gamma_u = 1 / (c - 1)
        threshold, rows, cols, values = mine_above_threshold(candidates, None, k, layout)
        del candidates

        # Mined cosines: gradient into W_j only where cos_ij < cos_iy - m.
        into_weight = values < cos_y[rows] - self.m
        entries = EntryGradients()
        z_full = entries.gather(cos, rows[into_weight], cols[into_weight])
        keep = ~into_weight
        z_embed = weight_detached_entries(values[keep], norm_embeddings, norm_weight, rows[keep], cols[keep])
        squares = cos.new_zeros(local_rows)
        squares = squares.index_add(0, rows[into_weight], z_full.pow(2)).index_add(0, rows[keep], z_embed.pow(2))
        counts = torch.bincount(rows, minlength=local_rows).to(cos.dtype)
        mined_count = layout.sum_over_classes(counts)
        penalty_base = layout.sum_over_classes(squares) / mined_count.clamp_min(1.0)  # P_i

        cos_target = entries.gather(cos, rows_t, cols_t)
        cos_target_tilde = weight_detached_entries(detached[rows_t, cols_t], norm_embeddings, norm_weight, rows_t, cols_t)
        target = (cos_target - self.m) - (1.0 + cos_target_tilde) * penalty_base[rows_t]
        logits = scaled_logits(cos, rows_t, cols_t, target, self.s, entries=entries)

        with torch.no_grad():
            instance_fpr = mined_count / (c - 1)
            has_target = torch.isfinite(cos_y)
            penalty = torch.where(has_target, 1.0 + cos_y, torch.ones_like(cos_y)) * penalty_base.detach()
        self.last_instance_fpr = instance_fpr
        self.last_stats = FprStats.summarize(threshold, k, instance_fpr, penalty, mined_cos2=penalty_base).as_dict()
        return logits

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}"
