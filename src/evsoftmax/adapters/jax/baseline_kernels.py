"""The compiled baseline kernels as XLA FFI custom calls, for JAX's baselines on the CPU.

:mod:`evsoftmax._ext._baseline_kernels` carries two typed XLA FFI handlers: a
baseline's forward on rows (sparsemax, 1.5-entmax, alpha-entmax by bisection)
and the closed-form VJP of alpha-entmax. They are registered for the CPU when
this module is imported (one name per copy of the package, as
:mod:`.kernels` registers ev-softmax's), and called through
``jax.ffi.ffi_call`` with the axis moved last. Whether they may be used in a
lowering follows the rules of ev-softmax's kernel (:func:`.kernels.serves`:
not under ``jax.export``, not in a computation partitioned over several
devices; the body of a ``shard_map`` is local) and needs this module's
handlers registered and the baseline kernels built and not turned off
(``EVSOFTMAX_NO_CPU_KERNELS=1``).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ... import _ext
from ..._lib._typing import Array
from . import kernels as _jax_kernels

__all__ = ["available", "forward", "registered", "serves", "vjp"]

_PREFIX = __name__.rpartition(".adapters.")[0]
_FORWARD = f"{_PREFIX}.baseline_rows"
_VJP = f"{_PREFIX}.baseline_vjp_rows"
_THREADS = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
# The kernels' own dtypes; half precision is converted to float32 around the call.
_KERNEL_DTYPES = (jnp.float32, jnp.float64)


def _register() -> bool:
    """Register both handlers with XLA for the CPU; whether that worked."""
    kernels = _ext.baseline_kernels()
    if kernels is None:
        return False
    try:
        jax.ffi.register_ffi_target(_FORWARD, kernels.xla_ffi_handler(), platform="cpu")
        jax.ffi.register_ffi_target(_VJP, kernels.xla_ffi_vjp_handler(), platform="cpu")
    except Exception:  # an XLA that refuses the handlers: the XLA form remains
        return False
    return True


_REGISTERED = _register()


def registered() -> bool:
    """Whether the handlers were registered with XLA when this module was imported."""
    return _REGISTERED


def available() -> bool:
    """Whether the handlers are registered and the kernels not turned off (read when lowering)."""
    return _REGISTERED and _ext.baseline_kernels() is not None


def serves(ctx: Any) -> bool:
    """Whether the baseline kernels may lower in this ``mlir.LoweringRuleContext``."""
    return available() and _jax_kernels.serves(ctx)


def _split(value: float, dtype: Any) -> list[float]:
    """``value`` as ``[hi, lo]`` in ``dtype`` with ``hi + lo`` equal to it in double precision."""
    hi = float(np.asarray(value, dtype=dtype))
    return [hi, value - hi]


def _call(target: str, axis: int, *arrays: Array, params: list[float]) -> Array:
    """The FFI target on ``arrays`` (one floating dtype) with ``axis`` moved last, and back."""
    dtype = arrays[0].dtype
    compute = dtype if dtype in _KERNEL_DTYPES else jnp.float32
    rows = [jnp.moveaxis(a, axis, -1).astype(compute) for a in arrays]
    result = jax.ShapeDtypeStruct(rows[0].shape, compute)  # type: ignore[no-untyped-call]
    vector = jnp.array(params, dtype=compute)
    out = jax.ffi.ffi_call(target, result, vmap_method="broadcast_all")(*rows, vector)
    return jnp.moveaxis(out, -1, axis).astype(dtype)


def forward(x: Array, op: str, alpha: float, axis: int, n_iter: int) -> Array:
    """The baseline ``op`` (a key of ``_ext.BASELINE_OPS``) of ``x`` along ``axis``.

    ``x`` holds no mask (excluded entries are already ``-inf``); ``alpha`` and
    ``n_iter`` are read for ``"entmax_bisect"`` only.
    """
    compute = x.dtype if x.dtype in _KERNEL_DTYPES else jnp.float32
    code = float(_ext.BASELINE_OPS[op])
    params = [code, *_split(alpha, compute), float(n_iter), _THREADS]
    return _call(_FORWARD, axis, x, params=params)


def vjp(probs: Array, cotangent: Array, alpha: float, axis: int) -> Array:
    """``s g - s <s, g> / sum(s)``, ``s = p^(2 - alpha)`` on the support, along ``axis``."""
    compute = probs.dtype if probs.dtype in _KERNEL_DTYPES else jnp.float32
    return _call(_VJP, axis, probs, cotangent, params=[*_split(alpha, compute), _THREADS])
