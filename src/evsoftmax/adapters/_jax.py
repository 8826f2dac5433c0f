r"""JAX adapter: ev-softmax with a closed-form ``jax.custom_jvp``, shaped for XLA.

Both public functions are jitted (``axis`` and ``epsilon`` static) and carry a
``jax.custom_jvp`` whose rule is the closed form of DESIGN §2,

.. math::

    \dot p = p \odot (\dot x - \langle p, \dot x\rangle), \qquad
    \dot{(\log p)} = 1_V \odot (\dot x - \langle p_\varepsilon, \dot x\rangle),

so forward mode, reverse mode (JAX transposes the linear rule) and every
higher order use it, and no gradient ever flows through the threshold. Entries
outside ``V`` (``where`` false or ``-inf``) get exactly zero tangents and
cotangents because ``p`` is exactly zero there; a row with no valid entry has
``p = 0`` everywhere and hence zero gradient, never NaN.

Why the arithmetic looks unusual
--------------------------------
On CPU, XLA hands reductions and the elementwise arithmetic around them to
YNNPACK fusions, which accept only arithmetic (add, sub, mul, div, min, max,
floor, exp, log, ...), not comparisons or selects. ``jnp.where`` between two
reductions therefore splits the computation into several passes over memory,
each writing a full-size temporary: that is why a plain composition costs
2.6-2.9x ``jax.nn.softmax``. Everything between the input and the output is
thus written with arithmetic only, exactly:

* the support indicator ``1{z >= 0}`` is ``max(a, 0) / max(a, 1)`` with
  ``a = floor(z) + 1`` (``a <= 0`` exactly when ``z < 0``; ``-inf`` gives 0,
  NaN stays NaN). The obvious ``min(max(a, 0), 1)`` is rewritten by XLA into
  a ``clamp``, which YNNPACK does not take;
* the validity mask is ``max(x - max(x, -big) + 1, 0)``: 1 for finite ``x``,
  0 for ``-inf``;
* a row without valid entries has ``max = -inf``; clamping it to ``-big``
  keeps ``x - max`` at ``-inf`` (weight 0) instead of NaN, and the row total
  is clamped to ``>= 1`` (a valid row's maximum alone contributes exactly 1),
  so empty rows give 0 without a select.

A ``where`` mask is applied once, up front, as ``-inf``: masked entries then
behave exactly like ``-inf`` entries (DESIGN §4), and a masked NaN cannot
poison its row. NaN or ``+inf`` among the valid entries make the row NaN
through ordinary arithmetic (the row maximum or the count becomes NaN).

Half precision is computed in float32 and rounded once at the end. Only public
JAX APIs are used, and nothing is registered globally, so the module can be
vendored; the named scope that labels the computation in profiles derives
from the package's ``__name__``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._lib._typing import Array, Namespace

__all__ = ["ev_softmax", "log_ev_softmax"]

_SCOPE = __name__.split(".")[0]


def _accumulation_dtype(dtype: Any) -> Any:
    """float32 for half precision, else ``dtype`` itself (mirrors the core)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


def _indicator(z: Array) -> Array:
    """Exactly ``1.0`` where ``z >= 0`` and ``0.0`` where ``z < 0`` (NaN stays NaN)."""
    a = jnp.floor(z) + 1.0
    return jnp.maximum(a, 0.0) / jnp.maximum(a, 1.0)


def _statistics(x: Array, where: Array | None, axis: int) -> tuple[Array, Array, Array]:
    """Return ``(shifted, valid, support)`` for the rows of ``x`` (already accumulation dtype).

    ``shifted`` is ``x`` minus the row maximum of the valid entries (``-inf`` on
    invalid entries), ``valid`` is 1.0/0.0, and ``support`` is 1.0 on the valid
    entries at or above the valid-entry mean of ``shifted``. As in the core, the
    maximum (``shifted = 0``) always passes: the mean of non-positive numbers is
    non-positive under any rounding.
    """
    if where is not None:
        x = jnp.where(where, x, -jnp.inf)
    big = float(np.finfo(x.dtype).max)
    row_max = jnp.maximum(jnp.max(x, axis=axis, keepdims=True), -big)
    shifted = x - row_max
    valid = jnp.maximum(x - jnp.maximum(x, -big) + 1.0, 0.0)
    count = jnp.sum(valid, axis=axis, keepdims=True)
    total = jnp.sum(jnp.maximum(shifted, -big) * valid, axis=axis, keepdims=True)
    mean = total / jnp.maximum(count, 1.0)
    return shifted, valid, _indicator(shifted - mean)


def _weights(shifted: Array, support: Array, epsilon: float) -> Array:
    """Unnormalized probabilities ``(1{support} + epsilon) * exp(shifted)``."""
    scale = support if epsilon == 0.0 else support + epsilon
    return scale * jnp.exp(shifted)


def _normalizer(weights: Array, axis: int) -> Array:
    """Row sums, at least 1: a valid row's maximum alone contributes exactly 1."""
    return jnp.maximum(jnp.sum(weights, axis=axis, keepdims=True), 1.0)


def _probabilities(x: Array, where: Array | None, axis: int, epsilon: float) -> Array:
    acc = _accumulation_dtype(x.dtype)
    shifted, _, support = _statistics(x.astype(acc), where, axis)
    weights = _weights(shifted, support, epsilon)
    return (weights / _normalizer(weights, axis)).astype(x.dtype)


def _log_probabilities(x: Array, where: Array | None, axis: int, epsilon: float) -> Array:
    acc = _accumulation_dtype(x.dtype)
    shifted, _, support = _statistics(x.astype(acc), where, axis)
    if epsilon == 0.0:
        log_scale = jnp.log(support)  # 0 on the support, -inf elsewhere
    else:
        # support is exactly 0 or 1, so this picks log1p(eps) or log(eps) exactly.
        log_scale = support * math.log1p(epsilon) + (1.0 - support) * math.log(epsilon)
    weights = _weights(shifted, support, epsilon)
    out = shifted + log_scale - jnp.log(_normalizer(weights, axis))
    return out.astype(x.dtype)


def _inner(probs: Array, tangent: Array, axis: int) -> Array:
    """``<p, t>`` along ``axis``, in the accumulation dtype."""
    return jnp.sum(probs * tangent, axis=axis, keepdims=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _ev_softmax(x: Array, where: Array | None, axis: int, epsilon: float) -> Array:
    return _probabilities(x, where, axis, epsilon)


@_ev_softmax.defjvp
def _ev_softmax_jvp(
    axis: int, epsilon: float, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Array, Array]:
    x, where = primals
    x_dot = tangents[0]
    probs = _ev_softmax(x, where, axis, epsilon)
    acc = _accumulation_dtype(x.dtype)
    p, t = probs.astype(acc), x_dot.astype(acc)
    return probs, (p * (t - _inner(p, t, axis))).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _log_ev_softmax(x: Array, where: Array | None, axis: int, epsilon: float) -> Array:
    return _log_probabilities(x, where, axis, epsilon)


@_log_ev_softmax.defjvp
def _log_ev_softmax_jvp(
    axis: int, epsilon: float, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Array, Array]:
    x, where = primals
    x_dot = tangents[0]
    log_probs = _log_ev_softmax(x, where, axis, epsilon)
    acc = _accumulation_dtype(x.dtype)
    # p_eps through its own custom_jvp keeps every higher derivative closed-form;
    # under jit XLA shares the row statistics of the two calls.
    p = _ev_softmax(x, where, axis, epsilon).astype(acc)
    valid = jax.lax.stop_gradient(_statistics(x.astype(acc), where, axis)[1])
    t = x_dot.astype(acc)
    return log_probs, (valid * (t - _inner(p, t, axis))).astype(x.dtype)


def _scoped(name: str, fun: Callable[..., Array]) -> Callable[..., Array]:
    """``fun`` jitted with static ``axis``/``epsilon``, labelled ``<package>.<name>``."""

    @functools.wraps(fun)
    def labelled(x: Array, where: Array | None, axis: int, epsilon: float) -> Array:
        with jax.named_scope(f"{_SCOPE}.{name}"):
            return fun(x, where, axis, epsilon)

    labelled.__name__ = name
    return jax.jit(labelled, static_argnums=(2, 3))


_ev_softmax_jit = _scoped("ev_softmax", _ev_softmax)
_log_ev_softmax_jit = _scoped("log_ev_softmax", _log_ev_softmax)


def ev_softmax(x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace) -> Array:
    """ev-softmax of a JAX array: jitted, with the closed-form ``custom_jvp``."""
    return _ev_softmax_jit(x, where, axis, epsilon)


def log_ev_softmax(
    x: Array, *, axis: int, epsilon: float, where: Array | None, xp: Namespace
) -> Array:
    """log ev-softmax of a JAX array: jitted, with the closed-form ``custom_jvp``."""
    return _log_ev_softmax_jit(x, where, axis, epsilon)
