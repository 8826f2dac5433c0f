"""JAX autodiff hooks for the baselines: native softmax, closed-form entmax derivatives.

``softmax``/``log_softmax`` call ``jax.nn.softmax``/``jax.nn.log_softmax`` with
the masking rules of the array-API versions. ``sparsemax``, ``entmax15`` and
``entmax_bisect`` are a ``jax.custom_jvp`` whose rule is the closed form
:func:`evsoftmax._entmax.entmax_jvp`. Everything is ``jit``/``vmap`` ready.

Two primitives carry the work, each with two lowerings chosen when the
computation is lowered (as ev-softmax's in :mod:`.adapter`): the forward
(``<package>_baseline_rows``) and the closed-form tangent map
(``<package>_entmax_tangent``, linear in the tangent; its Jacobian is
symmetric, so its transpose, the VJP, is itself). On the CPU, where the
compiled baseline kernels serve the lowering (:func:`.baseline_kernels.serves`:
built and on, not ``jax.export``, not partitioned over several devices), they
lower to the kernels' XLA FFI custom calls: the forward, and in reverse mode
the C VJP; everywhere else to the array-API forward (sort-based, or the
bisection loop) and the ``entmax_jvp`` expression. Higher derivatives
differentiate the tangent map in ``probs`` through the expression.

Masks are applied by filling excluded entries with ``-inf`` first (treated
exactly like ``where=False``); ``jnp.where`` gives them a zero derivative.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ... import _entmax, _evidential, _sparsemax
from ..._lib._typing import Namespace
from . import baseline_kernels as _baseline_kernels

__all__ = [
    "entmax15",
    "entmax_bisect",
    "evidential_sparsification",
    "log_softmax",
    "softmax",
    "sparsemax",
]


def _masked(x: jax.Array, where: jax.Array | None) -> jax.Array:
    """``x`` with the entries outside ``where`` set to ``-inf``."""
    return x if where is None else jnp.where(where, x, -math.inf)


def _native_inputs(x: jax.Array, where: jax.Array | None, axis: int) -> tuple[jax.Array, jax.Array]:
    """``(scores, valid)``: rows without a valid entry replaced by zeros, half upcast."""
    x = _masked(x, where)
    valid = x != -math.inf
    if x.dtype.itemsize < 4:
        x = x.astype(jnp.float32)
    return jnp.where(jnp.any(valid, axis=axis, keepdims=True), x, 0.0), valid


@functools.partial(jax.jit, static_argnames=("axis",))
def _softmax(x: jax.Array, where: jax.Array | None, axis: int) -> Any:
    scores, valid = _native_inputs(x, where, axis)
    probs = jax.nn.softmax(scores, axis=axis)
    # NaN rows (NaN or +inf inside) stay NaN throughout.
    return jnp.where(valid | jnp.isnan(probs), probs, 0.0).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("axis",))
def _log_softmax(x: jax.Array, where: jax.Array | None, axis: int) -> Any:
    scores, valid = _native_inputs(x, where, axis)
    # Selecting by entry (not by row) gives the -inf outputs a zero derivative.
    log_probs = jax.nn.log_softmax(scores, axis=axis)
    return jnp.where(valid | jnp.isnan(log_probs), log_probs, -math.inf).astype(x.dtype)


def softmax(x: jax.Array, *, axis: int, where: jax.Array | None, xp: Namespace) -> Any:
    """``jax.nn.softmax`` over the valid entries; rows without any give zeros."""
    return _softmax(x, where, axis=axis)


def log_softmax(x: jax.Array, *, axis: int, where: jax.Array | None, xp: Namespace) -> Any:
    """``jax.nn.log_softmax`` over the valid entries; rows without any give ``-inf``."""
    return _log_softmax(x, where, axis=axis)


@jax.jit
def _evidential_jit(features: jax.Array, weight: jax.Array, bias: jax.Array) -> Any:
    return _evidential.evidential_sparsification(features, weight, bias, xp=jnp)


def evidential_sparsification(
    features: jax.Array, weight: jax.Array, bias: jax.Array, *, xp: Namespace
) -> Any:
    """The array-API implementation, compiled as one unit."""
    return _evidential_jit(features, weight, bias)


def _xla_forward(x: jax.Array, *, method: str, alpha: float, axis: int, n_iter: int) -> Any:
    """The array-API forward of ``method`` (excluded entries are already -inf)."""
    if method == "sparsemax":
        return _sparsemax.sparsemax(x, axis=axis, where=None, xp=jnp)
    if method == "entmax15":
        return _entmax.entmax15(x, axis=axis, where=None, xp=jnp)
    return _entmax.entmax_bisect(
        x, alpha=alpha, axis=axis, n_iter=n_iter, where=None, xp=jnp, fori_loop=jax.lax.fori_loop
    )


def _kernel_wins(method: str, alpha: float, length: int, tangent: bool) -> bool:
    """Whether the kernel beats the XLA form on rows of ``length`` (measured, docs/jax.md).

    The forward: always for sparsemax and 1.5-entmax (the XLA form sorts); for the
    bisection on rows of 128 entries or more (on shorter ones XLA's passes over all
    rows at once beat the kernel's 50 dependent steps per row). The VJP: for
    sparsemax's and 1.5-entmax's ``s`` (1, ``sqrt(p)``) on rows of 16 or more; a
    general power is a scalar ``pow`` per entry in C, slower than XLA's.
    """
    if tangent:
        return alpha in (2.0, 1.5) and length >= 16
    return length >= 128 or method != "bisect"


def _kernel_forward(x: jax.Array, *, method: str, alpha: float, axis: int, n_iter: int) -> Any:
    """The compiled kernel where it wins (:func:`_kernel_wins`), else the XLA form."""
    if _kernel_wins(method, alpha, x.shape[axis], tangent=False):
        op = "entmax_bisect" if method == "bisect" else method
        return _baseline_kernels.forward(x, op, alpha, axis, n_iter)
    return _xla_forward(x, method=method, alpha=alpha, axis=axis, n_iter=n_iter)


def _xla_tangent(probs: jax.Array, tangent: jax.Array, *, alpha: float, axis: int) -> Any:
    return _entmax.entmax_jvp(probs, tangent, alpha=alpha, axis=axis, xp=jnp)


def _kernel_tangent(probs: jax.Array, tangent: jax.Array, *, alpha: float, axis: int) -> Any:
    """The compiled VJP where it wins (:func:`_kernel_wins`), else the expression."""
    wins = _kernel_wins("", alpha, probs.shape[axis], tangent=True)
    if wins and probs.dtype == tangent.dtype:
        return _baseline_kernels.vjp(probs, tangent, alpha, axis)
    return _xla_tangent(probs, tangent, alpha=alpha, axis=axis)


def _lowering(kernel: Callable[..., Any], xla: Callable[..., Any]) -> Callable[..., Any]:
    """The CPU lowering: ``kernel`` where the baseline kernels serve it, else ``xla``."""

    def lower(ctx: Any, *args: Any, **params: Any) -> Any:
        fun = kernel if _baseline_kernels.serves(ctx) else xla
        return mlir.lower_fun(fun, multiple_results=False)(ctx, *args, **params)

    return lower


def _bind(primitive: Primitive, *args: Any, **params: Any) -> Any:
    return primitive.bind(*args, **params)  # type: ignore[no-untyped-call]


def _batch_rows(
    primitive: Primitive, args: tuple[Any, ...], dims: tuple[Any, ...], *, axis: int, **params: Any
) -> tuple[Any, int]:
    """Rows are independent: batch dimensions move to the front and ``axis`` shifts by one."""
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    front: Any = batching.bdim_at_front  # (untyped in jax)
    moved = [front(a, d, size) for a, d in zip(args, dims, strict=True)]
    return _bind(primitive, *moved, axis=axis + 1, **params), 0


def _primitive(name: str, kernel: Callable[..., Any], xla: Callable[..., Any]) -> Primitive:
    """A primitive of the rows with the XLA form everywhere and the kernel on the CPU."""
    primitive = Primitive(f"{_PREFIX}_{name}")
    eager = jax.jit(
        functools.partial(_bind, primitive), static_argnames=("method", "alpha", "axis", "n_iter")
    )
    primitive.def_impl(eager)  # type: ignore[no-untyped-call]
    # Same shape, dtype, sharding and varying manual axes as the last operand.
    primitive.def_abstract_eval(lambda *args, **params: args[-1].update(weak_type=False))  # type: ignore[no-untyped-call]
    batching.primitive_batchers[primitive] = functools.partial(_batch_rows, primitive)
    mlir.register_lowering(primitive, mlir.lower_fun(xla, multiple_results=False))
    mlir.register_lowering(primitive, _lowering(kernel, xla), platform="cpu")
    return primitive


_PREFIX = __name__.rpartition(".adapters.")[0]
_FORWARD = _primitive("baseline_rows", _kernel_forward, _xla_forward)
_TANGENT = _primitive("entmax_tangent", _kernel_tangent, _xla_tangent)


def _tangent(probs: jax.Array, tangent: jax.Array, alpha: float, axis: int) -> Any:
    """The tangent map (JVP, and VJP: its Jacobian is symmetric) of alpha-entmax at ``probs``."""
    return _bind(_TANGENT, probs, tangent, alpha=alpha, axis=axis)


def _tangent_jvp(
    primals: tuple[Any, ...], tangents: tuple[Any, ...], *, alpha: float, axis: int
) -> tuple[Any, Any]:
    """Linear in the tangent; its derivative in ``probs`` is the expression's (higher orders)."""
    probs, tangent = primals
    d_probs, d_tangent = (ad.instantiate_zeros(t) for t in tangents)  # type: ignore[no-untyped-call]
    in_probs = jax.jvp(
        lambda p: _xla_tangent(p, tangent, alpha=alpha, axis=axis), (probs,), (d_probs,)
    )[1]
    out = _tangent(probs, tangent, alpha, axis)
    return out, _tangent(probs, d_tangent, alpha, axis) + in_probs


def _tangent_transpose(
    cotangent: Any, probs: Any, tangent: Any, *, alpha: float, axis: int
) -> list[Any]:
    undefined: Any = ad.is_undefined_primal  # (untyped in jax)
    if undefined(probs) or not undefined(tangent):
        raise NotImplementedError("the tangent map is linear in its tangent only")
    if type(cotangent) is ad.Zero:
        return [None, ad.Zero(tangent.aval)]
    return [None, _tangent(probs, cotangent, alpha, axis)]


ad.primitive_jvps[_TANGENT] = _tangent_jvp
ad.primitive_transposes[_TANGENT] = _tangent_transpose


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _entmax_family(x: jax.Array, method: str, alpha: float, axis: int, n_iter: int) -> Any:
    return _bind(_FORWARD, x, method=method, alpha=alpha, axis=axis % x.ndim, n_iter=n_iter)


@_entmax_family.defjvp
def _entmax_family_jvp(
    method: str,
    alpha: float,
    axis: int,
    n_iter: int,
    primals: tuple[jax.Array],
    tangents: tuple[jax.Array],
) -> tuple[Any, Any]:
    (x,), (t,) = primals, tangents
    probs = _entmax_family(x, method, alpha, axis, n_iter)
    return probs, _tangent(probs, t.astype(probs.dtype), alpha, axis % x.ndim)


def sparsemax(x: jax.Array, *, axis: int, where: jax.Array | None, xp: Namespace) -> Any:
    """Sparsemax with derivative ``t_S - mean(t_S)`` on the support ``S``."""
    return _entmax_family(_masked(x, where), "sparsemax", 2.0, axis, 0)


def entmax15(x: jax.Array, *, axis: int, where: jax.Array | None, xp: Namespace) -> Any:
    """1.5-entmax with its closed-form derivative (``s = sqrt(p)``)."""
    return _entmax_family(_masked(x, where), "entmax15", 1.5, axis, 0)


def entmax_bisect(
    x: jax.Array,
    *,
    alpha: float,
    axis: int,
    n_iter: int,
    where: jax.Array | None,
    xp: Namespace,
) -> Any:
    """alpha-entmax by bisection with its closed-form derivative (``s = p^(2-alpha)``)."""
    return _entmax_family(_masked(x, where), "bisect", alpha, axis, n_iter)
