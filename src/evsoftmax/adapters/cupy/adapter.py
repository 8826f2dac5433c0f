"""CuPy adapter: ev-softmax, its logarithm, support and JVP as fused CUDA kernels.

Imported by the dispatcher only when a CuPy array reaches a public function.
Each call launches one kernel with a thread block per row (see
``kernels`` for the CUDA source and the algorithm). Kernels are built
once per (dtype, variant) and cached; CuPy compiles them on first launch and
keeps the binaries in its on-disk cache. Input the kernels do not cover (other
dtypes, more than 2**31 - 1 rows) falls back to the array-API core.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import cupy
import numpy as np

from ... import _core
from ..._lib._typing import Array, Namespace
from . import kernels

__all__ = ["ev_softmax", "ev_softmax_jvp", "ev_softmax_support", "log_ev_softmax"]


@functools.cache
def forward_kernel(dtype: str, mode: str, masked: bool) -> Any:
    """The forward ``cupy.RawKernel`` for one storage dtype and variant (built once)."""
    return cupy.RawKernel(kernels.forward_source(dtype, mode, masked), kernels.FORWARD_KERNEL)


@functools.cache
def jvp_kernel(dtype: str) -> Any:
    """The JVP ``cupy.RawKernel`` for one storage dtype (built once)."""
    return cupy.RawKernel(kernels.jvp_source(dtype), kernels.JVP_KERNEL)


def _rows(x: Array, axis: int) -> tuple[Array, int, int, int]:
    """``x`` C-contiguous, with its row count, row length and the stride between entries."""
    x = cupy.ascontiguousarray(x)
    length = int(x.shape[axis])
    inner = math.prod(int(n) for n in x.shape[axis + 1 :])
    return x, x.size // length, length, inner


# The kernels give each row a block of a one-dimensional grid.
_MAX_ROWS = 2**31 - 1


def _launch(kernel: Any, rows: int, length: int, args: tuple[Any, ...]) -> None:
    kernel((rows,), (kernels.block_threads(length),), args)


def _supported(dtype: Any, size: int, length: int) -> bool:
    """Whether a kernel covers arrays of ``dtype`` with ``size`` entries in rows of ``length``."""
    return str(dtype) in kernels.DTYPES and size // length <= _MAX_ROWS


def _forward(x: Array, axis: int, epsilon: float, where: Array | None, mode: str) -> Array | None:
    """Run the forward kernel in ``mode``; None when no kernel covers ``x``."""
    dtype = str(x.dtype)
    if not _supported(dtype, x.size, x.shape[axis]):
        return None
    acc = np.dtype(kernels.accumulation_dtype_name(dtype)).type
    with x.device:
        x, rows, length, inner = _rows(x, axis)
        mask = x if where is None else cupy.ascontiguousarray(cupy.broadcast_to(where, x.shape))
        out = cupy.empty(x.shape, dtype=cupy.bool_ if mode == "support" else x.dtype)
        ratio, log_ratio = _core.off_support_weight(epsilon)
        scalars = (acc(ratio), acc(log_ratio))
        args = (x, mask, out, np.int64(length), np.int64(inner), *scalars)
        _launch(forward_kernel(dtype, mode, where is not None), rows, length, args)
    return out


def ev_softmax(x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace) -> Array:
    """ev-softmax of a CuPy array, in one fused kernel (see :func:`evsoftmax.ev_softmax`)."""
    out = _forward(x, axis, epsilon, where, "probs")
    if out is None:
        return _core.ev_softmax(x, axis=axis, epsilon=epsilon, where=where, xp=xp)
    return out


def log_ev_softmax(
    x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace
) -> Array:
    """Logarithm of ev-softmax of a CuPy array, in one fused kernel."""
    out = _forward(x, axis, epsilon, where, "log_probs")
    if out is None:
        return _core.log_ev_softmax(x, axis=axis, epsilon=epsilon, where=where, xp=xp)
    return out


def ev_softmax_support(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """Support mask of ev-softmax of a CuPy array, with the forward kernel's statistics."""
    out = _forward(x, axis, 0.0, where, "support")
    if out is None:
        return _core.ev_softmax_support(x, axis=axis, where=where, xp=xp)
    return out


def ev_softmax_jvp(probs: Array, tangent: Array, *, axis: int, xp: Namespace) -> Array:
    """``p * (t - <p, t>)`` of CuPy arrays, in one fused kernel."""
    dtype = cupy.result_type(probs, tangent)
    if not _supported(dtype, probs.size, probs.shape[axis]):
        return _core.ev_softmax_jvp(probs, tangent, axis=axis, xp=xp)
    with probs.device:
        probs, rows, length, inner = _rows(probs.astype(dtype, copy=False), axis)
        tangent = cupy.ascontiguousarray(tangent.astype(dtype, copy=False))
        out = cupy.empty(probs.shape, dtype=dtype)
        args = (probs, tangent, out, np.int64(length), np.int64(inner))
        _launch(jvp_kernel(str(dtype)), rows, length, args)
    return out
