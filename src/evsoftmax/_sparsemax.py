r"""Array-API sparsemax: the Euclidean projection onto the simplex (Martins & Astudillo 2016).

.. math::

    \operatorname{sparsemax}(z) = \operatorname*{argmin}_{p \in \Delta} \lVert p - z \rVert^2
    = [z - \tau(z)]_+ ,

with the threshold :math:`\tau` such that the result sums to one. Sorting the
row in decreasing order, every prefix of length :math:`k` gives the candidate
:math:`\tau_k = (\sum_{j \le k} z_{(j)} - 1) / k`; each is a lower bound of
:math:`\tau` and the prefix that is the support attains it, so
:math:`\tau = \max_k \tau_k`. This needs one sort and one cumulative sum
(O(K log K)) and no gather, so it runs on every array-API backend.
"""

from __future__ import annotations

from ._core import accumulation_dtype
from ._lib._typing import Array, Namespace
from ._rows import clipped_scores, finish, positions

__all__ = ["sparsemax", "sparsemax_threshold"]


def sparsemax_threshold(z: Array, axis: int, xp: Namespace) -> Array:
    """The threshold :math:`\\tau` of each row of ``z`` (kept as a size-1 axis)."""
    ordered = xp.sort(z, axis=axis, descending=True)
    prefix = xp.cumulative_sum(ordered, axis=axis)
    return xp.max((prefix - 1.0) / positions(z, axis, xp), axis=axis, keepdims=True)


def sparsemax(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """Sparsemax over the valid entries of each row."""
    out_dtype = x.dtype
    x = xp.astype(x, accumulation_dtype(out_dtype, xp), copy=False)
    valid, z, bad = clipped_scores(x, where, axis, 1.0, xp)
    tau = sparsemax_threshold(z, axis, xp)
    return finish(xp.maximum(z - tau, 0.0), valid, bad, out_dtype, xp)
