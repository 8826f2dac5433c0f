"""Dask: rows that one chunk holds whole are normalized by that chunk's own library.

Every row-wise function normalizes each row on its own, so when the normalized
axis lies in one chunk (``x.numblocks[axis] == 1``, Dask's default for arrays
that fit one chunk) each block is a stack of whole rows: ``map_blocks`` runs
the implementation of the blocks' library (NumPy's, with the compiled kernel,
or CuPy's) on it. The graph then has one task a block, where the array-API core,
written for any namespace, builds a graph of about fifty element-wise and
reduction layers, whose building alone took far longer than the blocks' own
code on small arrays. Rows split across chunks still take the core, which
reduces across the chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import dask.array as da

from .._lib._compat import array_namespace

__all__ = ["holds_whole_rows", "map_rows"]


def holds_whole_rows(x: Any, axis: int, where: Any) -> bool:
    """Whether every block of ``x`` holds whole rows along ``axis`` (and ``where`` can follow)."""
    if not isinstance(x, da.Array) or x.numblocks[axis] != 1:
        return False
    # A mask is broadcast to the blocks' chunks, which must then be known.
    return where is None or not any(math.isnan(n) for n in x.shape)


def map_rows(
    impl: Callable[[Any], Callable[..., Any]],
    x: da.Array,
    *,
    dtype: Any,
    where: Any,
    **kwargs: Any,
) -> da.Array:
    """``impl(block_xp)`` on each block of ``x`` (whole rows), with ``where`` cut alike.

    ``impl`` maps the blocks' namespace to the function to run (the dispatcher's
    choice for that library); ``dtype`` is the result's dtype.
    """
    block_xp = array_namespace(x._meta)
    run = impl(block_xp)

    def rows(block: Any, mask: Any = None) -> Any:
        return run(block, xp=block_xp, where=mask, **kwargs)

    meta = x._meta.astype(dtype)  # the result's array type and dtype
    if where is None:
        return da.map_blocks(rows, x, meta=meta)
    # Broadcast in the mask's own chunks, then cut as x is (a mask may be chunked otherwise).
    mask = da.broadcast_to(da.asarray(where), x.shape).rechunk(x.chunks)
    return da.map_blocks(rows, x, mask, meta=meta)
