"""One record of what an FPR loss saw in a step, shared by both FPR losses and the monitor.

``FprStats.summarize`` turns the step's tensors into plain floats with one
device sync (one ``tolist``). Fields that a loss does not have stay None and
are left out of :meth:`FprStats.as_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

__all__ = ["FprStats", "LOG_LABELS"]

# Keys of FprStats.as_dict() shown on a training log line, and their labels.
LOG_LABELS = (
    ("threshold", "T_u"),
    ("instance_fpr_mean", "FPR mean"),
    ("instance_fpr_max", "FPR max"),
    ("penalty_mean", "penalty"),
    ("pairs_threshold", "T_u pairs"),
    ("pairs_instance_fpr_mean", "pair FPR mean"),
)


@dataclass(frozen=True)
class FprStats:
    """Plain floats of one step of an FPR loss.

    - ``threshold``: ``T_u``; ``k``: its rank among the non-target cosines
      (with ``negatives="pairs"``: among the impostor pair cosines of the
      batch; +inf and 0 when the batch has no impostor pair);
    - ``instance_fpr_mean/max``: Eq. 9 over the global batch's rows (over
      each row's impostor pairs with ``negatives="pairs"``);
    - ``weighted_fpr_mean/max``: Eq. 11's ``g_i`` (the paper's loss only);
    - ``mined_cos2_mean/max``: the released code's ``P_i``, the mean squared
      mined cosine of a row (``fpr_penalty_tface`` only);
    - ``penalty_mean``: the mean of what is added to the logits before scaling
      (``alpha * g_i / gamma_u``, or ``(1 + cos_iy) * P_i``).
    """

    threshold: float
    k: float
    instance_fpr_mean: float
    instance_fpr_max: float
    penalty_mean: float
    weighted_fpr_mean: float | None = None
    weighted_fpr_max: float | None = None
    mined_cos2_mean: float | None = None
    mined_cos2_max: float | None = None

    @classmethod
    def summarize(
        cls,
        threshold: torch.Tensor,
        k: int,
        instance_fpr: torch.Tensor,
        penalty: torch.Tensor,
        weighted_fpr: torch.Tensor | None = None,
        mined_cos2: torch.Tensor | None = None,
    ) -> "FprStats":
        """The record of one step from its per-row tensors (no gradient; one device sync)."""
        with torch.no_grad():
            dtype = instance_fpr.dtype
            parts = [threshold.to(dtype), instance_fpr.mean(), instance_fpr.max(), penalty.mean()]
            for extra in (weighted_fpr, mined_cos2):
                if extra is not None:
                    parts += [extra.detach().mean(), extra.detach().max()]
            values = torch.stack(parts).tolist()
        fields = dict(zip(("threshold", "instance_fpr_mean", "instance_fpr_max", "penalty_mean"), values[:4]))
        rest = iter(values[4:])
        if weighted_fpr is not None:
            fields.update(weighted_fpr_mean=next(rest), weighted_fpr_max=next(rest))
        if mined_cos2 is not None:
            fields.update(mined_cos2_mean=next(rest), mined_cos2_max=next(rest))
        return cls(k=float(k), **fields)

    def as_dict(self) -> dict[str, float]:
        """The fields that this loss has, as a flat dict of floats (for logs and metrics.jsonl)."""
        return {key: value for key, value in asdict(self).items() if value is not None}
