r"""The closed-form tangent map of ev-softmax as a JAX primitive.

:math:`T_p(t) = p \odot (t - \langle p, t\rangle)` (along ``axis``) is both the
JVP and, its Jacobian being symmetric, the VJP of ev-softmax at output ``p``.
The JAX adapter's ``custom_jvp`` rule returns :math:`T_p(\dot x)`; JAX
transposes it for reverse mode. As a primitive it can be lowered to
evsoftmax's compiled CPU kernel (one pass over ``p`` and ``t`` per row, while
XLA splits the expression into several fusions), and to the plain expression
everywhere else. Its rules:

* **transpose** in ``t``: :math:`T_p` itself (symmetric);
* **JVP** (for higher derivatives), bilinear in :math:`(p, t)`:
  :math:`T_p(\dot t) + \dot p \odot (t - \langle p, t\rangle) - p\,\langle\dot p, t\rangle`;
* **batching**: rows are independent, so batch dimensions move to the front
  and the axis shifts by one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ..._lib._typing import Array
from . import kernels as _jax_kernels

__all__ = ["ev_softmax_vjp", "log_ev_softmax_tangent"]

_PRIMITIVE = Primitive(f"{__name__.rpartition('.adapters.')[0]}_ev_softmax_vjp")


def ev_softmax_vjp(probs: Array, tangent: Array, axis: int) -> Array:
    """:math:`p \\odot (t - \\langle p, t\\rangle)` along the non-negative ``axis``.

    ``probs`` and ``tangent`` share shape and floating dtype (half precision is
    computed in float32); the result has the tangent's dtype.
    """
    return _PRIMITIVE.bind(probs, tangent, axis=axis)  # type: ignore[no-untyped-call,no-any-return]


def _accumulated(*arrays: Array) -> list[Array]:
    """``arrays`` in their accumulation dtype (float32 for half precision)."""
    return [a.astype(jnp.float32) if a.dtype.itemsize < 4 else a for a in arrays]


def _expression(probs: Array, tangent: Array, *, axis: int) -> Array:
    p, t = _accumulated(probs, tangent)
    return (p * (t - jnp.sum(p * t, axis=axis, keepdims=True))).astype(tangent.dtype)


def _kernel(probs: Array, tangent: Array, *, axis: int) -> Array:
    """The kernel where it wins (:func:`.kernels.takes`; operands alike), else the expression."""
    if probs.dtype == tangent.dtype and _jax_kernels.takes(probs.dtype, probs.shape[axis]):
        return _jax_kernels.vjp(probs, tangent, axis)
    return _expression(probs, tangent, axis=axis)


def _cpu_lowering(ctx: Any, probs: Any, tangent: Any, *, axis: int) -> Any:
    """The kernel where it serves this lowering (:func:`.kernels.serves`), else the expression."""
    fun = _kernel if _jax_kernels.serves(ctx) else _expression
    return mlir.lower_fun(fun, multiple_results=False)(ctx, probs, tangent, axis=axis)


def _abstract(probs: Any, tangent: Any, *, axis: int) -> Any:
    return tangent.update(weak_type=False)  # keeps sharding and varying manual axes


def _jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...], *, axis: int) -> tuple[Any, Any]:
    probs, tangent = primals
    d_probs, d_tangent = (ad.instantiate_zeros(t) for t in tangents)  # type: ignore[no-untyped-call]
    out = ev_softmax_vjp(probs, tangent, axis)
    p, t, dp = _accumulated(probs, tangent, d_probs)
    inner = jnp.sum(p * t, axis=axis, keepdims=True)
    d_inner = jnp.sum(dp * t, axis=axis, keepdims=True)
    rest = (dp * (t - inner) - p * d_inner).astype(tangent.dtype)
    return out, ev_softmax_vjp(probs, d_tangent, axis) + rest


def _transpose(cotangent: Any, probs: Any, tangent: Any, *, axis: int) -> list[Any]:
    undefined: Any = ad.is_undefined_primal  # (untyped in jax)
    if undefined(probs) or not undefined(tangent):
        raise NotImplementedError("the tangent map is linear in its tangent only")
    if type(cotangent) is ad.Zero:
        return [None, ad.Zero(tangent.aval)]
    return [None, ev_softmax_vjp(probs, cotangent, axis)]


def _batch(args: tuple[Any, ...], dims: tuple[Any, ...], *, axis: int) -> tuple[Any, int]:
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    front: Any = batching.bdim_at_front  # (untyped in jax)
    probs, tangent = (front(a, d, size) for a, d in zip(args, dims, strict=True))
    return ev_softmax_vjp(probs, tangent, axis + 1), 0


_jitted = jax.jit(ev_softmax_vjp, static_argnums=2)


def _eager(probs: Array, tangent: Array, *, axis: int) -> Array:
    """Outside a trace, the primitive runs as a jitted call of itself (then lowered)."""
    return _jitted(probs, tangent, axis)  # type: ignore[no-any-return]


_PRIMITIVE.def_impl(_eager)  # type: ignore[no-untyped-call]
_PRIMITIVE.def_abstract_eval(_abstract)  # type: ignore[no-untyped-call]
ad.primitive_jvps[_PRIMITIVE] = _jvp
ad.primitive_transposes[_PRIMITIVE] = _transpose
batching.primitive_batchers[_PRIMITIVE] = _batch
mlir.register_lowering(_PRIMITIVE, mlir.lower_fun(_expression, multiple_results=False))
mlir.register_lowering(_PRIMITIVE, _cpu_lowering, platform="cpu")


# --- the log form ------------------------------------------------------------------
#
# log ev-softmax's tangent map is not symmetric: forward mode (``transpose=False``)
# takes ``t`` to ``1_V * (t - <p, t>)``, reverse mode (``transpose=True``) takes ``g``
# to its transpose ``1_V * (g - p * sum(1_V * g))``, with ``p = exp(lp)`` and ``V``
# the valid entries (``where`` true, ``x != -inf``). One primitive with a
# ``transpose`` flag is both: each transposes into the other. On the CPU the reverse
# map lowers to the kernel, which recomputes ``lp`` from ``x`` row by row and applies
# the map while the row is in cache (:func:`.kernels.log_grad`): reverse mode mostly
# discards the forward output, and XLA then drops the forward call, as it fuses the
# forward pass of its own log_softmax into the backward one (the expression makes
# two fusions and a full-size temporary). Everything else lowers to the expression.

_LOG_PRIMITIVE = Primitive(f"{__name__.rpartition('.adapters.')[0]}_log_ev_softmax_tangent")


def log_ev_softmax_tangent(
    log_probs: Array,
    t: Array,
    x: Array,
    where: Array | None,
    axis: int,
    transpose: bool,
    epsilon: float,
) -> Array:
    """The tangent map (or, ``transpose``, its transpose) of log ev-softmax at ``log_probs``.

    ``log_probs`` must be ``log_ev_softmax(x, where=where, epsilon=epsilon)`` along
    ``axis`` (the kernel recomputes it from ``x``); ``log_probs``, ``t`` and ``x``
    (whose ``-inf`` entries are invalid) share shape and a floating dtype of at
    least 32 bits; ``where`` is None or a boolean array of their rank whose
    dimensions match or are 1.
    """
    args = (log_probs, t, x) if where is None else (log_probs, t, x, where)
    return _LOG_PRIMITIVE.bind(*args, axis=axis, transpose=transpose, epsilon=epsilon)  # type: ignore[no-untyped-call,no-any-return]


def _valid(x: Array, *where: Array) -> Array:
    valid = x != -jnp.inf
    return valid & where[0] if where else valid


def _log_expression(
    log_probs: Array, t: Array, x: Array, *where: Array, axis: int, transpose: bool, epsilon: float
) -> Array:
    valid = _valid(x, *where)
    p = jnp.exp(log_probs)
    if transpose:
        g = jnp.where(valid, t, 0.0)
        return jnp.where(valid, g - p * jnp.sum(g, axis=axis, keepdims=True), 0.0)
    return jnp.where(valid, t - jnp.sum(p * t, axis=axis, keepdims=True), 0.0)


def _log_kernel(
    log_probs: Array, t: Array, x: Array, *where: Array, axis: int, transpose: bool, epsilon: float
) -> Array:
    """The kernel for the reverse map where it wins (:func:`.kernels.takes`), else the XLA ops."""
    dtypes = {log_probs.dtype, t.dtype, x.dtype}
    if transpose and len(dtypes) == 1 and _jax_kernels.takes(x.dtype, x.shape[axis]):
        return _jax_kernels.log_grad(x, t, where[0] if where else None, axis, epsilon)
    return _log_expression(log_probs, t, x, *where, axis=axis, transpose=transpose, epsilon=epsilon)


def _log_cpu_lowering(ctx: Any, *args: Any, **params: Any) -> Any:
    fun = _log_kernel if _jax_kernels.serves(ctx) else _log_expression
    return mlir.lower_fun(fun, multiple_results=False)(ctx, *args, **params)


def _log_abstract(log_probs: Any, t: Any, *rest: Any, **params: Any) -> Any:
    return t.update(weak_type=False)


def _log_jvp(
    primals: tuple[Any, ...],
    tangents: tuple[Any, ...],
    *,
    axis: int,
    transpose: bool,
    epsilon: float,
) -> tuple[Any, Any]:
    """Bilinear in ``(p, t)``; ``x`` and ``where`` only select entries (locally constant)."""
    log_probs, t, x, *where = primals
    d_log_probs, d_t = (ad.instantiate_zeros(d) for d in tangents[:2])  # type: ignore[no-untyped-call]
    w = where[0] if where else None
    out = log_ev_softmax_tangent(log_probs, t, x, w, axis, transpose, epsilon)
    valid = _valid(x, *where)
    dp = jnp.exp(log_probs) * d_log_probs
    if transpose:
        total = jnp.sum(jnp.where(valid, t, 0.0), axis=axis, keepdims=True)
        rest = jnp.where(valid, -dp * total, 0.0)
    else:
        rest = jnp.where(valid, -jnp.sum(dp * t, axis=axis, keepdims=True), 0.0)
    return out, log_ev_softmax_tangent(log_probs, d_t, x, w, axis, transpose, epsilon) + rest


def _log_transpose(
    cotangent: Any, *args: Any, axis: int, transpose: bool, epsilon: float
) -> list[Any]:
    log_probs, t, x, *where = args
    undefined: Any = ad.is_undefined_primal  # (untyped in jax)
    if not undefined(t) or any(undefined(a) for a in (log_probs, x, *where)):
        raise NotImplementedError("the tangent map is linear in its tangent only")
    nones: list[Any] = [None] * len(where)
    if type(cotangent) is ad.Zero:
        return [None, ad.Zero(t.aval), None, *nones]
    w = where[0] if where else None
    transposed = log_ev_softmax_tangent(log_probs, cotangent, x, w, axis, not transpose, epsilon)
    return [None, transposed, None, *nones]


def _log_batch(args: tuple[Any, ...], dims: tuple[Any, ...], *, axis: int, **params: Any) -> Any:
    """Batch dimensions to the front (an unbatched mask gets a size-1 one); ``axis`` shifts."""
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    front: Any = batching.bdim_at_front  # (untyped in jax)
    log_probs, t, x = (front(a, d, size) for a, d in zip(args[:3], dims[:3], strict=True))
    where = None
    if len(args) > 3:
        where = jnp.moveaxis(args[3], dims[3], 0) if dims[3] is not None else args[3][None]
    return log_ev_softmax_tangent(log_probs, t, x, where, axis + 1, **params), 0


_log_jitted = jax.jit(log_ev_softmax_tangent, static_argnums=(4, 5, 6))


def _log_eager(*args: Array, axis: int, transpose: bool, epsilon: float) -> Array:
    log_probs, t, x, *where = args
    w = where[0] if where else None
    return _log_jitted(log_probs, t, x, w, axis, transpose, epsilon)  # type: ignore[no-any-return]


_LOG_PRIMITIVE.def_impl(_log_eager)  # type: ignore[no-untyped-call]
_LOG_PRIMITIVE.def_abstract_eval(_log_abstract)  # type: ignore[no-untyped-call]
ad.primitive_jvps[_LOG_PRIMITIVE] = _log_jvp
ad.primitive_transposes[_LOG_PRIMITIVE] = _log_transpose
batching.primitive_batchers[_LOG_PRIMITIVE] = _log_batch
mlir.register_lowering(_LOG_PRIMITIVE, mlir.lower_fun(_log_expression, multiple_results=False))
mlir.register_lowering(_LOG_PRIMITIVE, _log_cpu_lowering, platform="cpu")
