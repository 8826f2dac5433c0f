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

__all__ = ["ev_softmax_vjp"]

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
