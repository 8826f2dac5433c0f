"""JAX autodiff hooks for the baselines: native softmax, closed-form entmax derivatives.

``softmax``/``log_softmax`` call ``jax.nn.softmax``/``jax.nn.log_softmax`` with
the masking rules of the array-API versions. ``sparsemax``, ``entmax15`` and
``entmax_bisect`` wrap the array-API forward in a ``jax.custom_jvp`` whose
rule is the closed form :func:`evsoftmax._entmax.entmax_jvp`; it is linear in
the tangent, so JAX transposes it for reverse mode, and being written in JAX
operations it is differentiable again. Everything is ``jit``/``vmap`` ready.

Masks are applied by filling excluded entries with ``-inf`` first (treated
exactly like ``where=False``); ``jnp.where`` gives them a zero derivative.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from ... import _entmax, _evidential, _sparsemax
from ..._lib._typing import Namespace

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


# Compiled as one unit: op-by-op dispatch of the sort-based forward is slower on
# first use of every shape than compiling the whole function once.
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _forward(x: jax.Array, method: str, alpha: float, axis: int, n_iter: int) -> Any:
    """The array-API forward of ``method`` (excluded entries are already -inf)."""
    if method == "sparsemax":
        return _sparsemax.sparsemax(x, axis=axis, where=None, xp=jnp)
    if method == "entmax15":
        return _entmax.entmax15(x, axis=axis, where=None, xp=jnp)
    return _entmax.entmax_bisect(
        x, alpha=alpha, axis=axis, n_iter=n_iter, where=None, xp=jnp, fori_loop=jax.lax.fori_loop
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _entmax_family(x: jax.Array, method: str, alpha: float, axis: int, n_iter: int) -> Any:
    return _forward(x, method, alpha, axis, n_iter)


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
    return probs, _entmax.entmax_jvp(probs, t, alpha=alpha, axis=axis, xp=jnp)


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
