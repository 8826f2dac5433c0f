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

__all__ = ["ev_softmax", "log_ev_softmax"]


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
