"""PyTorch autodiff hooks for the baselines: native softmax, closed-form entmax backward.

``softmax``/``log_softmax`` call ``torch.softmax``/``torch.log_softmax`` (native
autograd and speed) with the masking rules of the array-API versions.
``sparsemax``, ``entmax15`` and ``entmax_bisect`` run the array-API forward
inside a ``torch.autograd.Function`` whose backward and forward-mode JVP are
the closed form :func:`evsoftmax._entmax.entmax_jvp`; being written in torch
operations on the saved output, they are differentiable again (double
backward), and ``generate_vmap_rule`` makes the Function work under
``torch.func`` (``grad``, ``vmap``, ``jvp``).

Masks are applied by filling excluded entries with ``-inf`` first (which the
array-API versions treat exactly like ``where=False``); the fill's backward
gives excluded entries a zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .. import _entmax, _sparsemax
from .._lib._typing import Array, Namespace

__all__ = ["entmax15", "entmax_bisect", "log_softmax", "softmax", "sparsemax"]


def _masked(x: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    """``x`` with the entries outside ``where`` set to ``-inf``."""
    return x if where is None else x.masked_fill(~where, -math.inf)


def _native_inputs(
    x: torch.Tensor, where: torch.Tensor | None, axis: int
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype | None]:
    """``(scores, valid, acc)`` for ``torch.(log_)softmax``.

    Rows without a valid entry are replaced by zeros so the native op (and its
    backward) stays finite there; the caller overwrites the excluded entries
    (except in NaN rows, NaN throughout), which gives their outputs a zero derivative.
    """
    x = _masked(x, where)
    valid = x != -math.inf
    acc = torch.float32 if torch.finfo(x.dtype).bits < 32 else None
    return torch.where(valid.any(dim=axis, keepdim=True), x, 0.0), valid, acc


def softmax(
    x: torch.Tensor, *, axis: int, where: torch.Tensor | None, xp: Namespace
) -> torch.Tensor:
    """``torch.softmax`` over the valid entries; rows without any give zeros."""
    scores, valid, acc = _native_inputs(x, where, axis)
    probs = torch.softmax(scores, dim=axis, dtype=acc)
    return torch.where(valid | probs.isnan(), probs, 0.0).to(x.dtype)


def log_softmax(
    x: torch.Tensor, *, axis: int, where: torch.Tensor | None, xp: Namespace
) -> torch.Tensor:
    """``torch.log_softmax`` over the valid entries; rows without any give ``-inf``."""
    scores, valid, acc = _native_inputs(x, where, axis)
    log_probs = torch.log_softmax(scores, dim=axis, dtype=acc)
    return torch.where(valid | log_probs.isnan(), log_probs, -math.inf).to(x.dtype)


class _EntmaxFunction(torch.autograd.Function):
    """An alpha-entmax map with the closed-form JVP/VJP ``s t - s <s, t> / sum(s)``."""

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
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        vjp = _entmax.entmax_jvp(probs, grad, alpha=ctx.alpha, axis=ctx.axis, xp=ctx.xp)
        return vjp, None, None, None, None

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
    return _EntmaxFunction.apply(_masked(x, where), forward, alpha, axis, xp)  # type: ignore[no-untyped-call]


def sparsemax(x: torch.Tensor, *, axis: int, where: torch.Tensor | None, xp: Namespace) -> Array:
    """Sparsemax with backward ``g_S - mean(g_S)`` on the support ``S``."""

    def forward(z: torch.Tensor) -> Array:
        return _sparsemax.sparsemax(z, axis=axis, where=None, xp=xp)

    return _entmax_apply(x, where, forward, 2.0, axis, xp)


def entmax15(x: torch.Tensor, *, axis: int, where: torch.Tensor | None, xp: Namespace) -> Array:
    """1.5-entmax with its closed-form backward (``s = sqrt(p)``)."""

    def forward(z: torch.Tensor) -> Array:
        return _entmax.entmax15(z, axis=axis, where=None, xp=xp)

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

    def forward(z: torch.Tensor) -> Array:
        return _entmax.entmax_bisect(z, alpha=alpha, axis=axis, n_iter=n_iter, where=None, xp=xp)

    return _entmax_apply(x, where, forward, alpha, axis, xp)
