"""Margin losses and the FPR penalty, registered by name (see :mod:`fpr_plugin.registry`).

Importing this package registers ``cosface``, ``arcface``, ``combined``,
``fpr_penalty`` (the paper's Eq. 10/11) and ``fpr_penalty_tface`` (the
authors' released variant). Nothing else happens at import time.
"""

from fpr_plugin.losses.cross_entropy import cross_entropy
from fpr_plugin.losses.fpr_penalty import FprPenalty
from fpr_plugin.losses.fpr_penalty_tface import FprPenaltyTFace
from fpr_plugin.losses.margin import ArcFace, CombinedMargin, CosFace, MarginLoss

__all__ = [
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "FprPenalty",
    "FprPenaltyTFace",
    "MarginLoss",
    "cross_entropy",
]
