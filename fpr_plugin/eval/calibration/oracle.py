"""Oracle: FairCal's per-cluster beta calibration with the true group labels as the clusters (an upper bound).

It needs the group of every calibration image and of both images of every test
pair; a test group the fit set did not have is an error. With ``within_groups``
(the default) a group's map is fitted on the calibration pairs whose two images are
both in it (the within-group pairs the dense protocol evaluates, and the kind of
pairs RFW's lists hold); else on every pair with at least one image in it, as FairCal.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fpr_plugin.eval.calibration.base import METHODS, Fields
from fpr_plugin.eval.calibration.faircal import DEFAULT_L2, ClusterBeta, fit_cluster_maps
from fpr_plugin.eval.calibration.fitdata import DEFAULT_MAX_PAIRS, FitData

__all__ = ["Oracle"]


class Oracle(ClusterBeta):
    """Beta calibration per true group (needs labels at fit and at test time)."""

    method = "oracle"
    needs_groups = True

    @classmethod
    def fit(cls, data: FitData, l2: float = DEFAULT_L2, model_sha256: str = "",
            max_pairs: int = DEFAULT_MAX_PAIRS, within_groups: bool = True) -> "Oracle":
        """Fit on ``data``, whose ``groups`` must be given."""
        if data.groups is None:
            raise ValueError(f"the oracle calibration needs a group per image; set {data.name or '?'} gives none")
        names = [str(g) for g in dict.fromkeys(data.groups.tolist())]
        index = {g: i for i, g in enumerate(names)}
        labels = np.array([index[str(g)] for g in data.groups.tolist()], np.int64)
        keep = labels[data.pairs[:, 0]] == labels[data.pairs[:, 1]] if within_groups else slice(None)
        maps = fit_cluster_maps(data.scores[keep], data.issame[keep], data.pairs[keep], labels, len(names), l2)
        params = {"l2": float(l2), "max_pairs": int(max_pairs), "within_groups": bool(within_groups)}
        return cls(params, {"groups": names, **maps}, model_sha256, data.name, data.image_digests,
                   data.identity_digests, data.embedding)

    def assign(self, unit_embeddings: np.ndarray, groups: Any = None) -> np.ndarray:
        if groups is None:
            raise ValueError("the oracle calibration needs the group of every image (groups_a / groups_b)")
        names = {g: i for i, g in enumerate(self.state["groups"])}
        groups = [str(g) for g in np.asarray(groups, dtype=object).reshape(-1).tolist()]
        if len(groups) != len(unit_embeddings):
            raise ValueError(f"expected one group per embedding ({len(unit_embeddings)}), got {len(groups)}")
        unknown = sorted(set(groups) - set(names))
        if unknown:
            raise ValueError(f"groups {unknown} were not in the oracle's fit set (it has {list(names)})")
        return np.array([names[g] for g in groups], np.int64)

    @property
    def dimension(self) -> int | None:
        return None

    @classmethod
    def check_params(cls, fields: Fields) -> dict:
        within = fields.get("within_groups")
        if not isinstance(within, bool):
            raise fields.error("within_groups", "true or false", within)
        return {"l2": float(fields.number("l2", 0.0)),
                "max_pairs": int(fields.number("max_pairs", 1, 2**63, integer=True)), "within_groups": within}

    @classmethod
    def check_state(cls, fields: Fields, params: dict) -> dict:
        groups = fields.strings("groups")
        if not groups or len(set(groups)) != len(groups):
            raise fields.error("groups", "a non-empty list of distinct group names")
        return {"groups": groups, **cls._check_maps(fields, len(groups))}


METHODS[Oracle.method] = Oracle
