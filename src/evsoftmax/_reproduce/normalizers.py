"""The four normalizers, looked up in ONE place.

Each name maps to a function of torch logits along the last axis. ev-softmax
always comes from evsoftmax. softmax, sparsemax and entmax-1.5 come from
evsoftmax when it exports them (``getattr(evsoftmax, name)``); otherwise from
the peer implementations in the fallback section below, which can be dropped
once evsoftmax ships all of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

import torch

__all__ = [
    "LABELS",
    "Normalizer",
    "ev_softmax",
    "log_ev_softmax",
    "log_softmax",
    "lookup",
    "missing_peers",
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
    native = getattr(_package, name, None)
    if native is not None:
        return lambda logits: native(logits, axis=-1)  # type: ignore[no-any-return]
    return _FALLBACK[name]


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax along the last axis (evsoftmax's when it has one)."""
    native = getattr(_package, "log_softmax", None)
    if native is not None:
        return native(logits, axis=-1)  # type: ignore[no-any-return]
    return torch.log_softmax(logits, dim=-1)


def ev_softmax(logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """ev-softmax (``epsilon = 0``) or its training-time family along the last axis."""
    return _package.ev_softmax(logits, axis=-1, epsilon=epsilon)  # type: ignore[no-any-return]


def log_ev_softmax(logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Log of :func:`ev_softmax`, computed in log space (finite for ``epsilon > 0``)."""
    return _package.log_ev_softmax(logits, axis=-1, epsilon=epsilon)  # type: ignore[no-any-return]


# --- Fallback: peer implementations while evsoftmax lacks the baselines. ------------
# Used only when ``getattr(evsoftmax, name)`` finds nothing. The ``entmax`` package
# (Peters et al.) is torch-native; it is a peer library, not part of evsoftmax.


def _entmax_peer(name: str) -> Normalizer:
    def normalize(logits: torch.Tensor) -> torch.Tensor:
        try:
            import entmax
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"the {name} baseline needs evsoftmax.{name} or the 'entmax' package "
                "(pip install entmax)"
            ) from error
        return getattr(entmax, name)(logits, dim=-1)  # type: ignore[no-any-return]

    return normalize


def missing_peers(names: tuple[str, ...]) -> list[str]:
    """The peer packages the fallback needs for ``names`` and cannot import."""
    needed = [n for n in names if n in ("sparsemax", "entmax15") and not hasattr(_package, n)]
    return ["entmax"] if needed and importlib.util.find_spec("entmax") is None else []


_FALLBACK: dict[str, Normalizer] = {
    "softmax": lambda logits: torch.softmax(logits, dim=-1),
    "sparsemax": _entmax_peer("sparsemax"),
    "entmax15": _entmax_peer("entmax15"),
}
