"""The shared front half of every public normalizer: infer, validate, short-circuit."""

from __future__ import annotations

from typing import Any

from ._compat import device
from ._typing import Array, Namespace
from ._validation import (
    namespace_of,
    normalize_axis,
    split_masked,
    validate_input,
    validate_where,
)

__all__ = ["Prepared", "empty_like", "is_empty", "prepare"]

Prepared = tuple[Array, int, "Array | None", Namespace]


def prepare(x: Any, axis: Any, where: Any, xp: Namespace | None, name: str = "x") -> Prepared:
    """Infer the namespace and return ``(x, axis, where, xp)`` validated and normalized.

    A NumPy masked array is read as its data with its mask as ``where=False``
    (combined with ``where``); the result is then a plain array.
    """
    x, where = split_masked(x, where)
    xp = namespace_of((name, x)) if xp is None else xp
    x = validate_input(x, xp, name)
    axis = normalize_axis(axis, x.ndim)
    return x, axis, validate_where(where, x, xp), xp


def is_empty(x: Array) -> bool:
    """Whether ``x`` has no elements (a zero-length axis or an empty batch)."""
    # Unknown sizes (None, or NaN in Dask) are not zero.
    return any(n == 0 for n in x.shape if n is not None)


def empty_like(x: Array, xp: Namespace, dtype: Any = None) -> Array:
    """A new empty array of ``x``'s shape, on its device, of ``dtype`` (default ``x.dtype``)."""
    return xp.zeros(x.shape, dtype=x.dtype if dtype is None else dtype, device=device(x))
