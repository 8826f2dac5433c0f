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

The code follows the numerical recipe of DESIGN section 4 (docs/math.md), which
every execution path transcribes: the threshold is the sum of the shifted
scores divided once by the valid count; the weights are divided by
:math:`1 + \varepsilon` (1 on the support, :math:`\varepsilon/(1+\varepsilon)`
off it), so any finite :math:`\varepsilon` gives finite probabilities; a row
whose shift overflows gets the exact mean's support (:func:`row_statistics`).
"""

from __future__ import annotations

import math

from ._lib._typing import Array, Namespace

__all__ = [
    "accumulation_dtype",
    "cast_result",
    "ev_softmax",
    "ev_softmax_jvp",
    "ev_softmax_support",
    "log_ev_softmax",
    "off_support_weight",
    "row_statistics",
]


def accumulation_dtype(dtype: object, xp: Namespace) -> object:
    """The dtype to compute in: float32 for half precision, else ``dtype`` itself."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def off_support_weight(epsilon: float) -> tuple[float, float]:
    r"""Weight of the entries outside the support relative to those inside, and its log.

    That is :math:`\varepsilon / (1 + \varepsilon)` and
    :math:`\log\varepsilon - \log(1 + \varepsilon)` (``0`` and ``-inf`` for
    :math:`\varepsilon = 0`). Dividing the weights ``1 + eps`` (support) and
    ``eps`` (outside) by ``1 + eps`` leaves the probabilities unchanged and keeps
    every weight in ``[0, 1]``, so any finite ``epsilon`` (``1e300`` included)
    gives finite probabilities.
    """
    if epsilon > 0.0:
        return epsilon / (1.0 + epsilon), math.log(epsilon) - math.log1p(epsilon)
    return 0.0, -math.inf


def _valid_entries(x: Array, where: Array | None, xp: Namespace) -> Array:
    """Entries that take part in the row: ``where`` is true and the value is not -inf."""
    valid = x != -math.inf
    return valid if where is None else valid & where


def _support_scale(hi: Array, lo: Array, count: Array, dtype: object, xp: Namespace) -> Array:
    """Per row: 1, or the power of two ``2**-k`` when the shift or its sum could overflow.

    ``hi`` and ``lo`` are the finite valid row maximum and minimum, ``count``
    (>= 1) the number of valid entries. The shifted scores ``x - hi`` and their
    sum can overflow only if ``count * (hi - lo)`` exceeds the dtype's maximum;
    such rows are scaled by ``2**-k`` with ``2**k >= 2 * count`` (``k`` rounded
    up twice over), so that no difference and no partial sum of the scaled
    scores can overflow. Multiplying by a power of two is exact, so the scaled
    comparison gives the exact mean's support (DESIGN section 4). The test
    itself runs on quarter-scaled values so that it cannot overflow either.
    """
    big = xp.finfo(dtype).max
    risky = hi * 0.25 - lo * 0.25 > (big * 0.125) / count
    k = xp.ceil(xp.log2(count)) + 2.0
    return xp.where(risky, xp.pow(xp.full_like(k, 0.5), k), 1.0)


def _sum_dtype(dtype: object, xp: Namespace) -> object:
    """The dtype row sums are taken in: float64 for float32 where the namespace has it.

    JAX without ``jax_enable_x64`` has no float64 (asking for it warns): float32 then.
    """
    if dtype != xp.float32:
        return dtype
    info = getattr(xp, "__array_namespace_info__", None)
    if info is not None and "float64" not in info().dtypes(kind="real floating"):
        return dtype
    return xp.float64


def _row_mean(values: Array, count: Array, axis: int, xp: Namespace) -> Array:
    """The row sums of ``values`` divided once by ``count``, rounded to ``values``' dtype.

    The sum is taken in ``count``'s dtype (:func:`_sum_dtype`: float64 for float32)
    and the quotient rounded once, as the compiled kernel does, so that a mean
    that float32 represents exactly is found exactly.
    """
    total = xp.sum(values, axis=axis, keepdims=True, dtype=count.dtype)
    return xp.astype(total / count, values.dtype, copy=False)


def row_statistics(
    x: Array, where: Array | None, axis: int, xp: Namespace
) -> tuple[Array, Array, Array, Array]:
    """Return ``(valid, shifted, support, bad)`` for the rows of ``x`` along ``axis``.

    This is the numerical recipe of DESIGN section 4, which every execution path
    follows: ``shifted`` is ``x`` minus the maximum over the valid entries of its
    row (0 on invalid entries, ``-inf`` where the true difference is below the
    dtype's range); ``support`` marks the valid entries whose shifted score is
    ``>=`` the threshold, the *sum* of the row's shifted scores divided once by
    its valid count (never a sum of ``x / K``: an entry equal to an exactly
    representable mean stays in). Every shifted score is ``<= 0``, so the
    threshold is ``<= 0`` under any rounding and the row maximum is always in.
    ``bad`` marks the rows holding a valid NaN or +inf (their results are NaN);
    their entries are shifted by 0 so that no ``inf - inf`` is ever formed.
    """
    valid = _valid_entries(x, where, xp)
    hi = xp.max(xp.where(valid, x, -math.inf), axis=axis, keepdims=True)
    lo = xp.min(xp.where(valid, x, math.inf), axis=axis, keepdims=True)
    bad = xp.isnan(hi) | (hi == math.inf)
    # Rows without valid entries (max -inf) and bad rows are shifted by 0.
    ordinary = ~bad & (hi != -math.inf)
    hi = xp.where(ordinary, hi, 0.0)
    lo = xp.where(ordinary, lo, 0.0)
    count = xp.sum(xp.astype(valid, _sum_dtype(x.dtype, xp)), axis=axis, keepdims=True)
    count = xp.where(count == 0.0, 1.0, count)
    kept = valid & ~bad
    scale = _support_scale(hi, lo, xp.astype(count, x.dtype), x.dtype, xp)
    scaled = xp.where(kept, x, hi) * scale - hi * scale
    threshold = _row_mean(scaled, count, axis, xp)
    support = kept & (scaled >= threshold)
    # Undo the scaling exactly; a difference beyond the dtype's range is -inf
    # (its weight exp(-inf) = 0), reached without an overflowing operation.
    floor = -xp.finfo(x.dtype).max * scale
    shifted = xp.where(scaled < floor, -math.inf, xp.maximum(scaled, floor) / scale)
    return valid, shifted, support, bad


def _normalizer(weights: Array, axis: int, xp: Namespace) -> Array:
    """Row sums of ``weights``, with empty rows (sum 0) mapped to 1."""
    total = xp.sum(weights, axis=axis, keepdims=True)
    return xp.where(total == 0.0, 1.0, total)


def _weights(shifted: Array, valid: Array, support: Array, epsilon: float, xp: Namespace) -> Array:
    """Unnormalized probabilities: ``exp(shifted)``, times ``eps / (1 + eps)`` off the support."""
    exp = xp.where(valid, xp.exp(shifted), 0.0)
    ratio = off_support_weight(epsilon)[0]
    return xp.where(support, exp, ratio * exp)


def cast_result(out: Array, dtype: object, xp: Namespace) -> Array:
    """Cast ``out`` (accumulation dtype, ``<= 0`` or NaN) to ``dtype`` without an overflow.

    Values below the half-precision range round to ``-inf`` anyway; mapping them
    first keeps NumPy from warning about an overflowing cast.
    """
    if dtype != out.dtype:
        info = xp.finfo(dtype)
        big, eps = float(info.max), float(info.eps)
        # The midpoint between the largest finite value, (2 - eps) * 2**e, and 2**(e + 1);
        # every factor is a short binary number, so this is exact.
        limit = (2.0 - eps / 2.0) * (big / (2.0 - eps))
        out = xp.where(out <= -limit, -math.inf, out)
    return xp.astype(out, dtype, copy=False)


def ev_softmax(x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace) -> Array:
    """ev-softmax (``epsilon == 0``) or its training-time family (``epsilon > 0``)."""
    out_dtype = x.dtype
    x = xp.astype(x, accumulation_dtype(out_dtype, xp), copy=False)
    valid, shifted, support, bad = row_statistics(x, where, axis, xp)
    weights = _weights(shifted, valid, support, epsilon, xp)
    probs = xp.where(bad, math.nan, weights / _normalizer(weights, axis, xp))
    return xp.astype(probs, out_dtype, copy=False)


def log_ev_softmax(
    x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace
) -> Array:
    """Logarithm of :func:`ev_softmax`, computed in log space (finite for ``epsilon > 0``)."""
    out_dtype = x.dtype
    x = xp.astype(x, accumulation_dtype(out_dtype, xp), copy=False)
    valid, shifted, support, bad = row_statistics(x, where, axis, xp)
    weights = _weights(shifted, valid, support, epsilon, xp)
    log_ratio = off_support_weight(epsilon)[1]
    log_weights = xp.where(support, shifted, shifted + log_ratio)
    log_weights = xp.where(valid, log_weights, -math.inf)
    out = xp.where(bad, math.nan, log_weights - xp.log(_normalizer(weights, axis, xp)))
    return cast_result(out, out_dtype, xp)


def ev_softmax_support(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """Boolean mask of the entries ev-softmax gives non-zero probability."""
    x = xp.astype(x, accumulation_dtype(x.dtype, xp), copy=False)
    return row_statistics(x, where, axis, xp)[2]


def ev_softmax_jvp(probs: Array, tangent: Array, *, axis: int, xp: Namespace) -> Array:
    r"""Jacobian-vector product :math:`p \odot (t - \langle p, t\rangle)` (also the VJP)."""
    out_dtype = xp.result_type(probs, tangent)
    acc = accumulation_dtype(out_dtype, xp)
    probs = xp.astype(probs, acc, copy=False)
    tangent = xp.astype(tangent, acc, copy=False)
    inner = xp.sum(probs * tangent, axis=axis, keepdims=True)
    return xp.astype(probs * (tangent - inner), out_dtype, copy=False)
