r"""Array-API softmax and log-softmax with ``where`` masks.

.. math::

    p_k = \frac{e^{x_k}}{\sum_{l \in V} e^{x_l}} \quad (k \in V), \qquad p_k = 0 \quad (k \notin V)

over the valid entries :math:`V` of the row (``where`` true and not ``-inf``).
A row without valid entries gives zeros (``-inf`` from the log form).
"""

from __future__ import annotations

import math

from ._core import accumulation_dtype, cast_result
from ._lib._typing import Array, Namespace
from ._rows import finish, shifted_scores

__all__ = ["log_softmax", "softmax"]


def _exp_scores(x: Array, where: Array | None, axis: int, xp: Namespace) -> tuple[Array, ...]:
    """``(valid, shifted, bad, exp, total)``: see :func:`shifted_scores`; exp is 0 when excluded.

    ``total`` is the row sum of ``exp`` (at least 1 in rows with a valid entry, else set to 1).
    """
    valid, shifted, bad = shifted_scores(x, where, axis, xp)
    exp = xp.where(valid, xp.exp(shifted), 0.0)
    total = xp.sum(exp, axis=axis, keepdims=True)
    return valid, shifted, bad, exp, xp.where(total == 0.0, 1.0, total)


def softmax(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """Softmax over the valid entries of each row."""
    out_dtype = x.dtype
    x = xp.astype(x, accumulation_dtype(out_dtype, xp), copy=False)
    valid, _, bad, exp, total = _exp_scores(x, where, axis, xp)
    return finish(exp / total, valid, bad, out_dtype, xp)


def log_softmax(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """Log-softmax over the valid entries of each row (``-inf`` elsewhere)."""
    out_dtype = x.dtype
    x = xp.astype(x, accumulation_dtype(out_dtype, xp), copy=False)
    valid, shifted, bad, _, total = _exp_scores(x, where, axis, xp)
    out = xp.where(valid, shifted - xp.log(total), -math.inf)
    return cast_result(xp.where(bad, math.nan, out), out_dtype, xp)
