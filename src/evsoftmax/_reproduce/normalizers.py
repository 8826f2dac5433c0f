"""The four normalizers, looked up in ONE place.

Each name maps to a function of torch logits along the last axis, all of them
evsoftmax's own public functions (so the torch adapters' closed-form
gradients are what the experiment trains with).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

__all__ = [
    "LABELS",
    "Normalizer",
    "ev_softmax",
    "log_ev_softmax",
    "log_softmax",
    "lookup",
]

Normalizer = Callable[[torch.Tensor], torch.Tensor]

LABELS = {
    "softmax": "softmax",
    "sparsemax": "sparsemax",
    "entmax15": "entmax-1.5",
    "ev_softmax": "ev-softmax",
}
"""Display names, as the paper writes them."""

# The enclosing package (evsoftmax, or its vendored copy), found relatively.
_package = importlib.import_module("..", __package__)


def lookup(name: str) -> Normalizer:
    """Probabilities along the last axis for the normalizer ``name`` (``epsilon = 0``)."""
    if name == "ev_softmax":
        return lambda logits: ev_softmax(logits, 0.0)
    if name not in LABELS:
        raise ValueError(f"unknown normalizer {name!r}; choose from {sorted(LABELS)}")
    function = getattr(_package, name)
    return lambda logits: function(logits, axis=-1)  # type: ignore[no-any-return]


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax along the last axis."""
    return _package.log_softmax(logits, axis=-1)  # type: ignore[no-any-return]


def ev_softmax(logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """ev-softmax (``epsilon = 0``) or its training-time family along the last axis."""
    return _package.ev_softmax(logits, axis=-1, epsilon=epsilon)  # type: ignore[no-any-return]


def log_ev_softmax(logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Log of :func:`ev_softmax`, computed in log space (finite for ``epsilon > 0``)."""
    return _package.log_ev_softmax(logits, axis=-1, epsilon=epsilon)  # type: ignore[no-any-return]
