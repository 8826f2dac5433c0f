"""PyTorch paths for the baselines: native forwards and closed-form entmax derivatives.

``softmax``/``log_softmax`` call ``torch.softmax``/``torch.log_softmax`` (native
autograd and speed) with the masking rules of the array-API versions.
``sparsemax``, ``entmax15`` and ``entmax_bisect`` run the same algorithms as
the array-API versions (``_sparsemax``, ``_entmax``), written in plain torch
operations so that ``torch.compile`` traces them without graph breaks, inside
a ``torch.autograd.Function`` whose backward and forward-mode JVP are the
closed form :func:`evsoftmax._entmax.entmax_jvp`. Being written in torch
operations on the saved output, the derivatives are differentiable again
(double backward), and ``generate_vmap_rule`` makes the Function work under
``torch.func`` (``grad``, ``vmap``, ``jvp``).

On eager CPU tensors the forward and the (first-order) backward run in the
compiled kernels of :mod:`evsoftmax._ext` instead (:mod:`.baseline_kernels`),
which give the same results several times faster than the sort-based ops.

Masks are applied by filling excluded entries with ``-inf`` first (which the
array-API versions treat exactly like ``where=False``); the fill's backward
gives excluded entries a zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ... import _entmax
from ..._lib._typing import Array, Namespace
from ..._rows import CLIP
from . import baseline_kernels

__all__ = ["entmax15", "entmax_bisect", "log_softmax", "softmax", "sparsemax"]


def _masked(x: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    """``x`` with the entries outside ``where`` set to ``-inf``."""
    return x if where is None else x.masked_fill(~where, -math.inf)


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype.itemsize < 4 else x.dtype


# -- softmax ---------------------------------------------------------------------------------


def _known_false(flag: torch.Tensor) -> bool:
    """Whether ``flag`` (a 0-d bool) is False and eager code may branch on it.

    Under ``torch.compile`` or a functorch transform (``vmap``) data-dependent
    branching is not possible: the answer is then False and callers take their
    general path.
    """
    if torch.compiler.is_compiling():
        return False
    try:
        return not bool(flag)
    except RuntimeError:  # a batched tensor under torch.func.vmap
        return False


def _native_inputs(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, empty_rows)`` for ``torch.(log_)softmax`` of ``-inf``-masked ``x``.

    ``-inf`` entries already get 0 (``-inf``) from the native ops; only rows
    without any valid entry need care: they are computed as zeros, so the op
    and its backward stay finite, and overwritten by the caller.
    """
    empty_rows = x.amax(dim=axis, keepdim=True) == -math.inf
    return x.masked_fill(empty_rows, 0.0), empty_rows


def softmax(x: torch.Tensor, *, axis: int, where: torch.Tensor | None, xp: Namespace) -> Array:
    """``torch.softmax`` over the valid entries; rows without any give zeros."""
    x = _masked(x, where)
    acc = _accumulation_dtype(x)
    if _known_false((x.amax(dim=axis) == -math.inf).any()):
        # No empty row (the common case): the native op alone, one output buffer.
        return torch.softmax(x, dim=axis, dtype=acc).to(x.dtype)
    scores, empty_rows = _native_inputs(x, axis)
    probs = torch.softmax(scores, dim=axis, dtype=acc)
    return probs.masked_fill(empty_rows, 0.0).to(x.dtype)


def log_softmax(x: torch.Tensor, *, axis: int, where: torch.Tensor | None, xp: Namespace) -> Array:
    """``torch.log_softmax`` over the valid entries; rows without any give ``-inf``."""
    x = _masked(x, where)
    acc = _accumulation_dtype(x)
    # A row minimum of -inf marks a row with excluded entries (a NaN row has a NaN
    # minimum, but its output is NaN throughout either way).
    if _known_false((x.amin(dim=axis) == -math.inf).any()):
        # No excluded entry (the common case): the native op alone.
        return torch.log_softmax(x, dim=axis, dtype=acc).to(x.dtype)
    scores, _ = _native_inputs(x, axis)
    log_probs = torch.log_softmax(scores, dim=axis, dtype=acc)
    # Selecting per entry gives the -inf outputs a zero derivative (NaN rows stay NaN).
    keep = (x != -math.inf) | log_probs.isnan()
    return torch.where(keep, log_probs, -math.inf).to(x.dtype)


# -- sparsemax and entmax: the algorithms of _sparsemax and _entmax in torch ops --------------


def _clipped_scores(
    x: torch.Tensor, axis: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(valid, z, bad)`` as in ``_rows.clipped_scores`` (excluded entries are -inf)."""
    x = x.to(_accumulation_dtype(x))
    row_max = x.amax(dim=axis, keepdim=True)
    bad = row_max.isnan() | (row_max == math.inf)
    row_max = torch.where(bad | (row_max == -math.inf), 0.0, row_max)
    z = ((x - row_max) * scale).clamp_min(CLIP)
    return x != -math.inf, z, bad


def _finish(probs: torch.Tensor, valid: torch.Tensor, bad: torch.Tensor, dtype: Any) -> Any:
    probs = torch.where(valid, probs, 0.0)
    return torch.where(bad, math.nan, probs).to(dtype)


def _ranks(z: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * z.ndim
    shape[axis] = z.shape[axis]
    return torch.arange(1, z.shape[axis] + 1, dtype=z.dtype, device=z.device).reshape(shape)


def _sparsemax_forward(x: torch.Tensor, axis: int) -> Any:
    valid, z, bad = _clipped_scores(x, axis, 1.0)
    ordered = z.sort(dim=axis, descending=True).values
    tau = ((ordered.cumsum(dim=axis) - 1.0) / _ranks(z, axis)).amax(dim=axis, keepdim=True)
    return _finish((z - tau).clamp_min(0.0), valid, bad, x.dtype)


def _entmax15_forward(x: torch.Tensor, axis: int) -> Any:
    valid, z, bad = _clipped_scores(x, axis, 0.5)
    ordered = z.sort(dim=axis, descending=True).values
    rank = _ranks(z, axis)
    mean = ordered.cumsum(dim=axis) / rank
    mean_sq = (ordered * ordered).cumsum(dim=axis) / rank
    delta = ((1.0 - rank * (mean_sq - mean * mean)) / rank).clamp_min(0.0)
    candidates = mean - delta.sqrt()
    size = (candidates <= ordered).sum(dim=axis, keepdim=True)
    # NaN rows have no support (size 0); their output is NaN anyway.
    tau = candidates.gather(axis, (size - 1).clamp_min(0))
    return _finish((z - tau).clamp_min(0.0) ** 2, valid, bad, x.dtype)


def _bisect_forward(x: torch.Tensor, axis: int, alpha: float, n_iter: int) -> Any:
    valid, z, bad = _clipped_scores(x, axis, alpha - 1.0)
    count = valid.sum(dim=axis, keepdim=True).clamp_min(1).to(z.dtype)
    tau_lo = torch.full_like(count, -1.0)
    width = 1.0 - count.reciprocal() ** (alpha - 1.0)
    for _ in range(n_iter):
        width = width / 2.0
        tau_mid = tau_lo + width
        mass = (z - tau_mid).clamp_min(0.0) ** (1.0 / (alpha - 1.0))
        tau_lo = torch.where(mass.sum(dim=axis, keepdim=True) >= 1.0, tau_mid, tau_lo)
    probs = (z - tau_lo).clamp_min(0.0) ** (1.0 / (alpha - 1.0))
    total = probs.sum(dim=axis, keepdim=True)  # >= 1 unless the row is fully masked
    return _finish(probs / torch.where(total > 0, total, 1.0), valid, bad, x.dtype)


class _EntmaxFunction(torch.autograd.Function):
    """An alpha-entmax map with the closed-form VJP ``s g - s <s, g> / sum(s)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        x: torch.Tensor,
        forward: Callable[[torch.Tensor], Array],
        alpha: float,
        axis: int,
        xp: Namespace,
    ) -> Array:
        return forward(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _, _, ctx.alpha, ctx.axis, ctx.xp = inputs
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        # Grad mode is on in a backward only for create_graph (double backward), which
        # needs the torch-op formula.
        if not torch.is_grad_enabled() and baseline_kernels.applies(probs, grad):
            vjp = baseline_kernels.vjp(probs, grad, ctx.axis, ctx.alpha)
        else:
            vjp = _entmax.entmax_jvp(probs, grad, alpha=ctx.alpha, axis=ctx.axis, xp=ctx.xp)
        return vjp, None, None, None, None


class _EntmaxFunctionWithJvp(_EntmaxFunction):
    """The same map with forward-mode AD (the same formula: the Jacobian is symmetric).

    Kept apart because ``torch.compile`` cannot trace a Function that defines ``jvp``.
    """

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _EntmaxFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(output)

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, *_: Any) -> Array:
        (probs,) = ctx.saved_tensors
        return _entmax.entmax_jvp(probs, tangent, alpha=ctx.alpha, axis=ctx.axis, xp=ctx.xp)


def _entmax_apply(
    x: torch.Tensor,
    where: torch.Tensor | None,
    forward: Callable[[torch.Tensor], Array],
    alpha: float,
    axis: int,
    xp: Namespace,
) -> Array:
    function = _EntmaxFunction if torch.compiler.is_compiling() else _EntmaxFunctionWithJvp
    return function.apply(_masked(x, where), forward, alpha, axis, xp)  # type: ignore[no-untyped-call]


def _forward(
    x: torch.Tensor, name: str, ops_forward: Callable[[torch.Tensor], Array], **params: Any
) -> Callable[[torch.Tensor], Array]:
    """The compiled kernel of baseline ``name`` when it applies to ``x``, else ``ops_forward``."""
    if not baseline_kernels.applies(x):
        return ops_forward
    axis = params.pop("axis")
    return lambda z: baseline_kernels.forward(name, z, axis, **params)


def sparsemax(x: torch.Tensor, *, axis: int, where: torch.Tensor | None, xp: Namespace) -> Array:
    """Sparsemax with backward ``g_S - mean(g_S)`` on the support ``S``."""
    forward = _forward(x, "sparsemax", lambda z: _sparsemax_forward(z, axis), axis=axis)
    return _entmax_apply(x, where, forward, 2.0, axis, xp)


def entmax15(x: torch.Tensor, *, axis: int, where: torch.Tensor | None, xp: Namespace) -> Array:
    """1.5-entmax with its closed-form backward (``s = sqrt(p)``)."""
    forward = _forward(x, "entmax15", lambda z: _entmax15_forward(z, axis), axis=axis)
    return _entmax_apply(x, where, forward, 1.5, axis, xp)


def entmax_bisect(
    x: torch.Tensor,
    *,
    alpha: float,
    axis: int,
    n_iter: int,
    where: torch.Tensor | None,
    xp: Namespace,
) -> Array:
    """alpha-entmax by bisection with its closed-form backward (``s = p^(2-alpha)``)."""

    def ops_forward(z: torch.Tensor) -> Any:
        return _bisect_forward(z, axis, alpha, n_iter)

    params = {"axis": axis, "alpha": alpha, "n_iter": n_iter}
    forward = _forward(x, "entmax_bisect", ops_forward, **params)
    return _entmax_apply(x, where, forward, alpha, axis, xp)
