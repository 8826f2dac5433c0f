"""NumPy fast paths for float32/float64 input.

The array-API core builds about ten full-size temporaries. For float32/float64
input this adapter uses, in order of preference:

* the compiled kernel of :mod:`evsoftmax._ext` (one fused pass per row, on the
  calling thread, as NumPy's own functions run), which follows every rule of
  the core, special rows included, and reads any axis, layout and ``where``
  mask (an entry it masks counts as ``-inf``) in place: the output is the one
  full-size buffer;
* without it, for unmasked input, in-place arithmetic on one fresh buffer and
  one boolean mask. The check costs one reduction over the per-row means: a
  row holding -inf, NaN or +inf has a non-finite mean of its shifted scores,
  and then the whole input goes to the core, which handles every rule.
"""

from __future__ import annotations

import numpy as np

from .. import _core, _ext
from .._lib._typing import Array, Namespace

__all__ = ["ev_softmax", "log_ev_softmax"]


def _shifted_and_support(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``x - rowmax`` (a new buffer) and the entries at or above their row mean, or None.

    The threshold follows the core (DESIGN section 4): the sum of the shifted
    scores (float32 summed in float64), divided once by the row length.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # -inf - -inf, overflow: to the core
        shifted = np.subtract(x, np.max(x, axis=axis, keepdims=True))
        total = np.sum(shifted, axis=axis, keepdims=True, dtype=np.float64)
    mean = (total / x.shape[axis]).astype(x.dtype)
    if not np.isfinite(mean).all():
        return None
    return shifted, np.greater_equal(shifted, mean)


def _weights(support: np.ndarray, epsilon: float, dtype: np.dtype[np.floating]) -> np.ndarray:
    """The weights relative to the support: 1 in it, ``eps / (1 + eps)`` outside (a new array)."""
    if epsilon == 0.0:
        return support.astype(dtype)
    ratio = _core.off_support_weight(epsilon)[0]
    weights: np.ndarray = np.where(support, dtype.type(1.0), dtype.type(ratio))
    return weights


def _log_weights(support: np.ndarray, epsilon: float, dtype: np.dtype[np.floating]) -> np.ndarray:
    """``log`` of :func:`_weights`, from ``log(eps) - log1p(eps)`` (finite for tiny eps)."""
    log_ratio = _core.off_support_weight(epsilon)[1]
    logs: np.ndarray = np.where(support, dtype.type(0.0), dtype.type(log_ratio))
    return logs


def _fast(x: Array, where: Array | None) -> bool:
    return where is None and isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64)


def _kernel(
    x: np.ndarray, where: np.ndarray | None, axis: int, epsilon: float, log: bool
) -> np.ndarray:
    """The compiled kernel along ``axis``, reading ``x`` and ``where`` through their strides.

    A masked entry behaves exactly like ``-inf`` (the design's rule) and a masked
    NaN is never used; the mask is broadcast as zero strides, not copied. The
    output has ``x``'s layout (:func:`numpy.empty_like`).
    """
    out = np.empty_like(x)
    mask_ptr, mask_strides = 0, (0,) * x.ndim
    if where is not None:
        mask = np.broadcast_to(where, x.shape)
        mask_ptr, mask_strides = mask.ctypes.data, mask.strides
    _ext.ev_softmax_strided(
        x.ctypes.data,
        mask_ptr,
        out.ctypes.data,
        shape=x.shape,
        strides=tuple(s // x.itemsize for s in x.strides),
        mask_strides=mask_strides,
        out_strides=tuple(s // out.itemsize for s in out.strides),
        axis=axis,
        dtype=x.dtype.name,
        epsilon=epsilon,
        log=log,
        threads=1,
    )
    return out


# Itemsize of each dtype the kernel reads, by name (bfloat16 is ml_dtypes' type).
_KERNEL_ITEMSIZES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


def _use_kernel(x: Array, where: Array | None) -> bool:
    """Whether the compiled kernel takes ``x``: native-order data of a dtype it reads, aligned."""
    if not isinstance(x, np.ndarray) or x.size == 0 or not x.dtype.isnative:
        return False
    name = x.dtype.name
    plain = _KERNEL_ITEMSIZES.get(name) == x.dtype.itemsize and name in _ext.strided_dtypes()
    if not plain or not (where is None or isinstance(where, np.ndarray)):
        return False
    aligned = all(s % x.itemsize == 0 for s in x.strides) and 1 <= x.ndim <= 32
    return aligned and (where is None or where.dtype == np.bool_) and _ext.available()


def ev_softmax(x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace) -> Array:
    """ev-softmax with the compiled kernel or NumPy's in-place ufuncs (module docstring)."""
    if _use_kernel(x, where):
        return _kernel(x, where, axis, epsilon, False)
    parts = _shifted_and_support(x, axis) if _fast(x, where) else None
    if parts is None:
        return _core.ev_softmax(x, axis=axis, epsilon=epsilon, where=where, xp=xp)
    out, support = parts
    np.exp(out, out=out)
    # Multiplying by the mask is much faster than np.putmask / np.where here.
    out *= _weights(support, epsilon, out.dtype)
    out /= np.sum(out, axis=axis, keepdims=True)
    return out


def log_ev_softmax(
    x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace
) -> Array:
    """Log ev-softmax with the compiled kernel or NumPy's in-place ufuncs (module docstring)."""
    if _use_kernel(x, where):
        return _kernel(x, where, axis, epsilon, True)
    parts = _shifted_and_support(x, axis) if _fast(x, where) else None
    if parts is None:
        return _core.log_ev_softmax(x, axis=axis, epsilon=epsilon, where=where, xp=xp)
    out, support = parts
    exp = np.exp(out)
    exp *= _weights(support, epsilon, out.dtype)
    # The row maximum is 0 after the shift and always in the support, so the
    # normalizer is at least 1 and its log is safe to take.
    total = np.sum(exp, axis=axis, keepdims=True)
    out += _log_weights(support, epsilon, out.dtype)
    out -= np.log(total)
    return out
