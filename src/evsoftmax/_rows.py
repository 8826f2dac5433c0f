"""Row helpers shared by the array-API baselines (softmax, sparsemax, entmax).

The threshold-based maps (sparsemax, entmax) are translation invariant and give
zero probability to every entry more than one unit (in their scaled score
space) below the row maximum. They are therefore computed on scores shifted to
a maximum of 0 and clipped at -2: the clipping changes no output, keeps every
cumulative sum finite and bounded by twice the row length, and gives excluded
entries (``where=False`` or ``-inf``) a finite stand-in that can never enter
the support.
"""

from __future__ import annotations

import math

from ._core import _valid_entries
from ._lib._compat import device
from ._lib._typing import Array, Namespace

__all__ = ["CLIP", "clipped_scores", "finish", "positions", "shifted_scores"]

CLIP = -2.0
"""Lower clip of the shifted, scaled scores: below the support of every map here."""


def shifted_scores(
    x: Array, where: Array | None, axis: int, xp: Namespace
) -> tuple[Array, Array, Array]:
    """Return ``(valid, shifted, bad)``: ``x`` minus its row's valid maximum.

    ``bad`` marks the rows holding a valid NaN or +inf. ``shifted`` is 0 on
    excluded entries and on every entry of a bad row, so no ``inf - inf`` is
    ever formed (callers turn bad rows into NaN at the end, see :func:`finish`).
    """
    valid = _valid_entries(x, where, xp)
    row_max = xp.max(xp.where(valid, x, -math.inf), axis=axis, keepdims=True)
    bad = xp.isnan(row_max) | (row_max == math.inf)
    # Rows without valid entries have max -inf: shift them by 0 as well.
    row_max = xp.where(bad | (row_max == -math.inf), 0.0, row_max)
    kept = xp.where(valid & ~bad, x, row_max)
    # x - max overflows exactly when x < max - (dtype max), possible only for max > 0:
    # such entries are shifted to -inf (weight 0) without forming the overflow.
    lowest = xp.maximum(row_max, 0.0) - xp.finfo(x.dtype).max
    beyond = kept < lowest
    shifted = xp.where(beyond, -math.inf, xp.where(beyond, row_max, kept) - row_max)
    return valid, shifted, bad


def clipped_scores(
    x: Array, where: Array | None, axis: int, scale: float, xp: Namespace
) -> tuple[Array, Array, Array]:
    """Return ``(valid, z, bad)``: ``z = max(scale * (x - row max), CLIP)`` on valid entries.

    Excluded entries get ``CLIP``; ``bad`` marks the rows that hold a NaN or +inf.
    """
    valid, shifted, bad = shifted_scores(x, where, axis, xp)
    z = xp.where(valid, xp.maximum(scale * shifted, CLIP), CLIP)
    return valid, z, bad


def finish(probs: Array, valid: Array, bad: Array, dtype: object, xp: Namespace) -> Array:
    """Zero the excluded entries, turn rows with NaN or +inf into NaN, cast to ``dtype``."""
    probs = xp.where(valid, probs, 0.0)
    probs = xp.where(bad, math.nan, probs)
    return xp.astype(probs, dtype, copy=False)


def positions(x: Array, axis: int, xp: Namespace) -> Array:
    """``1, 2, ..., n`` along ``axis`` (``n = x.shape[axis]``), broadcastable to ``x``."""
    n = x.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = n
    ranks = xp.arange(1, n + 1, dtype=x.dtype, device=device(x))
    return xp.reshape(ranks, tuple(shape))
