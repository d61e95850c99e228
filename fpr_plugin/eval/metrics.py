"""Verification metrics and fairness summaries (pure numpy).

Conventions used throughout:

* ``scores``: similarities ``[P]`` (higher = more alike); ``issame``: bool ``[P]``
  (True = genuine pair, False = impostor pair); ``groups``: ``[P]`` group names.
* A pair is *accepted* at threshold ``t`` when ``score > t`` (strict), except in
  :func:`roc_curve`, which follows ``sklearn.metrics.roc_curve`` (``score >= t``).
* The global threshold at overall FPR ``f`` over ``n`` impostor pairs is the
  ``(k + 1)``-th largest impostor score with ``k = floor(f * n)``: accepting
  ``score > threshold`` lets at most ``k`` impostors through (exactly ``k``
  without ties), so the measured FPR is the largest one that is ``<= f``.
  When ``f < 1 / n`` (``k = 0``) the target is *not measurable* with these
  pairs: the threshold is the maximum impostor score and every FPR is 0.

Bias summaries at the global threshold, over the ``G`` groups' FPRs ``FPR_g``:

* ``std_over_f = std_g(FPR_g, ddof=1) / f`` -- the project's **bias degree**;
* ``max_min_ratio = max_g FPR_g / min_g FPR_g`` (None when a group has 0 FPR);
* ``gini`` -- the false-positive differential in Gini form (ISO/IEC 19795-10,
  Howard et al. 2022 "GARBE"):
  ``G = G/(G-1) * sum_i sum_j |FPR_i - FPR_j| / (2 * G**2 * mean_g FPR_g)``,
  in [0, 1]: 0 when all groups share one FPR, 1 when one group has all the
  false positives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

#: z of the two-sided 95 % normal interval, used by :func:`wilson_interval`.
Z_95 = 1.959963984540054
#: Below this many expected false positives (f * #impostors) a group FPR is flagged ``low_count``.
LOW_COUNT_EXPECTED_FP = 10.0


# --------------------------------------------------------------------------- validation
def _check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of similarities, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, found {int(np.sum(~np.isfinite(arr)))} NaN/inf value(s)")
    return arr


def _check_issame(issame: Any, n: int, name: str = "issame") -> np.ndarray:
    arr = np.asarray(issame)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array of length {n} (one flag per pair), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iuf" and np.all((arr == 0) | (arr == 1)):
        return arr.astype(bool)
    raise ValueError(f"{name} must hold booleans or 0/1, got dtype {arr.dtype}")


def _check_groups(groups: Any, n: int, name: str = "groups") -> np.ndarray:
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array of length {n} (one group per pair), got shape {arr.shape}")
    return arr


def check_fpr(fpr: float, name: str = "fpr") -> float:
    """A target FPR as a float in (0, 1); ValueError naming ``name`` otherwise."""
    f = float(fpr)
    if not 0.0 < f < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {fpr!r}")
    return f


def _group_order(groups: np.ndarray) -> list:
    """Group names in order of first appearance (keeps the data set's natural order)."""
    _, first = np.unique(groups, return_index=True)
    return [groups[i].item() if hasattr(groups[i], "item") else groups[i] for i in sorted(first)]


# --------------------------------------------------------------------------- ROC
def roc_curve(scores: Any, issame: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of a pair list: ``(fpr, tpr, thresholds)``, one point per distinct score.

    Same output as ``sklearn.metrics.roc_curve(issame, scores, drop_intermediate=False)``:
    thresholds descending, the first is ``+inf`` (nothing accepted), a pair is
    accepted when ``score >= threshold``.
    """
    s = _check_scores(scores)
    y = _check_issame(issame, s.shape[0])
    n_gen, n_imp = int(y.sum()), int((~y).sum())
    if n_gen == 0 or n_imp == 0:
        raise ValueError(f"roc_curve needs genuine and impostor pairs, got {n_gen} genuine, {n_imp} impostor")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each run of equal scores
    ends = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.shape[0] - 1]
    tp = np.cumsum(y_sorted)[ends]
    fp = (ends + 1) - tp
    fpr = np.r_[0.0, fp / n_imp]
    tpr = np.r_[0.0, tp / n_gen]
    thresholds = np.r_[np.inf, s_sorted[ends]]
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC given by increasing ``fpr`` (trapezoid rule)."""
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def roc_at_fprs(fpr: np.ndarray, tpr: np.ndarray, grid: Sequence[float]) -> np.ndarray:
    """Best TPR among ROC points with FPR <= each grid value (exact ROC values, for compact curves).

    A relative slack of 1e-9 keeps grid values computed as e.g. ``10**log10(1/n)`` from missing ``1/n``.
    """
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    best = np.maximum.accumulate(tpr)  # fpr is non-decreasing along the curve
    idx = np.searchsorted(fpr, np.asarray(grid, float) * (1.0 + 1e-9), side="right") - 1
    return np.where(idx >= 0, best[np.maximum(idx, 0)], 0.0)


# --------------------------------------------------------------------------- threshold at FPR
def rank_at_fpr(fpr: float, n_impostor: int) -> int:
    """``k = floor(fpr * n_impostor)``: how many impostors may be accepted at overall FPR ``fpr``."""
    f = check_fpr(fpr)
    if n_impostor < 1:
        raise ValueError(f"n_impostor must be >= 1, got {n_impostor}")
    # the tiny relative slack keeps e.g. 0.29 * 100 from flooring to 28
    return int(math.floor(f * n_impostor * (1.0 + 1e-12)))


def threshold_at_fpr(impostor_scores: Any, fpr: float) -> tuple[float, int]:
    """Global threshold at overall FPR ``fpr``: ``(threshold, k)`` (see the module docstring).

    ``threshold`` is the ``(k + 1)``-th largest impostor score, ``k = floor(fpr * n)``;
    accept ``score > threshold``.
    """
    s = _check_scores(impostor_scores, "impostor_scores")
    if s.shape[0] == 0:
        raise ValueError("impostor_scores is empty: no impostor pairs to set a threshold on")
    k = rank_at_fpr(fpr, s.shape[0])
    # (k+1)-th largest == element n-1-k of the ascending order
    threshold = float(np.partition(s, s.shape[0] - 1 - k)[s.shape[0] - 1 - k])
    return threshold, k


def tpr_at_fpr(scores: Any, issame: Any, fpr: float) -> float:
    """TPR at the threshold of :func:`threshold_at_fpr` (the best TPR whose FPR is <= ``fpr``)."""
    s = _check_scores(scores)
    y = _check_issame(issame, s.shape[0])
    if not y.any():
        raise ValueError("tpr_at_fpr needs at least one genuine pair (issame all False)")
    threshold, _ = threshold_at_fpr(s[~y], fpr)
    return float(np.mean(s[y] > threshold))


# --------------------------------------------------------------------------- k-fold accuracy
def best_accuracy_threshold(scores: Any, issame: Any) -> tuple[float, float]:
    """Threshold with the best accuracy on a pair list: ``(threshold, accuracy)``.

    Candidates are the midpoints between consecutive distinct scores plus
    ``-inf`` (accept all) and ``+inf`` (accept none); a pair is accepted when
    ``score > threshold``. Ties in accuracy go to the highest threshold
    (the strictest, fewest false accepts).
    """
    s = _check_scores(scores)
    y = _check_issame(issame, s.shape[0])
    if s.shape[0] == 0:
        raise ValueError("best_accuracy_threshold needs at least one pair")
    values, inverse = np.unique(s, return_inverse=True)  # ascending distinct scores
    gen = np.bincount(inverse, weights=y, minlength=values.shape[0])
    imp = np.bincount(inverse, weights=~y, minlength=values.shape[0])
    # candidate c in 0..m: accept values[c:]; c = 0 is -inf, c = m is +inf
    gen_accepted = np.r_[np.cumsum(gen[::-1])[::-1], 0.0]
    imp_rejected = np.r_[0.0, np.cumsum(imp)]
    correct = gen_accepted + imp_rejected
    c = correct.shape[0] - 1 - int(np.argmax(correct[::-1]))  # last maximum = highest threshold
    if c == 0:
        threshold = -np.inf
    elif c == values.shape[0]:
        threshold = np.inf
    else:
        threshold = float((values[c - 1] + values[c]) / 2.0)
    return threshold, float(correct[c] / s.shape[0])


def consecutive_folds(n_pairs: int, n_folds: int = 10) -> np.ndarray:
    """Fold id of each pair when a list is cut into ``n_folds`` consecutive blocks (sklearn ``KFold`` sizes)."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if n_pairs < n_folds:
        raise ValueError(f"cannot cut {n_pairs} pairs into {n_folds} folds")
    folds = np.empty(n_pairs, dtype=np.int64)
    for fold, block in enumerate(np.array_split(np.arange(n_pairs), n_folds)):
        folds[block] = fold
    return folds


@dataclass(frozen=True)
class KFoldAccuracy:
    """Result of :func:`kfold_accuracy`: mean test accuracy and per-fold details."""

    accuracy: float
    fold_accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "fold_accuracies": list(self.fold_accuracies),
                "thresholds": list(self.thresholds)}


def kfold_accuracy(scores: Any, issame: Any, folds: Any | None = None, n_folds: int = 10) -> KFoldAccuracy:
    """k-fold verification accuracy: per fold, the best-accuracy threshold of the other folds, scored on it.

    ``folds``: fold id per pair; default: ``n_folds`` consecutive blocks, as the
    RFW/LFW pair files are laid out. Returns the mean over folds.
    """
    s = _check_scores(scores)
    y = _check_issame(issame, s.shape[0])
    fold_ids = consecutive_folds(s.shape[0], n_folds) if folds is None else np.asarray(folds)
    if fold_ids.shape != s.shape:
        raise ValueError(f"folds must have one fold id per pair ({s.shape[0]}), got shape {fold_ids.shape}")
    unique = np.unique(fold_ids)
    if unique.shape[0] < 2:
        raise ValueError(f"folds must contain at least 2 distinct folds, got {unique.tolist()}")
    accs, thresholds = [], []
    for fold in unique:
        test = fold_ids == fold
        threshold, _ = best_accuracy_threshold(s[~test], y[~test])
        accs.append(float(np.mean((s[test] > threshold) == y[test])))
        thresholds.append(threshold)
    return KFoldAccuracy(float(np.mean(accs)), tuple(accs), tuple(thresholds))


def group_kfold_accuracy(scores: Any, issame: Any, groups: Any, folds: Any | None = None,
                         n_folds: int = 10) -> dict:
    """:func:`kfold_accuracy` within each group, then ``avg`` and ``std`` (ddof=1) over the groups.

    Returns ``{"groups": {name: KFoldAccuracy.to_dict()}, "avg": float, "std": float | None}``
    (``std`` is None with a single group). Without ``folds`` each group's pairs,
    in their order, are cut into ``n_folds`` consecutive blocks.
    """
    s = _check_scores(scores)
    y = _check_issame(issame, s.shape[0])
    g = _check_groups(groups, s.shape[0])
    fold_ids = None if folds is None else _check_groups(folds, s.shape[0], "folds")
    per_group = {}
    for name in _group_order(g):
        mask = g == name
        n_gen, n_imp = int(y[mask].sum()), int((~y[mask]).sum())
        if n_gen == 0 or n_imp == 0:
            raise ValueError(f"group {name!r} has {n_gen} genuine and {n_imp} impostor pairs; "
                             "accuracy needs both")
        res = kfold_accuracy(s[mask], y[mask], None if fold_ids is None else fold_ids[mask], n_folds)
        per_group[str(name)] = res.to_dict()
    accs = np.array([r["accuracy"] for r in per_group.values()])
    std = float(np.std(accs, ddof=1)) if accs.shape[0] > 1 else None
    return {"groups": per_group, "avg": float(np.mean(accs)), "std": std}


# --------------------------------------------------------------------------- intervals and summaries
def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95 %); ``(0, 1)`` when ``trials == 0``."""
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got successes={successes}, trials={trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def gini_coefficient(values: Any) -> float | None:
    """Gini form of a differential over groups: ``G/(G-1) * sum_ij |v_i - v_j| / (2 G^2 mean(v))``.

    0 when all values are equal, 1 when one group holds everything; None when
    every value is 0 (undefined). Needs at least 2 non-negative values.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.shape[0] < 2:
        raise ValueError(f"values must be a 1-D array of >= 2 group rates, got shape {v.shape}")
    if np.any(v < 0) or not np.all(np.isfinite(v)):
        raise ValueError("values must be finite and non-negative")
    n, mean = v.shape[0], float(v.mean())
    if mean == 0.0:
        return None
    pair_sum = float(np.abs(v[:, None] - v[None, :]).sum())
    return n / (n - 1) * pair_sum / (2.0 * n * n * mean)


def bias_summaries(group_fpr: Any, fpr: float) -> dict:
    """The three bias summaries of group FPRs at the global threshold for overall FPR ``fpr``.

    ``std_over_f`` (the bias degree), ``max_min_ratio`` and ``gini``; a value is
    None where undefined (with a reason in ``notes``).
    """
    f = check_fpr(fpr)
    v = np.asarray(group_fpr, dtype=np.float64)
    if v.ndim != 1 or v.shape[0] < 2:
        raise ValueError(f"group_fpr needs >= 2 groups, got shape {v.shape}")
    notes = []
    lo, hi = float(v.min()), float(v.max())
    if lo > 0:
        ratio = hi / lo
    else:
        ratio = None
        notes.append("max/min ratio undefined: a group has FPR 0 at this threshold")
    gini = gini_coefficient(v)
    if gini is None:
        notes.append("Gini undefined: every group has FPR 0")
    return {"std_over_f": float(np.std(v, ddof=1) / f), "max_min_ratio": ratio, "gini": gini, "notes": notes}


def fairness_at_threshold(counts: Mapping[str, Mapping[str, int]], fpr: float, threshold: float,
                          k: int, n_impostor: int, z: float = Z_95) -> dict:
    """Assemble the per-group rates and bias summaries at one global threshold.

    ``counts[group] = {"fp", "n_impostor", "tp", "n_genuine"}`` (accepted =
    ``score > threshold``). Each group gets ``fpr``, ``tpr``, a Wilson interval
    on its FPR (``fpr_ci``), and ``low_count`` when it has fewer than
    ``LOW_COUNT_EXPECTED_FP`` expected false positives at ``fpr``. When
    ``fpr < 1 / n_impostor`` the result says it is not measurable and gives no summaries.
    """
    f = check_fpr(fpr)
    groups, notes = {}, []
    total_fp = 0
    for name, c in counts.items():
        n_imp, n_gen = int(c["n_impostor"]), int(c["n_genuine"])
        if n_imp == 0 or n_gen == 0:
            raise ValueError(f"group {name!r} has {n_gen} genuine and {n_imp} impostor pairs; "
                             "per-group FPR and TPR need both")
        fp, tp = int(c["fp"]), int(c["tp"])
        total_fp += fp
        lo, hi = wilson_interval(fp, n_imp, z)
        groups[str(name)] = {
            "fpr": fp / n_imp, "tpr": tp / n_gen, "fp": fp, "n_impostor": n_imp, "tp": tp,
            "n_genuine": n_gen, "fpr_ci": [lo, hi], "low_count": bool(f * n_imp < LOW_COUNT_EXPECTED_FP),
        }
    measurable = k >= 1
    if not measurable:
        notes.append(f"not measurable: target FPR {f:g} < 1/#impostors = {1.0 / n_impostor:.3g} "
                     f"({n_impostor} impostor pairs); threshold = the largest impostor score")
    elif any(g["low_count"] for g in groups.values()):
        notes.append(f"low counts: fewer than {LOW_COUNT_EXPECTED_FP:g} expected false positives in some "
                     "groups; see the FPR confidence intervals")
    result = {"target_fpr": f, "threshold": float(threshold), "k": int(k), "n_impostor": int(n_impostor),
              "measured_fpr": total_fp / n_impostor, "measurable": measurable, "groups": groups,
              "summaries": None, "notes": notes}
    if measurable and len(groups) >= 2:
        result["summaries"] = bias_summaries([g["fpr"] for g in groups.values()], f)
    return result


def pair_fairness(scores: Any, issame: Any, groups: Any, fprs: Sequence[float]) -> list[dict]:
    """:func:`fairness_at_threshold` at each overall FPR for a pair list with a group per pair."""
    s = _check_scores(scores)
    y = _check_issame(issame, s.shape[0])
    g = _check_groups(groups, s.shape[0])
    impostor = s[~y]
    results = []
    for f in fprs:
        threshold, k = threshold_at_fpr(impostor, f)
        accepted = s > threshold
        counts = {}
        for name in _group_order(g):
            m = g == name
            counts[str(name)] = {"fp": int(np.sum(accepted & m & ~y)), "n_impostor": int(np.sum(m & ~y)),
                                 "tp": int(np.sum(accepted & m & y)), "n_genuine": int(np.sum(m & y))}
        results.append(fairness_at_threshold(counts, f, threshold, k, impostor.shape[0]))
    return results
