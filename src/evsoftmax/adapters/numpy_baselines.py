"""NumPy fast paths for the baselines: the compiled kernels of :mod:`evsoftmax._ext`.

Registered in ``_dispatch.ADAPTER_MODULES["numpy"]``. For float32/float64
arrays, ``sparsemax``, ``entmax15`` and ``entmax_bisect`` run on contiguous
rows along ``axis`` in the C kernels (on the calling thread, as NumPy's own
functions run), which follow every rule of the array-API versions, special
rows included; a ``where`` mask is applied first as ``-inf``. Other dtypes,
or a missing build, take the array-API versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _entmax, _ext, _sparsemax
from .._lib._typing import Array, Namespace

__all__ = ["entmax15", "entmax_bisect", "sparsemax"]


def _use_kernel(x: Array, where: Array | None) -> bool:
    plain = isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64) and x.size > 0
    mask_ok = where is None or isinstance(where, np.ndarray)
    return plain and mask_ok and _ext.baseline_kernels() is not None


def _kernel(name: str, x: np.ndarray, where: np.ndarray | None, axis: int, **params: Any) -> Any:
    """The kernel of ``name`` along ``axis``; a mask is applied first, as ``-inf``."""
    if where is not None:
        x = np.where(where, x, -np.inf)
    moved = np.moveaxis(x, axis, -1)
    rows = np.ascontiguousarray(moved).reshape(-1, x.shape[axis])
    out = np.empty_like(rows)
    shape = {"rows": rows.shape[0], "length": rows.shape[1], "itemsize": rows.itemsize}
    _ext.baseline_rows(name, rows.ctypes.data, out.ctypes.data, threads=1, **shape, **params)
    return np.ascontiguousarray(np.moveaxis(out.reshape(moved.shape), -1, axis))


def _dispatch(
    name: str,
    fallback: Callable[..., Array],
    x: Array,
    where: Array | None,
    xp: Namespace,
    axis: int,
    **params: Any,
) -> Array:
    if _use_kernel(x, where):
        return _kernel(name, x, where, axis, **params)
    return fallback(x, axis=axis, where=where, xp=xp, **params)


def sparsemax(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """Sparsemax with the compiled kernel (module docstring)."""
    return _dispatch("sparsemax", _sparsemax.sparsemax, x, where, xp, axis)


def entmax15(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """1.5-entmax with the compiled kernel (module docstring)."""
    return _dispatch("entmax15", _entmax.entmax15, x, where, xp, axis)


def entmax_bisect(
    x: Array, *, alpha: float, axis: int, n_iter: int, where: Array | None, xp: Namespace
) -> Array:
    """alpha-entmax by bisection with the compiled kernel (module docstring)."""
    params = {"alpha": alpha, "n_iter": n_iter}
    return _dispatch("entmax_bisect", _entmax.entmax_bisect, x, where, xp, axis, **params)
