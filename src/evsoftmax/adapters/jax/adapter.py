r"""JAX adapter: ev-softmax with a closed-form ``jax.custom_jvp``, one XLA form and the kernel.

The three public functions are jitted (``axis`` and ``epsilon`` static); the
two normalizers carry a ``jax.custom_jvp`` whose rule is the closed form of DESIGN §2,

.. math::

    \dot p = p \odot (\dot x - \langle p, \dot x\rangle), \qquad
    \dot{(\log p)} = 1_V \odot (\dot x - \langle p_\varepsilon, \dot x\rangle),

so forward mode, reverse mode (JAX transposes the linear rule) and every
higher order use it, and no gradient ever flows through the threshold. Entries
outside ``V`` (``where`` false or ``-inf``) get exactly zero tangents and
cotangents because ``p`` is exactly zero there; a row with no valid entry has
``p = 0`` everywhere and hence zero gradient, never NaN.

Two execution paths, one recipe
-------------------------------
The forward pass is one primitive (``<package>_ev_softmax_rows``) with two
lowerings, both transcribing DESIGN §4's numerical recipe:

* **the XLA form** (:func:`_xla_form`), everywhere: accelerators, CPUs without
  the compiled kernel (or with ``EVSOFTMAX_NO_CPU_KERNELS=1``), exports, and
  computations partitioned over several devices, which XLA's partitioner then
  keeps sharded (rows are independent; a sharded normalized axis gets its
  all-reduces);
* **the compiled CPU kernel** (:mod:`.kernels`, an XLA FFI custom call) on the
  CPU when it is built, the lowering is local to one device (plain ``jit`` on
  one device, or the body of a ``shard_map``) and not for ``jax.export``
  (:func:`.kernels.serves`), and it wins on the dtype and row length
  (:func:`.kernels.takes`).

Which one runs is decided when the computation is lowered, so one trace serves
every platform, ``shard_map`` and ``jax.export`` see ordinary JAX values, and
a ``vmap`` just folds the batch into the array (rows are independent).
The primitive takes ``x`` in its own dtype (half precision is computed in
float32 by both lowerings) and the ``where`` mask in its own broadcastable
shape: the XLA form applies it as ``-inf`` and the kernel reads it beside the
scores, so masked entries behave exactly like ``-inf`` entries (DESIGN §4),
a masked NaN cannot poison its row, and no full-size masked copy is built
for the kernel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from ... import _core, _ext
from ..._lib._typing import Array, Namespace
from . import kernels as _jax_kernels
from .vjp import ev_softmax_vjp, log_ev_softmax_tangent

__all__ = ["ev_softmax", "ev_softmax_support", "log_ev_softmax"]

_SCOPE = __name__.split(".")[0]


def _accumulation_dtype(dtype: Any) -> Any:
    """float32 for half precision, else ``dtype`` itself (mirrors the core)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


def _overflow_scale(length: int) -> float:
    """``2**-k`` with ``2**k >= 2 * length``: scaled scores whose sums cannot overflow."""
    return math.ldexp(1.0, -max(1, math.ceil(math.log2(2 * length))))


def _threshold(x: Array, row_max: Array, valid: Array, axis: int, big: float) -> Array:
    """Per row: the threshold and the scale the support test compares scores at.

    DESIGN §4: the threshold is the *sum* of the valid shifted scores divided
    once by the valid count (so an entry equal to an exactly representable mean
    stays in). Shifted scores are ``<= 0`` and so is their rounded mean, so the
    row maximum (shifted score 0) is always in.

    A row whose shift or sum may overflow (mean below ``-big / K``, which every
    row with an overflowing shift or sum reaches: its clamped sum is ``<= -big``)
    is compared at scale ``2**-k`` instead (``t = x * 2**-k - max * 2**-k`` against
    the mean of the unshifted ``x * 2**-k`` minus ``max * 2**-k``, with
    ``2**k >= 2K``: neither the differences nor the sum can overflow), which
    gives the exact mean's support; such a row spans more than ``big / K``, so
    scaling loses nothing that could move an entry across its threshold.
    Both sums run in the same pass; the choice is made per row in arithmetic
    (``f`` is exactly 0 or 1), without a select, for the reasons in
    :func:`_xla_form`.
    """
    length = x.shape[axis]
    scale = _overflow_scale(length)
    count = jnp.maximum(jnp.sum(valid, axis=axis, keepdims=True), 1.0)
    plain = jnp.sum(jnp.maximum(x - row_max, -big) * valid, axis=axis, keepdims=True) / count
    # Unshifted: past the dtype's range the shift no longer makes the summands
    # smaller, and without it an exact mean (0 for [m, -m, 0]) is summed exactly.
    scaled = jnp.maximum(x * scale, -big) * valid
    scaled_mean = jnp.sum(scaled, axis=axis, keepdims=True) / count - row_max * scale
    # f = 1 where -plain >= big / K, else 0, by the gate of _xla_form (a clamp
    # would leave the YNNPACK fusion; a K / big factor is flushed to 0 on the CPU).
    f = jnp.exp(jnp.minimum(big * jnp.floor(-plain - big / length), 0.0))
    return f * scaled_mean + (1.0 - f) * jnp.maximum(plain, -big), f * scale + (1.0 - f)


def _lift_empty(total: Array) -> Array:
    """``max(total, 1)`` for totals that are 0 or ``>= 1``, keeping NaN.

    A valid row's maximum alone contributes exactly 1 to its total, so only
    empty rows have a total below 1 (namely 0). ``|t - 1/2| + 1/2`` maps 0 to 1
    and every ``t >= 1`` to itself exactly (below ``2**23`` in float32), and
    unlike ``max``, which drops NaN inside YNNPACK fusions, it keeps a NaN
    total NaN.
    """
    return jnp.abs(total - 0.5) + 0.5


def _xla_form(x: Array, *, axis: int, epsilon: float, log: bool) -> Array:
    """ev-softmax (or its log) of ``x`` (accumulation dtype, ``-inf`` = excluded), in XLA.

    DESIGN §4's recipe: valid entries only, shift by the valid row maximum,
    the support from :func:`_threshold`, weights ``exp(x - max)`` times 1 on
    the support and ``ε/(1+ε)`` off it (finite for every finite ε), normalized
    by their sum.

    It is written for XLA:CPU, which hands reductions and the arithmetic around
    them to YNNPACK fusions that take arithmetic only (never a comparison or a
    select; their ``max``/``min`` drop NaN): a select between two reductions
    splits the work into passes that each write a full-size temporary (4-6x
    ``jax.nn.softmax`` instead of about 2x). Hence exact indicators from
    arithmetic: ``valid = max(x - max(x, -big) + 1, 0)`` is 1, or 0 for
    ``-inf``; ``floor(z) >= 0`` exactly when ``z >= 0``, so
    ``gate = big * floor(t - threshold)`` is ``>= 0`` on the support and
    ``<= -big`` off it, and since shifted scores are ``<= 0``,
    ``exp(min(shifted, gate))`` is ``exp(shifted)`` on the support and exactly
    0 off it (``max(exp(min(gate, 0)), ε/(1+ε))`` is exactly 1 or ``ε/(1+ε)``).
    NaN or ``+inf`` among the valid entries reach the row total through plain
    subtraction and ``exp``, which makes the whole row NaN; a row with no
    valid entry gives zeros (``-inf`` for the log).
    """
    big = float(np.finfo(x.dtype).max)
    row_max = jnp.maximum(jnp.max(x, axis=axis, keepdims=True), -big)  # empty rows: -big
    valid = jnp.maximum(x - jnp.maximum(x, -big) + 1.0, 0.0)  # 1 if x > -inf else 0
    threshold, scale = _threshold(x, row_max, valid, axis, big)
    gate = big * jnp.floor(x * scale - row_max * scale - threshold)
    shifted = x - row_max  # -inf on excluded entries (and overflowed shifts): weight 0
    ratio, log_ratio = _ext.off_support_weight(epsilon)
    if epsilon == 0.0:
        weights = jnp.exp(jnp.minimum(shifted, gate))
    else:
        weights = jnp.exp(shifted) * jnp.maximum(jnp.exp(jnp.minimum(gate, 0.0)), ratio)
    total = _lift_empty(jnp.sum(weights, axis=axis, keepdims=True))
    if not log:
        return weights / total
    # (A select is fine here: the log form has no speed target.)
    return shifted + jnp.where(gate < 0.0, log_ratio, 0.0) - jnp.log(total)


def _xla_rows(x: Array, *where: Array, axis: int, epsilon: float, log: bool) -> Array:
    """The XLA form on ``x`` in its accumulation dtype (``where`` applied as ``-inf``)."""
    xa = x.astype(_accumulation_dtype(x.dtype))
    if where:
        xa = jnp.where(where[0], xa, -jnp.inf)
    return _xla_form(xa, axis=axis, epsilon=epsilon, log=log).astype(x.dtype)


def _kernel_form(x: Array, *where: Array, axis: int, epsilon: float, log: bool) -> Array:
    """The compiled kernel where it wins (:func:`.kernels.takes`), else the XLA form."""
    if _jax_kernels.takes(x.dtype, x.shape[axis]):
        return _jax_kernels.forward(x, where[0] if where else None, axis, epsilon, log)
    return _xla_rows(x, *where, axis=axis, epsilon=epsilon, log=log)


_FORWARD = Primitive(f"{__name__.rpartition('.adapters.')[0]}_ev_softmax_rows")


def _rows(x: Array, where: Array | None, axis: int, epsilon: float, log: bool) -> Array:
    """ev-softmax (or its log) of ``x`` in its own dtype, ``where`` (x's rank) false = excluded."""
    args = (x,) if where is None else (x, where)
    return _FORWARD.bind(*args, axis=axis, epsilon=epsilon, log=log)  # type: ignore[no-untyped-call,no-any-return]


def _abstract(x: Any, *where: Any, **params: Any) -> Any:
    return x.update(weak_type=False)  # same shape, dtype, sharding and varying axes


def _batch(args: tuple[Any, ...], dims: tuple[Any, ...], *, axis: int, **params: Any) -> Any:
    """Rows are independent: the batch moves to the front and ``axis`` shifts by one.

    An unbatched mask gets a size-1 front dimension, which the kernel and the XLA
    form both broadcast.
    """
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    x = batching.bdim_at_front(args[0], dims[0], size)  # type: ignore[no-untyped-call]
    where = None
    if len(args) > 1:
        where = jnp.moveaxis(args[1], dims[1], 0) if dims[1] is not None else args[1][None]
    return _rows(x, where, axis + 1, **params), 0


def _cpu_lowering(ctx: Any, *args: Any, **params: Any) -> Any:
    """The kernel where it serves this lowering (:func:`.kernels.serves`), else the XLA form."""
    fun = _kernel_form if _jax_kernels.serves(ctx) else _xla_rows
    return mlir.lower_fun(fun, multiple_results=False)(ctx, *args, **params)


_jitted = jax.jit(_rows, static_argnums=(2, 3, 4))


def _eager(x: Array, *where: Array, axis: int, epsilon: float, log: bool) -> Array:
    """Outside a trace, the primitive runs as a jitted call of itself (then lowered)."""
    return _jitted(x, where[0] if where else None, axis, epsilon, log)  # type: ignore[no-any-return]


_FORWARD.def_impl(_eager)  # type: ignore[no-untyped-call]
_FORWARD.def_abstract_eval(_abstract)  # type: ignore[no-untyped-call]
batching.primitive_batchers[_FORWARD] = _batch
mlir.register_lowering(_FORWARD, mlir.lower_fun(_xla_rows, multiple_results=False))
mlir.register_lowering(_FORWARD, _cpu_lowering, platform="cpu")


def _normalize(x: Array, where: Array | None, axis: int, epsilon: float, log: bool) -> Array:
    """ev-softmax or its log along ``axis``, computed in the accumulation dtype, in x's dtype.

    ``where`` keeps its own (broadcastable) shape, padded to ``x``'s rank: the
    kernel broadcasts it while reading, so no full-size mask is built.
    """
    if where is not None:
        where = jnp.asarray(where, dtype=bool)
        shape = jnp.broadcast_shapes(x.shape, where.shape)
        if shape != x.shape:  # a mask of more dimensions than x: x is broadcast up
            x = jnp.broadcast_to(x, shape)
        where = where.reshape((1,) * (x.ndim - where.ndim) + where.shape)
    return _rows(x, where, axis, epsilon, log)


def _inner(probs: Array, tangent: Array, axis: int) -> Array:
    """``<p, t>`` along ``axis``, in the accumulation dtype."""
    return jnp.sum(probs * tangent, axis=axis, keepdims=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _ev_softmax(x: Array, where: Array | None, axis: int, epsilon: float) -> Array:
    return _normalize(x, where, axis, epsilon, False)


@_ev_softmax.defjvp
def _ev_softmax_jvp(
    axis: int, epsilon: float, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Array, Array]:
    x, where = primals
    x_dot = tangents[0]
    probs = _ev_softmax(x, where, axis, epsilon)
    # In x's dtype: the tangent map accumulates half precision in float32 itself.
    return probs, ev_softmax_vjp(probs, x_dot.astype(x.dtype), axis)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _log_ev_softmax(x: Array, where: Array | None, axis: int, epsilon: float) -> Array:
    return _normalize(x, where, axis, epsilon, True)


@_log_ev_softmax.defjvp
def _log_ev_softmax_jvp(
    axis: int, epsilon: float, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Array, Array]:
    x, where = primals
    x_dot = tangents[0]
    log_probs = _log_ev_softmax(x, where, axis, epsilon)
    acc = _accumulation_dtype(x.dtype)
    if acc == x.dtype:
        # p_eps = exp(log p_eps) inside the tangent map's primitive, whose transpose
        # lowers to the kernel's one-pass VJP on the CPU; its derivatives go through the
        # log's own custom_jvp, so every higher derivative stays closed-form, and no
        # second kernel pass is made. x and where (operands the computation holds
        # anyway) tell the valid entries, read only in rows where log p_eps is -inf.
        shape = log_probs.shape
        mask = None if where is None else jnp.asarray(where, dtype=bool)
        if mask is not None:
            mask = mask.reshape((1,) * (len(shape) - mask.ndim) + mask.shape)
        x_full = jnp.broadcast_to(x, shape)
        t = jnp.broadcast_to(x_dot.astype(x.dtype), shape)
        tangent = log_ev_softmax_tangent(log_probs, t, x_full, mask, axis, False, epsilon)
        return log_probs, tangent
    # A half-precision log loses too much for exp(log p_eps) (its rounding grows with
    # |log p|): there p_eps is its own call.
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


@functools.partial(jax.jit, static_argnames=("axis", "xp"))
def _ev_softmax_support_jit(x: Array, where: Array | None, *, axis: int, xp: Namespace) -> Array:
    with jax.named_scope(f"{_SCOPE}.ev_softmax_support"):
        return _core.ev_softmax_support(x, axis=axis, where=where, xp=xp)


def ev_softmax_support(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """The support mask of a JAX array: the core's, jitted.

    Run eagerly, the core's two dozen array operations were each dispatched
    (and, for every new shape, compiled) on their own; jitted they are one
    program per shape and dtype.
    """
    return _ev_softmax_support_jit(x, where, axis=axis, xp=xp)  # type: ignore[no-any-return]
