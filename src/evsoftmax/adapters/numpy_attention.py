"""NumPy ev-attention: each block's probabilities from the compiled row kernel.

Registered in ``_dispatch.ADAPTER_MODULES["numpy"]``. The array-API version
(:func:`evsoftmax._attention.attention`) builds about eight block-sized
temporaries to apply the recipe to a block of score rows; here, for
float32/float64 ``numpy.ndarray`` inputs with the kernel built, a block is one
matmul, its masked scores set to ``-inf`` in place, the fused row kernel of
:mod:`evsoftmax._ext` (ev-softmax over each row's finite entries, every
special row by DESIGN §4) and a second matmul, as the torch CPU path does.
Memory stays O(L + S) per (batch, head): one block of scores and its
probabilities. The threshold is the kernel's mean of the formed valid scores,
the same number as the key identity up to rounding. Support sizes
(``return_support=True``), other dtypes and a missing build take the
array-API version.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _attention, _ext
from .._lib._typing import Array, Namespace

__all__ = ["ev_attention"]


def _applies(arrays: tuple[Any, ...], mask: Any, return_support: bool) -> bool:
    plain = (
        all(type(a) is np.ndarray and a.dtype in (np.float32, np.float64) for a in arrays)
        and len({a.dtype for a in arrays}) == 1
    )
    return plain and not return_support and (mask is None or type(mask) is np.ndarray)


def _block_probabilities(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """ev-softmax of each row of the C-contiguous ``scores`` over its finite entries."""
    probs = np.empty_like(scores)
    _ext.ev_softmax_rows(
        scores.ctypes.data,
        probs.ctypes.data,
        rows=scores.size // scores.shape[-1],
        length=scores.shape[-1],
        itemsize=scores.itemsize,
        epsilon=epsilon,
        log=False,
        threads=1,
    )
    return probs


def ev_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None,
    is_causal: bool,
    scale: float,
    epsilon: float,
    return_support: bool,
    xp: Namespace,
) -> Any:
    """The dispatcher's entry: ev-attention of validated arrays (see the module docstring)."""
    if not (_ext.available() and _applies((query, key, value), mask, return_support)):
        return _attention.attention(
            query,
            key,
            value,
            mask=mask,
            is_causal=is_causal,
            scale=scale,
            epsilon=epsilon,
            return_support=return_support,
            xp=xp,
        )
    length, keys = query.shape[-2], key.shape[-2]
    batch = np.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    if mask is not None:
        while mask.ndim < 2:
            mask = mask[None, ...]
        if mask.dtype != np.bool_:
            mask = mask.astype(query.dtype, copy=False)
    kt = np.swapaxes(key, -1, -2)
    out = np.empty((*batch, length, value.shape[-1]), dtype=query.dtype)
    step = _attention.block_rows(length, keys, math.prod(batch), _attention.KERNEL_BLOCK_SCALE)
    for i0 in range(0, length, step):
        i1 = min(length, i0 + step)
        scores = np.matmul(query[..., i0:i1, :], kt)
        if scores.shape != (*batch, i1 - i0, keys):  # a key batch wider than the query's
            scores = np.broadcast_to(scores, (*batch, i1 - i0, keys)).copy()
        scores *= scores.dtype.type(scale)
        if mask is not None:
            block = mask[..., i0:i1, :] if mask.shape[-2] != 1 else mask
            if block.dtype == np.bool_:
                np.copyto(scores, -np.inf, where=~block)
            else:
                scores += block
        if is_causal:
            future = np.arange(keys)[None, :] > np.arange(i0, i1)[:, None]
            np.copyto(scores, -np.inf, where=future)
        out[..., i0:i1, :] = np.matmul(_block_probabilities(scores, epsilon), value)
    return out
