r"""JAX adapter: ev-softmax with a closed-form ``jax.custom_jvp``, one XLA form and the kernel.

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
  (:func:`.kernels.serves`), and rows are long enough for it to win
  (:data:`_KERNEL_MIN_LENGTH`).

Which one runs is decided when the computation is lowered, so one trace serves
every platform, ``shard_map`` and ``jax.export`` see ordinary JAX values, and
a ``vmap`` just folds the batch into the array (rows are independent).
A ``where`` mask is applied once, up front, as ``-inf``: masked entries then
behave exactly like ``-inf`` entries (DESIGN §4) and a masked NaN cannot
poison its row.
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

from ... import _ext
from ..._lib._typing import Array, Namespace
from . import kernels as _jax_kernels
from .vjp import ev_softmax_vjp

__all__ = ["ev_softmax", "log_ev_softmax"]

_SCOPE = __name__.split(".")[0]


def _accumulation_dtype(dtype: Any) -> Any:
    """float32 for half precision, else ``dtype`` itself (mirrors the core)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


def _overflow_scale(length: int, dtype: Any) -> float:
    """``2**-k`` with ``2**k >= 2 * length``: scaled scores whose sums cannot overflow."""
    return float(np.ldexp(np.asarray(1.0, dtype), -max(1, math.ceil(math.log2(2 * length)))))


def _support(x: Array, row_max: Array, valid: Array, axis: int) -> Array:
    """DESIGN §4's support: valid entries ``>=`` the mean of the valid shifted scores.

    The threshold is the *sum* of the shifted scores divided once by the valid
    count (an entry equal to an exactly representable mean stays in). Shifted
    scores are ``<= 0`` and so is their rounded mean, so the row maximum
    (shifted score 0) is always in. A row whose valid entries are finite but
    whose shift or sum overflows (a range beyond the dtype's maximum) gets its
    support from the scores scaled by an exact power of two instead
    (``t = x * 2**-k - max * 2**-k`` with ``2**k >= 2n``: neither the
    differences nor their sum can overflow), which is the exact mean's support.
    """
    count = jnp.maximum(jnp.sum(valid, axis=axis, keepdims=True, dtype=x.dtype), 1.0)
    shifted = x - row_max
    threshold = jnp.sum(jnp.where(valid, shifted, 0.0), axis=axis, keepdims=True) / count
    # Finite valid entries make the sum -inf only by overflow (never NaN or +inf).
    overflow = (threshold == -jnp.inf) & jnp.isfinite(row_max)
    scale = _overflow_scale(x.shape[axis], x.dtype)
    scaled = x * scale - row_max * scale
    scaled_threshold = jnp.sum(jnp.where(valid, scaled, 0.0), axis=axis, keepdims=True) / count
    return jnp.where(overflow, scaled >= scaled_threshold, shifted >= threshold)


def _xla_form(x: Array, *, axis: int, epsilon: float, log: bool) -> Array:
    """ev-softmax (or its log) of ``x`` (accumulation dtype, ``-inf`` = excluded), in XLA.

    DESIGN §4's recipe: valid entries only, shift by the valid row maximum,
    support from :func:`_support`, weights ``exp(x - max)`` times 1 on the
    support and ``ε/(1+ε)`` off it (finite for every finite ε), normalized by
    their sum. NaN or ``+inf`` among the valid entries reach every output of
    their row through ``exp`` and the row total; a row with no valid entry
    (total 0) gives zeros (``-inf`` for the log).
    """
    valid = x != -jnp.inf
    row_max = jnp.max(x, axis=axis, keepdims=True)
    row_max = jnp.where(row_max == -jnp.inf, 0.0, row_max)  # empty rows: no -inf - -inf
    support = _support(x, row_max, valid, axis)
    shifted = x - row_max  # -inf on excluded entries, so their weight is exactly 0
    ratio, log_ratio = _ext.off_support_weight(epsilon)
    weights = jnp.exp(shifted)
    if epsilon > 0.0:
        weights = weights * jnp.where(support, 1.0, ratio)
    else:
        weights = jnp.where(support, weights, 0.0 * weights)  # 0·NaN keeps a NaN row NaN
    total = jnp.sum(weights, axis=axis, keepdims=True)
    total = jnp.where(total == 0.0, 1.0, total)  # empty rows (a valid row's max gives 1)
    if not log:
        return weights / total
    return shifted + jnp.where(support, 0.0, log_ratio) - jnp.log(total)


# Rows shorter than this take the XLA form even where the kernel serves: the
# kernel's per-row work does not amortize on such rows (measured in the JAX
# adapter benchmark, see docs/jax.md "Performance").
_KERNEL_MIN_LENGTH = 1


def _kernel_form(x: Array, *, axis: int, epsilon: float, log: bool) -> Array:
    """The compiled kernel on float32/float64 rows long enough, else the XLA form."""
    if x.dtype in (jnp.float32, jnp.float64) and x.shape[axis] >= _KERNEL_MIN_LENGTH:
        return _jax_kernels.forward(x, axis, epsilon, log)
    return _xla_form(x, axis=axis, epsilon=epsilon, log=log)


_FORWARD = Primitive(f"{_SCOPE}_ev_softmax_rows")


def _rows(x: Array, axis: int, epsilon: float, log: bool) -> Array:
    """ev-softmax (or its log) of ``x`` (accumulation dtype, ``-inf`` = excluded)."""
    return _FORWARD.bind(x, axis=axis, epsilon=epsilon, log=log)  # type: ignore[no-untyped-call,no-any-return]


def _abstract(x: Any, **params: Any) -> Any:
    return x.update(weak_type=False)  # same shape, dtype, sharding and varying axes


def _batch(args: tuple[Any, ...], dims: tuple[Any, ...], *, axis: int, **params: Any) -> Any:
    """Rows are independent: the batch moves to the front and ``axis`` shifts by one."""
    (x,), (dim,) = args, dims
    return _rows(jnp.moveaxis(x, dim, 0), axis + 1, **params), 0


def _cpu_lowering(ctx: Any, x: Any, **params: Any) -> Any:
    """The kernel where it serves this lowering (:func:`.kernels.serves`), else the XLA form."""
    fun = _kernel_form if _jax_kernels.serves(ctx) else _xla_form
    return mlir.lower_fun(fun, multiple_results=False)(ctx, x, **params)


_eager = jax.jit(_rows, static_argnums=(1, 2, 3))
_FORWARD.def_impl(lambda x, **p: _eager(x, p["axis"], p["epsilon"], p["log"]))  # type: ignore[no-untyped-call]
_FORWARD.def_abstract_eval(_abstract)  # type: ignore[no-untyped-call]
batching.primitive_batchers[_FORWARD] = _batch
mlir.register_lowering(_FORWARD, mlir.lower_fun(_xla_form, multiple_results=False))
mlir.register_lowering(_FORWARD, _cpu_lowering, platform="cpu")


def _normalize(x: Array, where: Array | None, axis: int, epsilon: float, log: bool) -> Array:
    """ev-softmax or its log along ``axis``, in the accumulation dtype, cast back once."""
    xa = x.astype(_accumulation_dtype(x.dtype))
    if where is not None:
        xa = jnp.where(where, xa, -jnp.inf)
    return _rows(xa, axis, epsilon, log).astype(x.dtype)


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
    acc = _accumulation_dtype(x.dtype)
    p, t = probs.astype(acc), x_dot.astype(acc)
    return probs, ev_softmax_vjp(p, t, axis).astype(x.dtype)


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
