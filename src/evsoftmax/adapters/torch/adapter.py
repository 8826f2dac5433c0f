"""PyTorch adapter: ev-softmax through an autograd Function with the closed-form gradient.

Registered in ``_dispatch.ADAPTER_MODULES["torch"]``; the public functions call
these with validated arguments (a floating tensor, a non-negative ``axis``, a
float ``epsilon``, a boolean ``where`` tensor or None). They work under
``torch.autograd`` (also double backward and ``forward_ad``), ``torch.func``
(``grad``, ``vjp``, ``jvp``, ``vmap``, ``jacrev``, ``jacfwd``) and
``torch.compile(fullgraph=True)``; eager CPU tensors take a fused fast path and
CUDA tensors Triton kernels when triton is installed.

No name is registered globally (an ``autograd.Function`` needs none), so a copy
of evsoftmax vendored inside another package works side by side with this one.
"""

from __future__ import annotations

from typing import Any

import torch

from .autograd import apply
from .ops import empty_result

__all__ = ["empty_like", "ev_softmax", "log_ev_softmax"]


def ev_softmax(
    x: torch.Tensor, *, axis: int, epsilon: float, where: torch.Tensor | None, xp: Any
) -> torch.Tensor:
    """ev-softmax of ``x`` along ``axis``, differentiable in closed form."""
    return apply(x, axis, epsilon, where, False)


def log_ev_softmax(
    x: torch.Tensor, *, axis: int, epsilon: float, where: torch.Tensor | None, xp: Any
) -> torch.Tensor:
    """Logarithm of ev-softmax of ``x`` along ``axis``, differentiable in closed form."""
    return apply(x, axis, epsilon, where, True)


def empty_like(x: torch.Tensor, xp: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The result for an empty ``x``: connected to autograd like ``torch.softmax``'s.

    A result of ``x``'s dtype is computed from ``x`` (its gradient is an empty
    zero tensor); another dtype (a boolean support) is a new tensor.
    """
    if dtype is None or dtype == x.dtype:
        return empty_result(x)
    return torch.zeros(x.shape, dtype=dtype, device=x.device)
