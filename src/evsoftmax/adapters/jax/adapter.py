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

How it is shaped for XLA
------------------------
XLA:CPU hands reductions, and the arithmetic around them, to YNNPACK fusions,
which take arithmetic only (add, sub, mul, div, min, max, floor, exp, ...),
never a comparison or a select, and whose ``max``/``min`` drop NaN instead of
propagating it. A ``jnp.where`` between two reductions therefore splits the
work into several passes that each write a full-size temporary: that is why a
plain composition costs 2.6-2.9x ``jax.nn.softmax``. Hence:

* **Exact indicators from arithmetic.** ``floor(z) >= 0`` exactly when
  ``z >= 0``, so ``gate = big * floor(z)`` is ``>= 0`` on the support and
  ``<= -big`` off it; shifted scores are ``<= 0``, so ``exp(min(shifted, gate))``
  is ``exp(shifted)`` on the support and exactly 0 off it. The
  validity of ``x`` is ``max(x - max(x, -big) + 1, 0)`` (1, or 0 for
  ``-inf``). Row totals below 1 (only empty rows: a valid row's maximum alone
  contributes exactly 1) are lifted to 1 so that empty rows give 0, in a way
  that keeps a NaN total NaN (see :func:`_lift_empty`).
* **One expression where XLA fuses everything** (accelerators, and XLA:CPU
  from ``_FUSED_ROWS`` rows on): the select-free statistics above, in one
  pass of arithmetic.
* **Two paths and one ``lax.cond`` where XLA:CPU splits the work** (fewer
  rows): the row maximum and the mean of the shifted scores are computed
  assuming every entry is valid; their means are all finite exactly when no
  row holds ``-inf``, NaN or ``+inf``, and then a softmax-shaped pass
  finishes. Otherwise, and always with a ``where`` mask, statistics that skip
  invalid entries run instead (invalid entries encoded as ``+1`` next to the
  valid shifted scores, all ``<= 0``, so ``sum(d)`` and ``sum(|d|)`` give the
  valid sum and the invalid count); they cost one more pass over memory.
  Only row vectors cross into the branches and only one branch runs.
* **vmap keeps one branch.** Rows are independent, so a ``custom_vmap`` rule
  moves the batch into the array (``axis + 1``) instead of letting ``vmap``
  turn the ``cond`` into a select of both branches.

A ``where`` mask is applied once, up front, as ``-inf``: masked entries then
behave exactly like ``-inf`` entries (DESIGN §4) and a masked NaN cannot poison
its row. NaN or ``+inf`` among the valid entries reach the row total through
plain subtraction and ``exp``, which makes the whole row NaN.

"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap

from ..._lib._typing import Array, Namespace
from . import kernels as _jax_kernels
from .vjp import ev_softmax_vjp

__all__ = ["ev_softmax", "log_ev_softmax"]

_SCOPE = __name__.split(".")[0]


def _accumulation_dtype(dtype: Any) -> Any:
    """float32 for half precision, else ``dtype`` itself (mirrors the core)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


def _gate(z: Array, big: float) -> Array:
    """``>= 0`` where ``z >= 0`` and ``<= -big`` where ``z < 0``, exactly (NaN stays NaN).

    ``floor(z)`` is ``>= 0`` exactly when ``z >= 0`` and ``<= -1`` otherwise.
    Shifted scores are ``<= 0``, so ``exp(min(shifted, gate))`` is ``exp(shifted)``
    on the support and exactly 0 off it.
    """
    return big * jnp.floor(z)


class _Rows(NamedTuple):
    """Per-entry quantities every output is finished from.

    ``shifted``: score minus the row maximum of the valid entries (so ``<= 0``),
    exactly ``-inf`` on invalid entries; ``gate``: :func:`_gate` of the distance
    to the valid-entry mean of ``shifted``.
    """

    shifted: Array
    gate: Array


def _row_max_and_mean(x: Array, axis: int) -> tuple[Array, Array]:
    """Row maximum and mean of the shifted scores, assuming every entry is valid.

    The mean is non-finite exactly when a row holds -inf, NaN or +inf.
    """
    row_max = jnp.max(x, axis=axis, keepdims=True)
    # A computed divisor: XLA turns division by a constant into an inexact
    # multiplication by its reciprocal, and the core divides by a computed count.
    count = x.shape[axis] + 0.0 * row_max
    return row_max, jnp.sum(x - row_max, axis=axis, keepdims=True) / count


def _rows_without_invalid(x: Array, row_max: Array, mean: Array, big: float) -> _Rows:
    """Row quantities from :func:`_row_max_and_mean` (rows known to be all valid)."""
    shifted = x - row_max
    return _Rows(shifted, _gate(shifted - mean, big))


def _rows_skipping_invalid(x: Array, axis: int, big: float) -> _Rows:
    """Row statistics over the entries that are not ``-inf``: few full-size temporaries.

    For XLA:CPU graphs split into several fusions (fewer than ``_FUSED_ROWS``
    rows), where every array feeding two reductions is written to memory.
    """
    row_max = jnp.maximum(jnp.max(x, axis=axis, keepdims=True), -big)
    valid = jnp.maximum(x - jnp.maximum(x, -big) + 1.0, 0.0)  # 1 if x > -inf else 0
    # Valid entries hold their shifted score (<= 0), invalid ones +1: the sums of
    # d and |d| then give both the valid sum and the invalid count in two plain
    # reductions over one array.
    d = jnp.maximum(x - row_max, -big) * valid + (1.0 - valid)
    total = jnp.sum(d, axis=axis, keepdims=True)
    absolute = jnp.sum(jnp.abs(d), axis=axis, keepdims=True)
    invalid = jnp.round(0.5 * (total + absolute))
    mean = 0.5 * (total - absolute) / jnp.maximum(x.shape[axis] - invalid, 1.0)
    # The statistics may lose a NaN (YNNPACK's max drops it), but the shifted
    # scores carry it to the row total through plain subtraction.
    return _Rows((x - row_max) + jnp.log(valid), _gate(d - mean, big))


def _rows_skipping_invalid_fused(x: Array, axis: int, big: float) -> _Rows:
    """Row statistics over the entries that are not ``-inf``: fewest operations.

    For graphs XLA keeps in one fusion (accelerators; XLA:CPU from
    ``_FUSED_ROWS`` rows on), where the cost is the arithmetic, not the traffic.
    """
    row_max = jnp.maximum(jnp.max(x, axis=axis, keepdims=True), -big)
    shifted = x - row_max
    valid = jnp.maximum(x - jnp.maximum(x, -big) + 1.0, 0.0)  # 1 if x > -inf else 0
    count = jnp.sum(valid, axis=axis, keepdims=True)
    total = jnp.sum(jnp.maximum(shifted, -big) * valid, axis=axis, keepdims=True)
    return _Rows(shifted, _gate(shifted - total / jnp.maximum(count, 1.0), big))


def _lift_empty(total: Array) -> Array:
    """``max(total, 1)`` for totals that are 0 or ``>= 1``, keeping NaN.

    A valid row's maximum alone contributes exactly 1 to its total, so only
    empty rows have a total below 1 (namely 0). ``|t - 1/2| + 1/2`` maps 0 to 1
    and every ``t >= 1`` to itself exactly (below ``2**23`` in float32), and
    unlike ``max``, which drops NaN inside YNNPACK fusions, it keeps a NaN
    total NaN; it also uses ``total`` once, which keeps XLA's fusion whole.
    """
    return jnp.abs(total - 0.5) + 0.5


def _finish(rows: _Rows, axis: int, epsilon: float, log: bool) -> Array:
    """Probabilities (or log-probabilities) from the row quantities."""
    shifted, gate = rows
    if epsilon == 0.0:
        weights = jnp.exp(jnp.minimum(shifted, gate))
    else:
        weights = jnp.exp(shifted) * (jnp.exp(jnp.minimum(gate, 0.0)) + epsilon)  # 1 or eps
    total = _lift_empty(jnp.sum(weights, axis=axis, keepdims=True))
    if not log:
        return weights / total
    # (Selects are fine here: the log form has no speed target, and XLA would
    # simplify log(exp(gate)) back to the finite gate.)
    off = -math.inf if epsilon == 0.0 else math.log(epsilon)
    log_scale = jnp.where(gate < 0.0, off, math.log1p(epsilon))
    return shifted + log_scale - jnp.log(total)


# XLA:CPU keeps a whole chain of row reductions in one YNNPACK fusion only when
# the row statistics have at least this many elements (its minimum size for
# preferring YNNPACK); with fewer rows the chain is split into several fusions.
_FUSED_ROWS = 4096


def _normalize(x: Array, where: Array | None, axis: int, epsilon: float, log: bool) -> Array:
    """ev-softmax or its log along ``axis``, in the accumulation dtype, cast back once.

    On the CPU the compiled kernel runs when it is built (:mod:`.kernels`).
    Without it: accelerators, and XLA:CPU with many rows, get one select-free expression
    that XLA compiles into a single fusion. XLA:CPU with few rows first assumes
    that no entry is ``-inf``/NaN/``+inf`` (two cheap reductions) and, if some
    row mean comes out non-finite, switches with a ``lax.cond`` (one branch
    runs) to statistics that skip invalid entries; a mask always takes that
    path. A ``cond`` is avoided on accelerators, where it would wait for the
    device to hand the predicate to the host.
    """
    acc = _accumulation_dtype(x.dtype)
    big = float(np.finfo(acc).max)
    xa = x.astype(acc)
    if where is not None:
        xa = jnp.where(where, xa, -jnp.inf)

    def fused(xa: Array) -> Array:
        return _finish(_rows_skipping_invalid_fused(xa, axis, big), axis, epsilon, log)

    def careful(xa: Array) -> Array:
        return _finish(_rows_skipping_invalid(xa, axis, big), axis, epsilon, log)

    def fast(xa: Array, row_max: Array, mean: Array) -> Array:
        return _finish(_rows_without_invalid(xa, row_max, mean, big), axis, epsilon, log)

    def cpu(xa: Array) -> Array:
        if _jax_kernels.available():
            return _jax_kernels.forward(xa, axis, epsilon, log)
        if xa.size >= _FUSED_ROWS * xa.shape[axis]:
            return fused(xa)
        if where is not None:
            return careful(xa)
        # Only row vectors cross into the branches, so nothing full-size is
        # materialized before the switch.
        row_max, mean = _row_max_and_mean(xa, axis)
        ok = jnp.all(jnp.isfinite(mean))
        return jax.lax.cond(ok, fast, lambda xa, m, mu: careful(xa), xa, row_max, mean)

    out = jax.lax.platform_dependent(xa, cpu=cpu, default=fused)
    return out.astype(x.dtype)


def _inner(probs: Array, tangent: Array, axis: int) -> Array:
    """``<p, t>`` along ``axis``, in the accumulation dtype."""
    return jnp.sum(probs * tangent, axis=axis, keepdims=True)


def _expand_mask(where: Array, batched: bool, rank: int) -> Array:
    """Give a batched mask (batch dimension first) the rank of the batched input."""
    if not batched:
        return where
    missing = rank - where.ndim
    return where.reshape(where.shape[:1] + (1,) * missing + where.shape[1:])


@functools.cache
def _batched(axis: int, epsilon: float, log: bool) -> Callable[[Array, Array | None], Array]:
    """:func:`_normalize` for one static ``(axis, epsilon, log)``, with a ``vmap`` rule.

    Rows are independent, so a ``vmap`` just moves the batch into the array
    (``axis + 1``). Besides being cheap, this keeps the ``lax.cond`` predicate
    unbatched: a batched predicate would make ``vmap`` run both branches.
    """

    @custom_vmap
    def normalize(x: Array, where: Array | None) -> Array:
        return _normalize(x, where, axis, epsilon, log)

    @normalize.def_vmap
    def _(axis_size: int, in_batched: list[Any], x: Array, where: Array | None) -> Any:
        x_batched, where_batched = in_batched
        if not x_batched:
            x = jnp.broadcast_to(x, (axis_size, *x.shape))
        if where is not None:
            where = _expand_mask(where, bool(where_batched), x.ndim)
        return _batched(axis + 1, epsilon, log)(x, where), True

    return normalize  # type: ignore[no-any-return]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _ev_softmax(x: Array, where: Array | None, axis: int, epsilon: float) -> Array:
    return _batched(axis, epsilon, False)(x, where)


@_ev_softmax.defjvp
def _ev_softmax_jvp(
    axis: int, epsilon: float, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Array, Array]:
    x, where = primals
    x_dot = tangents[0]
    probs = _ev_softmax(x, where, axis, epsilon)
    acc = _accumulation_dtype(x.dtype)
    p, t = probs.astype(acc), x_dot.astype(acc)
    return probs, ev_softmax_vjp(p, t, axis).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _log_ev_softmax(x: Array, where: Array | None, axis: int, epsilon: float) -> Array:
    return _batched(axis, epsilon, True)(x, where)


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
    valid = x != -jnp.inf
    if where is not None:
        valid = valid & where
    t = x_dot.astype(acc)
    return log_probs, jnp.where(valid, t - _inner(p, t, axis), 0.0).astype(x.dtype)


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
