r"""Array-API implementation of ev-softmax: the single source of truth.

Every function here takes validated arguments (a real floating array, a
non-negative ``axis``, a float ``epsilon``, a boolean ``where`` or None) and an
explicit namespace ``xp``, and uses only array-API calls, so it runs unchanged
on NumPy, PyTorch, JAX (also under ``jit``), CuPy, Dask and array-api-strict.
Adapters may replace these functions with faster or autodiff-aware versions,
and the test suite checks that they agree.

For one row :math:`v` with valid entries :math:`V` (``where`` true and not
``-inf``) and shifted scores :math:`s = v - \max_V v`:

.. math::

    S = \{k \in V : s_k \ge \tfrac{1}{|V|}\sum_{l \in V} s_l\}, \qquad
    p_k = \frac{(1\{k \in S\} + \varepsilon)\, e^{s_k}}
               {\sum_{l \in V} (1\{l \in S\} + \varepsilon)\, e^{s_l}}.

Comparing *shifted* scores with their mean keeps the row maximum in the
support under any rounding: every valid ``s`` is ``<= 0``, so their mean is
``<= 0`` and the maximum (``s = 0``) always passes. A constant row therefore
gives the uniform distribution at any length and magnitude.
"""

from __future__ import annotations

import math

from ._lib._typing import Array, Namespace

__all__ = [
    "accumulation_dtype",
    "ev_softmax",
    "ev_softmax_jvp",
    "ev_softmax_support",
    "log_ev_softmax",
    "row_statistics",
]


def accumulation_dtype(dtype: object, xp: Namespace) -> object:
    """The dtype to compute in: float32 for half precision, else ``dtype`` itself."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def _valid_entries(x: Array, where: Array | None, xp: Namespace) -> Array:
    """Entries that take part in the row: ``where`` is true and the value is not -inf."""
    valid = x != -math.inf
    return valid if where is None else valid & where


def row_statistics(
    x: Array, where: Array | None, axis: int, xp: Namespace
) -> tuple[Array, Array, Array]:
    """Return ``(valid, shifted, below)`` for the rows of ``x`` along ``axis``.

    ``shifted`` is ``x`` minus the maximum over the valid entries of its row (0 on
    invalid entries, NaN on every entry of a row holding a valid NaN or +inf);
    ``below`` marks the entries strictly below their row's valid-entry mean.
    The support is ``valid & ~below`` except in NaN rows, where it is empty:
    weights are zeroed through ``below`` so that NaN comparisons (always false)
    let the NaN through instead of hiding it.
    """
    valid = _valid_entries(x, where, xp)
    row_max = xp.max(xp.where(valid, x, -math.inf), axis=axis, keepdims=True)
    has_valid = xp.any(valid, axis=axis, keepdims=True)
    row_max = xp.where(has_valid, row_max, 0.0)
    shifted = xp.where(valid, x, row_max) - row_max
    count = xp.sum(xp.astype(valid, x.dtype), axis=axis, keepdims=True)
    mean = xp.sum(shifted, axis=axis, keepdims=True) / xp.where(has_valid, count, 1.0)
    return valid, shifted, shifted < mean


def _normalizer(weights: Array, axis: int, xp: Namespace) -> Array:
    """Row sums of ``weights``, with empty rows (sum 0) mapped to 1 and NaN kept."""
    total = xp.sum(weights, axis=axis, keepdims=True)
    return xp.where(total == 0.0, 1.0, total)


def _weights(exp: Array, below: Array, epsilon: float, xp: Namespace) -> Array:
    """Unnormalized probabilities ``(1{not below} + epsilon) * exp``."""
    if epsilon == 0.0:
        return xp.where(below, 0.0, exp)
    return xp.where(below, epsilon * exp, (1.0 + epsilon) * exp)


def ev_softmax(
    x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace
) -> Array:
    """ev-softmax (``epsilon == 0``) or its training-time family (``epsilon > 0``)."""
    out_dtype = x.dtype
    x = xp.astype(x, accumulation_dtype(out_dtype, xp), copy=False)
    valid, shifted, below = row_statistics(x, where, axis, xp)
    weights = _weights(xp.where(valid, xp.exp(shifted), 0.0), below, epsilon, xp)
    probs = weights / _normalizer(weights, axis, xp)
    return xp.astype(probs, out_dtype, copy=False)


def log_ev_softmax(
    x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace
) -> Array:
    """Logarithm of :func:`ev_softmax`, computed in log space (finite for ``epsilon > 0``)."""
    out_dtype = x.dtype
    x = xp.astype(x, accumulation_dtype(out_dtype, xp), copy=False)
    valid, shifted, below = row_statistics(x, where, axis, xp)
    weights = _weights(xp.where(valid, xp.exp(shifted), 0.0), below, epsilon, xp)
    log_off = -math.inf if epsilon == 0.0 else math.log(epsilon)
    log_weights = xp.where(below, shifted + log_off, shifted + math.log1p(epsilon))
    log_weights = xp.where(valid, log_weights, -math.inf)
    # Subtracting a NaN normalizer also turns the -inf entries of a NaN row into NaN.
    out = log_weights - xp.log(_normalizer(weights, axis, xp))
    return xp.astype(out, out_dtype, copy=False)


def ev_softmax_support(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """Boolean mask of the entries ev-softmax gives non-zero probability."""
    x = xp.astype(x, accumulation_dtype(x.dtype, xp), copy=False)
    valid, shifted, below = row_statistics(x, where, axis, xp)
    # A NaN row has NaN shifted scores and so no entry at or above its mean.
    return valid & ~below & (shifted == shifted)


def ev_softmax_jvp(probs: Array, tangent: Array, *, axis: int, xp: Namespace) -> Array:
    r"""Jacobian-vector product :math:`p \odot (t - \langle p, t\rangle)` (also the VJP)."""
    out_dtype = xp.result_type(probs, tangent)
    acc = accumulation_dtype(out_dtype, xp)
    probs = xp.astype(probs, acc, copy=False)
    tangent = xp.astype(tangent, acc, copy=False)
    inner = xp.sum(probs * tangent, axis=axis, keepdims=True)
    return xp.astype(probs * (tangent - inner), out_dtype, copy=False)
