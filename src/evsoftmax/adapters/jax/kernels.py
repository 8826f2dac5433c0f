"""evsoftmax's compiled CPU kernel as XLA FFI custom calls, for the JAX adapter.

:mod:`evsoftmax._ext` carries three typed XLA FFI handlers: ev-softmax (or its
log), its closed-form VJP ``p * (g - <p, g>)``, and the VJP of its log,
``g - p * sum(g)`` over the valid entries, computed from the input (the log's
forward pass on the way, in cache). They are registered
for the CPU when this module is imported (one name per copy of the package, so
a vendored copy registers its own), and called through ``jax.ffi.ffi_call``
on the arrays as they are: float32, float64, float16 or bfloat16 (half
precision computed in float32), along any axis (addressed through strides,
never transposed), with an optional boolean ``where`` mask that the kernel
broadcasts itself. Whether they are used is decided when a
computation is lowered (:func:`serves`): ``EVSOFTMAX_NO_CPU_KERNELS=1`` turns
them off for new compilations, ``jax.export`` never gets them (a custom call
has no compatibility guarantee, so exports carry the XLA form), and neither
does a computation partitioned over several devices (XLA has no partitioning
rule for a custom call and would gather the whole array onto each device; the
XLA form stays sharded). The body of a ``shard_map`` is local to its device,
so it does get them.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from ... import _ext
from ..._lib._typing import Array

__all__ = ["available", "dtypes", "forward", "log_grad", "serves", "takes", "vjp"]

_PREFIX = __name__.rpartition(".adapters.")[0]
_THREADS = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _register() -> bool:
    """Register the handlers with XLA for the CPU; whether that worked."""
    kernels = _ext.cpu_kernels()
    if kernels is None:
        return False
    try:
        jax.ffi.register_ffi_target(
            f"{_PREFIX}.ev_softmax", kernels.xla_ffi_handler(), platform="cpu"
        )
        jax.ffi.register_ffi_target(
            f"{_PREFIX}.ev_softmax_vjp", kernels.xla_ffi_vjp_handler(), platform="cpu"
        )
        jax.ffi.register_ffi_target(
            f"{_PREFIX}.log_ev_softmax_grad", kernels.xla_ffi_log_grad_handler(), platform="cpu"
        )
    except Exception:  # an XLA that refuses the handlers: the XLA-only code paths remain
        return False
    return True


_REGISTERED = _register()


def available() -> bool:
    """Whether the kernels are registered and not turned off (read when tracing)."""
    return _REGISTERED and _ext.available()


def _local(axis_context: Any) -> bool:
    """Whether a lowering's axis context computes on one device's data only."""
    devices = getattr(axis_context, "num_devices", None)
    if devices is not None:  # jit: one computation partitioned over ``devices`` devices
        return bool(devices == 1)
    mesh = getattr(axis_context, "mesh", None)
    if mesh is not None:  # shard_map body: local when every axis with several devices is manual
        manual: frozenset[Any] = getattr(axis_context, "manual_axes", frozenset())
        return all(size == 1 or name in manual for name, size in mesh.shape.items())
    return True  # pmap: one replica per device


def serves(ctx: Any) -> bool:
    """Whether the kernels may lower in this lowering context (``mlir.LoweringRuleContext``).

    They must be available (:func:`available`), the lowering not be for
    ``jax.export``, and the computation local to one device (:func:`_local`).
    """
    module = ctx.module_context
    if not available() or getattr(module.lowering_parameters, "for_export", False):
        return False
    return _local(module.axis_context)


# The shortest rows the kernel takes, per dtype (default 1): on shorter ones the XLA
# form was as fast or faster. Measured with jit on a 2-core x86-64 machine (AVX-512),
# forward and forward+backward, rows of 2 to 128 entries: in float32 (and float64) the
# kernel took 0.1-0.3x the XLA form's time at every length, 2 included; in half
# precision it was 0.6-1.0x at 2 and 4 entries, 1.0-1.4x at 8 and 0.35-0.5x from 16 on.
_MIN_LENGTH = {"float16": 16, "bfloat16": 16}


def takes(dtype: Any, length: int) -> bool:
    """Whether the kernel takes rows of ``length`` entries of ``dtype`` (else the XLA form)."""
    name = jnp.dtype(dtype).name
    return jnp.dtype(dtype) in dtypes() and length >= _MIN_LENGTH.get(name, 1)


def dtypes() -> frozenset[Any]:
    """The element types the handlers take (half precision is computed in float32)."""
    names = _ext.strided_dtypes() if _REGISTERED else frozenset()
    return frozenset(jnp.dtype(name) for name in names)


def _call(target: str, axis: int, *arrays: Array, params: list[float]) -> Array:
    """The FFI target on ``arrays`` (the first one's shape and dtype is the result's).

    The kernel addresses rows along ``axis`` through row-major strides, so no
    operand is transposed; the axis and the thread count end the parameters.
    """
    x = arrays[0]
    result = jax.ShapeDtypeStruct(x.shape, x.dtype)  # type: ignore[no-untyped-call]
    vector_dtype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    vector = jnp.array([*params, _THREADS, float(axis)], dtype=vector_dtype)
    call = jax.ffi.ffi_call(f"{_PREFIX}.{target}", result, vmap_method="broadcast_all")
    return call(*arrays, vector)  # type: ignore[no-any-return]


def forward(x: Array, where: Array | None, axis: int, epsilon: float, log: bool) -> Array:
    """ev-softmax (or its log) of ``x`` (of :func:`dtypes`) along ``axis``, in ``x``'s dtype.

    ``where`` is None or a boolean array of ``x``'s rank whose dimensions match
    or are 1 (broadcast by the kernel, never materialized); its false entries
    count as ``-inf``. The kernel reads each row once and follows every rule of
    the core (special rows included).
    """
    ratio, log_ratio = _ext.off_support_weight(epsilon)
    arrays = (x,) if where is None else (x, where)
    return _call("ev_softmax", axis, *arrays, params=[ratio, log_ratio, float(log)])


def vjp(probs: Array, cotangent: Array, axis: int) -> Array:
    """``p * (g - <p, g>)`` along ``axis`` with the kernel (both of one dtype of :func:`dtypes`)."""
    return _call("ev_softmax_vjp", axis, probs, cotangent, params=[])


def log_grad(x: Array, cotangent: Array, where: Array | None, axis: int, epsilon: float) -> Array:
    """``g - exp(lp) * sum(g)`` on the valid entries along ``axis`` (0 elsewhere) by the kernel.

    ``lp = log ev-softmax(x)`` is computed on the way: each few rows' forward
    pass runs into the result's memory and the VJP follows while they are in
    cache, so when the forward output itself is not needed (reverse mode
    discards it) XLA drops the forward call and the whole gradient is one read
    of ``x`` and ``cotangent`` and one write. ``x`` and ``cotangent`` share shape
    and one dtype of :func:`dtypes`; ``where`` is as for :func:`forward`.
    """
    ratio, log_ratio = _ext.off_support_weight(epsilon)
    arrays = (x, cotangent) if where is None else (x, cotangent, where)
    return _call("log_ev_softmax_grad", axis, *arrays, params=[ratio, log_ratio])
