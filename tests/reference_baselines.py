"""Float64 references for the baselines, written from their definitions, one row at a time.

Independent of the library's algorithms: sparsemax uses the classic support-size
rule of Held et al. (the library takes the maximum of the prefix thresholds),
alpha-entmax solves its threshold equation with SciPy's ``brentq`` (the library
sorts or bisects), and the post-hoc evidential sparsification loops over
classes and features one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.optimize import brentq

from .reference import _rows, _unrows, _valid


def by_rows(
    fn: Callable[[np.ndarray], np.ndarray], x, axis=-1, where=None, empty=0.0
) -> np.ndarray:
    """Apply ``fn`` to the valid entries of every row (DESIGN §4 masking and NaN rules)."""
    x = np.asarray(x, dtype=np.float64)
    valid = _valid(x, where)
    rows, vrows = _rows(x, axis), _rows(valid, axis).astype(bool)
    out = np.full(rows.shape, empty)
    for row, v, m in zip(out, rows, vrows, strict=True):
        vals = v[m]
        if np.isnan(vals).any() or np.isposinf(vals).any():
            row[:] = np.nan
        elif m.any():
            row[m] = fn(vals)
    return _unrows(out, x.shape, axis)


def softmax_vals(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def log_softmax_vals(v: np.ndarray) -> np.ndarray:
    s = v - v.max()
    return s - np.log(np.exp(s).sum())


def sparsemax_vals(v: np.ndarray) -> np.ndarray:
    """Held et al.: k = max{k : 1 + k z_(k) > S_k}, tau = (S_k - 1) / k, S_k = sum_{j<=k} z_(j)."""
    z = np.sort(v)[::-1]
    total, k_star, s_star = 0.0, 0, 0.0
    for k, zk in enumerate(z, start=1):
        total += zk
        if 1.0 + k * zk > total:
            k_star, s_star = k, total
    tau = (s_star - 1.0) / k_star
    return np.maximum(v - tau, 0.0)


def entmax_threshold(v: np.ndarray, alpha: float) -> float:
    """The root tau of sum_k [(alpha-1) v_k - tau]_+^(1/(alpha-1)) = 1 (Brent's method)."""
    z = (alpha - 1.0) * v

    def excess(tau: float) -> float:
        return float((np.maximum(z - tau, 0.0) ** (1.0 / (alpha - 1.0))).sum() - 1.0)

    # At z.max() - 1 the top entry alone contributes 1; widen a little against rounding.
    low, high = z.max() - 1.0 - 1e-6, z.max()
    return brentq(excess, low, high, xtol=1e-15, rtol=4 * np.finfo(float).eps)


def entmax_vals(v: np.ndarray, alpha: float) -> np.ndarray:
    tau = entmax_threshold(v, alpha)
    return np.maximum((alpha - 1.0) * v - tau, 0.0) ** (1.0 / (alpha - 1.0))


def softmax(x, axis=-1, where=None):
    return by_rows(softmax_vals, x, axis, where)


def log_softmax(x, axis=-1, where=None):
    return by_rows(log_softmax_vals, x, axis, where, empty=-np.inf)


def sparsemax(x, axis=-1, where=None):
    return by_rows(sparsemax_vals, x, axis, where)


def entmax(x, alpha, axis=-1, where=None):
    return by_rows(lambda v: entmax_vals(v, alpha), x, axis, where)


def evidential_sparsification(features, weight, bias) -> np.ndarray:
    """Chen et al. Eqs. 4-6 with explicit loops over classes k, l and features j."""
    features = np.asarray(features, dtype=np.float64)
    beta = np.vstack([bias, weight]).astype(np.float64)  # (J+1, K), row 0 the bias
    n_features, n_classes = beta.shape[0] - 1, beta.shape[1]
    out = np.empty((*features.shape[:-1], n_classes))
    for idx in np.ndindex(*features.shape[:-1]):
        phi = features[idx]
        w = np.empty(n_classes)
        for k in range(n_classes):
            w[k] = beta[0, k] - beta[0].mean()
            for j in range(n_features):
                w[k] += phi[j] * (beta[j + 1, k] - beta[j + 1].mean())
        w_plus, w_minus = np.maximum(w, 0.0), np.maximum(-w, 0.0)
        mass = np.empty(n_classes)
        for k in range(n_classes):
            prod = math.prod(1.0 - math.exp(-w_minus[i]) for i in range(n_classes) if i != k)
            mass[k] = math.exp(-w_minus[k]) * (math.exp(w_plus[k]) - 1.0 + prod)
        weights = (mass != 0.0) * np.exp(w - w.max())
        out[idx] = weights / weights.sum()
    return out
