"""Beta calibration (Kull, Silva Filho, Flach, AISTATS 2017) of cosine similarities, fitted by Newton's method.

A cosine ``s`` in [-1, 1] is mapped to ``u = (s + 1) / 2`` and clipped to
``[EPS, 1 - EPS]``; the calibrated probability of "same person" is
``sigmoid(a * ln(u) - b * ln(1 - u) + c)``, a logistic regression on the features
``[ln u, -ln(1 - u)]``. The fit minimises, in float64,
``sum_i logloss(y_i, p_i) + l2 / 2 * (a**2 + b**2)`` (the intercept is not penalised,
as in scikit-learn's ``LogisticRegression(C=1/l2)``) with Newton steps and step
halving. Kull et al. keep the map monotone with ``a, b >= 0``: when the free fit
gives a negative ``a`` (``b``), that feature is dropped and the rest refitted
(our reading of their procedure, not checked against their code).
"""
from __future__ import annotations

import numpy as np

__all__ = ["EPS", "beta_features", "beta_predict", "fit_beta", "fit_logistic"]

#: clip of the (0, 1)-mapped cosine before the logarithms
EPS = 1e-6


def beta_features(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ln u, -ln(1 - u))`` with ``u = clip((s + 1) / 2, EPS, 1 - EPS)``, float64."""
    u = np.clip((np.asarray(scores, np.float64) + 1.0) / 2.0, EPS, 1.0 - EPS)
    return np.log(u), -np.log1p(-u)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def beta_predict(params: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(a ln u + b (-ln(1-u)) + c)`` for ``params = (a, b, c)``."""
    a, b, c = (float(v) for v in params)
    f1, f2 = beta_features(scores)
    return _sigmoid(a * f1 + b * f2 + c)


def _loss(z: np.ndarray, y: np.ndarray) -> float:
    # log(1 + exp(z)) - y z, stable
    return float(np.sum(np.logaddexp(0.0, z) - y * z))


def fit_logistic(features: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 100,
                 tol: float = 1e-10) -> np.ndarray:
    """Weights ``[F + 1]`` (last: intercept) of an L2 logistic regression on ``features [P, F]``, by Newton steps."""
    x = np.column_stack([np.asarray(features, np.float64).reshape(len(y), -1), np.ones(len(y))])
    y = np.asarray(y, np.float64)
    reg = np.full(x.shape[1], float(l2))
    reg[-1] = 0.0
    w = np.zeros(x.shape[1])

    def objective(w: np.ndarray) -> float:
        return _loss(x @ w, y) + 0.5 * float(np.sum(reg * w * w))

    current = objective(w)
    for _ in range(max_iter):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + reg * w
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + np.diag(reg + 1e-12)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            trial = w - t * step
            value = objective(trial)
            if value <= current:
                break
            t *= 0.5
        else:
            break
        done = current - value <= tol * max(1.0, abs(current))
        w, current = trial, value
        if done:
            break
    return w


def fit_beta(scores: np.ndarray, issame: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """``(a, b, c)`` of a monotone beta calibration map fitted on cosines and same-person flags."""
    y = np.asarray(issame, bool)
    if y.all() or not y.any():
        raise ValueError("beta calibration needs genuine and impostor pairs, got only one kind")
    f1, f2 = beta_features(scores)
    a, b, c = fit_logistic(np.column_stack([f1, f2]), y, l2)
    if a < 0 and b < 0:
        return np.array([0.0, 0.0, fit_logistic(np.empty((len(y), 0)), y, l2)[0]])
    if a < 0:
        b, c = fit_logistic(f2[:, None], y, l2)
        a = 0.0
    elif b < 0:
        a, c = fit_logistic(f1[:, None], y, l2)
        b = 0.0
    if a < 0 or b < 0:  # the one-feature refit went negative too: intercept only
        return np.array([0.0, 0.0, fit_logistic(np.empty((len(y), 0)), y, l2)[0]])
    return np.array([a, b, c], np.float64)
