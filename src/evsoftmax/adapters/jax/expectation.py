"""JAX adapter for ``sparse_expectation``: static shapes under ``jax.jit`` through ``size``.

Under ``jit`` the number of non-zero probabilities is not known while tracing,
so the pairs come from ``jnp.nonzero(..., size=n)`` with a static ``n``: the
caller's ``size``, or eagerly the true count. ``nonzero`` keeps the *first*
``n`` pairs in C order, so when the true count exceeds ``size`` (checkable
only under tracing) exactly the rows whose run of pairs ends past ``n`` lost
terms; they are set to NaN rather than returned short (DESIGN §3: never a
silently dropped term). The weighted terms are summed into their rows with
``jax.ops.segment_sum``, a scatter-add whose transpose is a gather, so
``grad`` flows into ``probs`` and through ``fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ..._expectation import check_size, check_values, flat_rows, padding, terms_dtype
from ..._lib._typing import Array, Namespace

__all__ = ["sparse_expectation"]

_TRACED = (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError)


def _concrete_count(total: Array) -> int | None:
    """The number of non-zeros when it is known (eagerly, also under ``grad``), else None."""
    try:
        return int(total)
    except _TRACED:
        return None


def _pair_count(total: Array, size: int | None) -> int:
    """The static number of pairs ``fn`` is called on; raise where a bound is missing or short."""
    found = _concrete_count(total)
    if found is None:
        if size is None:
            raise ValueError(
                "size must be given under jax.jit (a static upper bound on the number of "
                "non-zero entries of probs), got size=None"
            )
        return size
    check_size(found, size)
    return found if size is None else size


def sparse_expectation(
    probs: Array,
    fn: Callable[[Array, Array], Array],
    *,
    axis: int,
    size: int | None,
    xp: Namespace,
) -> Array:
    """``sparse_expectation`` of validated arguments, ``jax.jit``-ready when ``size`` is given."""
    flat, batch, n_classes = flat_rows(probs, axis, jnp)
    nonzero = flat != 0
    counts = jnp.sum(nonzero, axis=1)
    total = jnp.sum(counts)
    n = _pair_count(total, size)
    (pairs,) = jnp.nonzero(jnp.reshape(nonzero, (-1,)), size=n, fill_value=0)
    kept = jnp.arange(n) < total
    pairs = jnp.where(kept, pairs, padding(pairs, jnp.minimum(total, n), jnp))
    rows, classes = pairs // max(n_classes, 1), pairs % max(n_classes, 1)
    values = check_values(fn(rows, classes), n, jnp)
    out_dtype, acc = terms_dtype(probs, values, jnp)
    trailing = tuple(values.shape[1:])
    # Slots past the true count repeat a real pair: zero their values so that
    # neither the sum nor the gradient counts that pair twice.
    kept = jnp.reshape(kept, (n,) + (1,) * len(trailing))
    weights = jnp.reshape(jnp.take(jnp.reshape(flat, (-1,)), pairs), kept.shape)
    terms = weights.astype(acc) * jnp.where(kept, values.astype(acc), 0)
    out = jax.ops.segment_sum(terms, rows, num_segments=math.prod(batch))
    # Rows with a pair past slot n lost terms (only under jit: eagerly that raised).
    lost = (counts > 0) & (jnp.cumulative_sum(counts) > n)
    out = jnp.where(jnp.reshape(lost, lost.shape + (1,) * len(trailing)), jnp.nan, out)
    return jnp.reshape(out, batch + trailing).astype(out_dtype)
