"""Float64 references written from the paper's formulas, independent of the library.

Each row is handled one at a time in plain NumPy float64, following DESIGN §2
and §4 literally: the mean is over the valid entries (``where`` true and not
-inf), the support is the valid entries ``>= mean`` plus the row maximum, and
``p_k ∝ (1{k in support} + eps) * exp(x_k)``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1).reshape(-1, x.shape[axis])


def _unrows(rows: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved = list(shape)
    moved.append(moved.pop(axis))
    return np.moveaxis(rows.reshape(moved), -1, axis)


def _valid(x: np.ndarray, where: np.ndarray | None) -> np.ndarray:
    valid = x != -np.inf
    if where is not None:
        valid = valid & np.broadcast_to(where, x.shape)
    return valid


def support_row(v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Support of one row: valid entries at or above the valid mean, plus the maximum."""
    out = np.zeros(v.shape, dtype=bool)
    if not valid.any():
        return out
    vals = v[valid]
    if np.isnan(vals).any() or np.isposinf(vals).any():
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        mean = vals.sum() / vals.size
    if np.isfinite(mean):
        out[valid] = (vals >= mean) | (vals == vals.max())
    else:  # the float64 sum overflows (range near 1.7e308): the exact mean, in rationals
        exact = sum(Fraction(float(v)) for v in vals) / vals.size
        out[valid] = np.array([Fraction(float(v)) >= exact for v in vals])
    return out


def exact_support_row(v: np.ndarray) -> np.ndarray:
    """Support of one row of finite values from the exact (rational) mean."""
    exact = sum(Fraction(float(a)) for a in v) / v.size
    return np.array([Fraction(float(a)) >= exact for a in v])


def exact_gap(v: np.ndarray) -> float:
    """Smallest relative distance between an entry and the exact row mean (to skip near-ties)."""
    exact = sum(Fraction(float(a)) for a in v) / v.size
    scale = max(abs(Fraction(float(a))) for a in v) or Fraction(1)
    return float(min(abs(Fraction(float(a)) - exact) for a in v) / scale)


def ev_softmax_row(v: np.ndarray, valid: np.ndarray, eps: float) -> np.ndarray:
    """ev-softmax of one float64 row."""
    vals = v[valid]
    if valid.any() and (np.isnan(vals).any() or np.isposinf(vals).any()):
        return np.full(v.shape, np.nan)
    p = np.zeros(v.shape)
    if not valid.any():
        return p
    sup = support_row(v, valid)
    with np.errstate(over="ignore"):  # a difference beyond float64's range: weight 0
        w = (sup[valid] + eps) * np.exp(vals - vals.max())
    p[valid] = w / w.sum()
    return p


def ev_softmax(x, axis=-1, eps=0.0, where=None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    valid = _valid(x, where)
    rows, vrows = _rows(x, axis), _rows(valid, axis).astype(bool)
    out = (
        np.stack([ev_softmax_row(r, m, eps) for r, m in zip(rows, vrows, strict=False)])
        if rows.size
        else rows
    )
    return _unrows(out, x.shape, axis)


def log_ev_softmax(x, axis=-1, eps=0.0, where=None) -> np.ndarray:
    """Log-probabilities from the log-sum-exp of the weighted logits, in float64."""
    x = np.asarray(x, dtype=np.float64)
    valid = _valid(x, where)
    rows, vrows = _rows(x, axis), _rows(valid, axis).astype(bool)
    out = []
    for v, m in zip(rows, vrows, strict=False):
        row = np.full(v.shape, -np.inf)
        vals = v[m]
        if m.any() and (np.isnan(vals).any() or np.isposinf(vals).any()):
            row[:] = np.nan
        elif m.any():
            sup = support_row(v, m)[m]
            with np.errstate(divide="ignore", over="ignore"):
                # Shift by the maximum first so that log K survives at any magnitude.
                logw = np.log(sup + eps) + (vals - vals.max())
            top = logw.max()
            row[m] = logw - (top + np.log(np.exp(logw - top).sum()))
        out.append(row)
    return _unrows(np.stack(out) if out else rows, x.shape, axis)


def support(x, axis=-1, where=None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    valid = _valid(x, where)
    rows, vrows = _rows(x, axis), _rows(valid, axis).astype(bool)
    out = (
        np.stack([support_row(r, m) for r, m in zip(rows, vrows, strict=False)])
        if rows.size
        else rows
    )
    return _unrows(out.astype(bool), x.shape, axis)


def softmax(x, axis=-1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def min_gap_to_mean(x, axis=-1) -> float:
    """Smallest distance between an entry and its row mean (to keep tests away from ties)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs(x - x.mean(axis=axis, keepdims=True)).min()) if x.size else np.inf
