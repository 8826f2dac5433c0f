r"""Exact marginalization over a sparse distribution: evaluate ``fn`` only where it counts.

.. math::

    E_r = \sum_k p_{r,k}\, f(r, k)

over the rows ``r`` of ``probs`` (the batch, flattened in C order) and the
classes ``k`` (positions along ``axis``). With a sparse ``p`` (ev-softmax,
sparsemax, entmax) most terms are zero, so ``fn`` -- a decoder, say -- is
called once, on the ``(row, class)`` pairs of the non-zero entries only, and
the weighted results are summed back into their rows.

How the sum is formed (array-API only)
--------------------------------------
The pairs come from one ``nonzero`` of the flattened probabilities, so they are
in C order: the pairs of row ``r`` are the contiguous run
``[start_r, start_r + count_r)``. The terms ``p * fn(...)`` are gathered into a
``(rows, max count)`` table with one ``take`` and summed along it -- a plain
reduction per row (no scatter, which the array API lacks, and no cumulative
sum, which would cancel), whose gradient (the ``take``'s) is a scatter-add in
every autodiff framework. The table holds at most ``rows * max count`` terms:
the size of the sparse problem, not of the dense one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ._core import accumulation_dtype
from ._dispatch import implementation
from ._lib._compat import array_namespace, device
from ._lib._typing import Array, Namespace
from ._lib._validation import normalize_axis

__all__ = ["sparse_expectation"]


# -- validation at the public edge -------------------------------------------------------


def _validate_probs(probs: Any, xp: Namespace) -> Array:
    """``probs`` must be a real floating array with at least one dimension.

    A NumPy masked array's masked entries are probability 0 (never half-read).
    """
    if isinstance(probs, np.ma.MaskedArray):
        probs = probs.filled(0)
    if not xp.isdtype(probs.dtype, "real floating"):
        raise TypeError(f"probs must have a real floating dtype, got {probs.dtype}")
    if probs.ndim == 0:
        raise ValueError("probs must have at least one dimension, got a 0-d array")
    return probs


def _validate_fn(fn: Any) -> Callable[[Array, Array], Array]:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    return fn  # type: ignore[no-any-return]


def _validate_size(size: Any) -> int | None:
    """``size`` is None or a positive Python int (a static bound, never an array)."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be a positive int or None, got {type(size).__name__} {size!r}")
    if size < 1:
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    return size


def check_size(found: int, size: int | None) -> None:
    """Raise ``ValueError`` when ``found`` non-zeros exceed the bound ``size``."""
    if size is not None and found > size:
        raise ValueError(
            f"size={size} is smaller than the number of non-zero entries of probs ({found}); "
            f"pass size >= {found}"
        )


def check_values(values: Any, n_pairs: int, xp: Namespace) -> Array:
    """``fn``'s result: an array of ``xp`` with one leading entry per pair."""
    if not hasattr(values, "shape") or not hasattr(values, "dtype"):
        raise TypeError(f"fn must return an array, got {type(values).__name__}")
    if values.ndim == 0 or values.shape[0] != n_pairs:
        raise ValueError(
            f"fn must return an array of shape (n, ...) with n = {n_pairs} (one entry per "
            f"(row, class) pair it was given), got shape {tuple(values.shape)}"
        )
    return values


def padding(pairs: Array, found: int | Array, xp: Namespace) -> Array:
    """The pair that fills ``fn``'s input up to ``size``: the last non-zero one (shape ``(1,)``).

    Repeating a real pair, rather than some fixed entry that may have probability
    0, keeps ``fn`` on the support, where it is presumably finite: its padding
    values are multiplied by 0, and a NaN or inf there (even only in its
    derivative, e.g. ``log`` of a zero entry) would poison the sum or the gradient.
    Entry 0 when there is no non-zero entry at all.
    """
    last = xp.reshape(xp.maximum(xp.asarray(found, device=device(pairs)) - 1, 0), (1,))
    return xp.take(pairs, xp.astype(last, pairs.dtype)) if pairs.shape[0] else xp.zeros_like(last)


def terms_dtype(probs: Array, values: Array, xp: Namespace) -> tuple[Any, Any]:
    """``(result dtype, accumulation dtype)`` of ``probs * values``.

    Integer or boolean results of ``fn`` (counts, indicators) take ``probs``'
    dtype; half precision is accumulated in float32, as everywhere else.
    """
    if xp.isdtype(values.dtype, ("bool", "integral")):
        out = probs.dtype
    else:
        out = xp.result_type(probs.dtype, values.dtype)
    return out, accumulation_dtype(out, xp)


def flat_rows(probs: Array, axis: int, xp: Namespace) -> tuple[Array, tuple[int, ...], int]:
    """``probs`` as a ``(rows, classes)`` array, with the batch shape and the class count."""
    moved = xp.moveaxis(probs, axis, -1)
    batch = tuple(moved.shape[:-1])
    n_classes = moved.shape[-1]
    return xp.reshape(moved, (math.prod(batch), n_classes)), batch, n_classes


# -- array-API implementation (validated arguments) -------------------------------------


def _known_length(index: Array) -> Array:
    """``index`` with a known length (Dask leaves ``nonzero``'s unknown until computed)."""
    n = index.shape[0]
    if n is None or n != n:  # None (array API) or NaN (Dask)
        index.compute_chunk_sizes()  # the one place a Dask graph is evaluated here
    return index


def _row_table(counts: Array, xp: Namespace) -> tuple[Array, Array]:
    """Gather indices ``(rows, max count)`` of each row's run of pairs, and their validity.

    Invalid slots point at pair 0 (they exist only when some pair does) and are
    masked out after the gather.
    """
    width = int(xp.max(counts)) if counts.shape[0] else 0
    starts = xp.cumulative_sum(counts) - counts
    slots = xp.arange(width, dtype=counts.dtype, device=device(counts))
    valid = slots[None, :] < counts[:, None]
    return xp.where(valid, starts[:, None] + slots[None, :], 0), valid


def _sum_rows(terms: Array, counts: Array, xp: Namespace) -> Array:
    """Sum the C-ordered ``terms`` (pairs, ...) into one entry per row: (rows, ...)."""
    index, valid = _row_table(counts, xp)
    trailing = tuple(terms.shape[1:])
    if index.shape[1] == 0:
        # No pair at all: zeros, still connected to ``terms`` (and ``probs``) for autograd.
        zeros = xp.zeros((counts.shape[0], *trailing), dtype=terms.dtype, device=device(terms))
        return zeros + xp.sum(terms, axis=0)
    table = xp.take(terms, xp.reshape(index, (-1,)), axis=0)
    table = xp.reshape(table, tuple(index.shape) + trailing)
    valid = xp.reshape(valid, tuple(valid.shape) + (1,) * len(trailing))
    return xp.sum(xp.where(valid, table, xp.zeros_like(table)), axis=1)


def _sparse_expectation(
    probs: Array,
    fn: Callable[[Array, Array], Array],
    *,
    axis: int,
    size: int | None,
    xp: Namespace,
) -> Array:
    """The array-API implementation of :func:`sparse_expectation` (validated arguments)."""
    flat, batch, n_classes = flat_rows(probs, axis, xp)
    nonzero = flat != 0
    # C order of the flattened (rows, classes) array: row-major pairs, runs per row.
    (pairs,) = xp.nonzero(xp.reshape(nonzero, (-1,)))
    pairs = _known_length(pairs)
    found = int(pairs.shape[0])
    check_size(found, size)
    if size is not None and size > found:
        # fn sees exactly `size` pairs, as under jax.jit; the padding is never summed.
        pairs = xp.concat([pairs, xp.broadcast_to(padding(pairs, found, xp), (size - found,))])
    weights = xp.take(xp.reshape(flat, (-1,)), pairs[:found])
    rows, classes = pairs // max(n_classes, 1), pairs % max(n_classes, 1)
    values = check_values(fn(rows, classes), int(pairs.shape[0]), xp)[:found, ...]
    out_dtype, acc = terms_dtype(probs, values, xp)
    trailing = tuple(values.shape[1:])
    weights = xp.reshape(xp.astype(weights, acc), (found,) + (1,) * len(trailing))
    terms = weights * xp.astype(values, acc)
    counts = xp.sum(xp.astype(nonzero, pairs.dtype), axis=1)
    out = _sum_rows(terms, counts, xp)
    return xp.astype(xp.reshape(out, batch + trailing), out_dtype)


# -- the public function -----------------------------------------------------------------


def sparse_expectation(
    probs: Array,
    fn: Callable[[Array, Array], Array],
    /,
    *,
    axis: int = -1,
    size: int | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Exact expectation :math:`\sum_k p_k f(k)` per row, calling ``fn`` only where ``p != 0``.

    .. math::

        E_r = \sum_{k:\ p_{r,k} \ne 0} p_{r,k}\, f(r, k)

    This is the exact marginalization a sparse distribution makes cheap (Chen
    et al. 2021): with ``probs = ev_softmax(logits)`` an expensive ``fn`` (a
    decoder) runs on the support only, yet the result equals the dense sum
    over every class.

    Parameters
    ----------
    probs : array
        Probabilities (any real floating array; ``axis`` holds the classes).
        The other axes are the batch, flattened in C order into rows.
    fn : callable
        ``fn(rows, classes) -> values``, called exactly **once** with two
        integer arrays of equal length ``n``: the row (flattened batch index,
        C order) and the class (index along ``axis``) of every non-zero entry
        of ``probs``, in C order. It returns an array of shape ``(n, ...)``;
        its trailing dimensions are the trailing dimensions of the result.
        With no non-zero entry it is still called, with ``n = 0`` (or
        ``size``) pairs.
    axis : int, default -1
        The class axis.
    size : int, optional
        A static upper bound on the number of non-zero entries, needed under
        ``jax.jit`` (where shapes must be static). ``fn`` then receives exactly
        ``size`` pairs; the ones past the true count repeat the last non-zero
        pair (so ``fn`` never sees a zero-probability pair when there is a
        non-zero one) and their results are discarded. When the non-zeros are known (eagerly,
        on every library) and exceed ``size``: ``ValueError``. Under
        ``jax.jit`` they cannot be checked, and the rows whose terms did not fit
        are NaN (the others exact): a term is never silently dropped.
    xp : namespace, optional
        The array namespace; inferred from ``probs`` when omitted.

    Returns
    -------
    array
        Shape ``batch + values.shape[1:]`` (the shape of ``probs`` without
        ``axis``, then ``fn``'s trailing dimensions), dtype
        ``result_type(probs, values)`` (``probs``' dtype for integer or boolean
        values; half precision is accumulated in float32). A row whose
        probabilities are all zero gives 0.

    Notes
    -----
    The pairs are the entries with ``probs != 0``: for probabilities that is
    ``probs > 0``, and a NaN entry is a term too, so it makes its row NaN as in
    the dense sum. The masked entries of a NumPy masked array count as 0.

    Gradients flow into ``probs`` and through ``fn`` (torch autograd, JAX).
    The gradient with respect to an evaluated ``probs[r, k]`` is ``f(r, k)``;
    entries that are 0 get gradient 0, because ``fn`` is not evaluated there.
    That is exact for whatever produced ``probs`` by a map whose Jacobian
    vanishes on zero probabilities -- ``ev_softmax`` (``epsilon=0``),
    ``sparsemax``, ``entmax15`` -- so the gradient with respect to the logits,
    :math:`p_j (f_j - \sum_k p_k f_k)` for ev-softmax, is the dense one.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> probs = evs.ev_softmax(np.array([[0.4, 1.4, -0.8], [0.0, 0.0, 3.0]]))
    >>> calls = []
    >>> def decoder(rows, classes):
    ...     calls.append(len(rows))
    ...     return 10.0 * classes + rows  # stands in for an expensive network
    >>> evs.sparse_expectation(probs, decoder).round(3)
    array([ 7.311, 21.   ])
    >>> calls  # one call, on the 3 non-zero entries of 6
    [3]
    """
    if not hasattr(probs, "shape") or not hasattr(probs, "dtype"):
        # Before inferring the namespace, whose own error would not name the argument.
        raise TypeError(f"probs must be an array, got {type(probs).__name__}")
    xp = array_namespace(probs) if xp is None else xp
    probs = _validate_probs(probs, xp)
    fn = _validate_fn(fn)
    axis = normalize_axis(axis, probs.ndim)
    size = _validate_size(size)
    run = implementation("sparse_expectation", xp, _sparse_expectation)
    return run(probs, fn, axis=axis, size=size, xp=xp)  # type: ignore[no-any-return]
