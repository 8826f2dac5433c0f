"""A NumPy re-enactment of the CuPy adapter's CUDA kernels, for machines without a GPU.

Each function follows ``evsoftmax/adapters/cupy/kernels.py`` step by step:
the same launch geometry (``block_threads``, ``CACHE_ITEMS``), the same flat
indexing of row ``r`` (``(r // inner) * length * inner + r % inner``, stride
``inner``), the same per-thread order of entries, the same online statistics
``(max, count, shifted_sum)`` with the same rebasing, the same warp butterfly
(``__shfl_xor_sync`` with offsets 16, 8, 4, 2, 1) and cross-warp reduction,
and the same arithmetic in the accumulation dtype (float32 for half precision).
The tests compare it with the float64 references, so the algorithm the GPU
runs is verified even where no GPU is available. It differs from the device
only in the last bits (CUDA may fuse a multiply and add; ``expf`` is not NumPy's).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from evsoftmax.adapters.cupy import kernels

__all__ = [
    "bfloat16_from_bits",
    "bfloat16_to_bits",
    "emulate_forward",
    "emulate_jvp",
    "from_storage",
    "to_storage",
]

WARP = kernels.WARP
F = TypeVar("F", bound=Callable[..., Any])


def _like_the_device(function: F) -> F:
    """Run ``function`` with IEEE semantics and no warnings, as the GPU does arithmetic."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def bfloat16_to_bits(values: np.ndarray) -> np.ndarray:
    """The kernel's bfloat16 store: float32 -> uint16, rounding to nearest even."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return np.where(is_nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)


def bfloat16_from_bits(bits: np.ndarray) -> np.ndarray:
    """The kernel's bfloat16 load: uint16 -> float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@_like_the_device
def to_storage(values: Any, dtype: str) -> np.ndarray:
    """Values as the kernel's input buffer holds them (bfloat16 as uint16 bits)."""
    values = np.asarray(values)
    if dtype == "bfloat16":
        return bfloat16_to_bits(values.astype(np.float32))
    return values.astype(dtype)


def from_storage(buffer: np.ndarray, dtype: str) -> np.ndarray:
    """The kernel's load, as float64 for comparisons."""
    if dtype == "bfloat16":
        return bfloat16_from_bits(buffer).astype(np.float64)
    return np.asarray(buffer, dtype=np.float64)


def _load(buffer: np.ndarray, dtype: str) -> np.ndarray:
    acc = np.dtype(kernels.accumulation_dtype_name(dtype))
    if dtype == "bfloat16":
        return bfloat16_from_bits(buffer)
    return buffer.astype(acc)


def _store(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return bfloat16_to_bits(values)
    return values.astype(dtype)


def _geometry(shape: tuple[int, ...], axis: int) -> tuple[np.ndarray, int, int]:
    """Flat indices ``(rows, threads, slots)`` of each thread's entries, and ``threads``.

    Thread ``t`` visits entries ``k = t + j * threads`` for ``j = 0, 1, ...`` in
    that order (cached ones first, then streamed ones: the same sequence).
    Missing entries (``k >= length``) are -1.
    """
    axis %= len(shape)  # the adapter receives non-negative axes
    length = shape[axis]
    inner = math.prod(shape[axis + 1 :])
    rows = math.prod(shape) // length
    threads = kernels.block_threads(length)
    slots = math.ceil(length / threads)
    r = np.arange(rows)[:, None, None]
    k = np.arange(threads)[None, :, None] + np.arange(slots)[None, None, :] * threads
    start = (r // inner) * length * inner + r % inner
    return np.where(k < length, start + k * inner, -1), threads, slots


def _butterfly(fields: tuple[np.ndarray, ...], combine: Any) -> tuple[np.ndarray, ...]:
    """Lane 0's result of ``__shfl_xor_sync`` rounds over the last axis (32 lanes)."""
    for offset in (16, 8, 4, 2, 1):
        partner = np.arange(WARP) ^ offset
        fields = combine(fields, tuple(f[..., partner] for f in fields))
    return tuple(f[..., 0] for f in fields)


def _block_reduce(fields: tuple[np.ndarray, ...], empty: tuple[Any, ...], combine: Any) -> Any:
    """``ev_block_stats`` / ``ev_block_sum``: warps, then warp 0 over the warp results."""
    rows, threads = fields[0].shape
    warps = threads // WARP
    per_warp = _butterfly(tuple(f.reshape(rows, warps, WARP) for f in fields), combine)
    padded = []
    for f, e in zip(per_warp, empty, strict=True):
        full = np.full((rows, WARP), e, dtype=f.dtype)
        full[:, :warps] = f
        padded.append(full)
    return _butterfly(tuple(padded), combine)


def _rebase(s: np.ndarray, c: np.ndarray, m: np.ndarray, new_max: np.ndarray) -> np.ndarray:
    return np.where(c > 0, s + c.astype(s.dtype) * (m - new_max), s.dtype.type(0))


def _combine_stats(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    m = np.where(a[0] > b[0], a[0], b[0])
    return m, _rebase(a[1], a[2], a[0], m) + _rebase(b[1], b[2], b[0], m), a[2] + b[2], a[3] | b[3]


def _combine_sums(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return (a[0] + b[0],)


def _row_stats(v: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pass 1: each thread folds its entries in order (``ev_stats_push``), then the block."""
    acc = v.dtype.type
    m = np.full(v.shape[:2], -np.inf, dtype=v.dtype)
    s = np.zeros(v.shape[:2], dtype=v.dtype)
    c = np.zeros(v.shape[:2], dtype=np.int64)
    bad = np.zeros(v.shape[:2], dtype=bool)
    for j in range(v.shape[2]):
        x, ok = v[:, :, j], valid[:, :, j]
        is_bad = ok & (np.isnan(x) | (x == np.inf))
        bad |= is_bad
        push = ok & ~is_bad
        grow = push & (x > m)
        s = np.where(grow, _rebase(s, c, m, x), s)
        m = np.where(grow, x, m)
        s = np.where(push, s + (x - m), s)
        c = np.where(push, c + 1, c)
    return _block_reduce((m, s, c, bad), (-np.inf, acc(0), 0, False), _combine_stats)


@_like_the_device
def emulate_forward(
    x: np.ndarray,
    *,
    axis: int,
    epsilon: float,
    where: np.ndarray | None,
    mode: str,
    dtype: str,
) -> np.ndarray:
    """The forward kernel's output for ``x`` (any values; stored as ``dtype`` first).

    Returns float64 values (bool for ``mode="support"``) of ``x``'s shape.
    """
    shape = x.shape
    if x.size == 0:  # the adapter returns empty input before any launch
        return np.zeros(shape, dtype=bool if mode == "support" else np.float64)
    flat = to_storage(x, dtype).reshape(-1)
    mask = None if where is None else np.broadcast_to(where, shape).reshape(-1)
    index, _, _ = _geometry(shape, axis)
    present = index >= 0
    acc_dtype = np.dtype(kernels.accumulation_dtype_name(dtype))
    acc = acc_dtype.type
    v = np.where(present, _load(flat[np.maximum(index, 0)], dtype), acc(-np.inf)).astype(acc_dtype)
    valid = present & (v != -np.inf)
    if mask is not None:
        valid &= mask[np.maximum(index, 0)]

    row_max, shifted_sum, count, bad = _row_stats(v, valid)
    mean = (shifted_sum / count.astype(acc_dtype)).astype(acc_dtype)
    row_max, mean = row_max[:, None, None], mean[:, None, None]
    h, mh, mean = _threshold(v, valid, row_max, mean, count)
    # The weights relative to the support: 1 in it, eps / (1 + eps) outside.
    ratio = acc(epsilon / (1.0 + epsilon))
    log_ratio = acc(math.log(epsilon) - math.log1p(epsilon) if epsilon > 0 else -math.inf)
    s = v - row_max
    in_support = v * h - mh >= mean  # ev_in
    weight = np.where(in_support, acc(1), ratio) * np.exp(s)

    if mode == "support":
        out = valid & in_support
        fill: tuple[Any, Any] = (False, False)
    else:
        # Pass 2: per-thread sums in entry order, then the block.
        total = np.zeros(v.shape[:2], dtype=acc_dtype)
        for j in range(v.shape[2]):
            total = np.where(valid[:, :, j], total + weight[:, :, j], total)
        (total,) = _block_reduce((total,), (acc(0),), _combine_sums)
        total = total[:, None, None]
        if mode == "probs":
            out = np.where(valid, weight * (acc(1) / total), acc(0))
            fill = (acc(0), acc(np.nan))
        else:
            log_w = np.where(in_support, s, s + log_ratio)
            out = np.where(valid, log_w - np.log(total), acc(-np.inf))
            fill = (acc(-np.inf), acc(np.nan))
    empty = (count == 0)[:, None, None]
    out = np.where(bad[:, None, None], fill[1], np.where(empty, fill[0], out))
    return _scatter(out, index, shape, dtype, mode)


def _threshold(
    v: np.ndarray, valid: np.ndarray, row_max: np.ndarray, mean: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ev_threshold``: ``(h, mh, mean)``, rescaled where the shifted sum overflowed."""
    acc = v.dtype.type
    wide = mean == -np.inf
    k = np.ones(count.shape, dtype=np.int64)
    while ((2**k) < 2 * count).any():
        k = np.where((2**k) < 2 * count, k + 1, k)
    h = np.where(wide, np.ldexp(acc(1), -k)[:, None, None], acc(1)).astype(v.dtype)
    mh = (row_max * h).astype(v.dtype)
    t = (v * h - mh).astype(np.float64)
    # The extra pass, in double: per-thread sums in entry order, then the block (as for Z).
    total = np.zeros(v.shape[:2], dtype=np.float64)
    for j in range(v.shape[2]):
        total = np.where(valid[:, :, j], total + t[:, :, j], total)
    (total,) = _block_reduce((total,), (0.0,), _combine_sums)
    scaled_mean = (total / count.astype(np.float64)).astype(v.dtype)[:, None, None]
    return h, mh, np.where(wide, scaled_mean, mean)


def _scatter(
    values: np.ndarray, index: np.ndarray, shape: tuple[int, ...], dtype: str, mode: str
) -> np.ndarray:
    """Write each thread's results to their flat positions; return float64 (or bool)."""
    present = index >= 0
    if mode == "support":
        result = np.zeros(math.prod(shape), dtype=bool)
        result[index[present]] = values[present]
        return result.reshape(shape)
    stored = _store(values[present], dtype)
    result = np.zeros(math.prod(shape), dtype=np.float64)
    result[index[present]] = from_storage(stored, dtype)
    return result.reshape(shape)


@_like_the_device
def emulate_jvp(probs: np.ndarray, tangent: np.ndarray, *, axis: int, dtype: str) -> np.ndarray:
    """The JVP kernel's output ``p * (t - <p, t>)`` (float64 values of the stored result)."""
    shape = probs.shape
    index, _, _ = _geometry(shape, axis)
    present = index >= 0
    where_ok = np.maximum(index, 0)
    acc = np.dtype(kernels.accumulation_dtype_name(dtype)).type
    p = np.where(present, _load(to_storage(probs, dtype).reshape(-1)[where_ok], dtype), acc(0))
    t = np.where(present, _load(to_storage(tangent, dtype).reshape(-1)[where_ok], dtype), acc(0))
    p, t = p.astype(acc), t.astype(acc)
    dot = np.zeros(p.shape[:2], dtype=p.dtype)
    for j in range(p.shape[2]):
        dot = dot + p[:, :, j] * t[:, :, j]
    (dot,) = _block_reduce((dot,), (acc(0),), _combine_sums)
    return _scatter(p * (t - dot[:, None, None]), index, shape, dtype, "jvp")
