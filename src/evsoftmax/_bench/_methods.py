"""What is timed: ev-softmax, the native softmax, the paper's reference composition, peers."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._lib._compat import array_namespace
from ._backends import Backend

__all__ = ["BASELINE", "COPY", "Method", "methods", "reference_composition"]

BASELINE = "softmax"
COPY = "copy"
# evsoftmax normalizers timed when the installed version has them.
_OPTIONAL = ("sparsemax", "entmax15")


@dataclass(frozen=True)
class Method:
    """One timed function of ``x`` (last axis) and what it is."""

    key: str
    description: str
    fn: Callable[[Any], Any]
    differentiable: bool = True


def reference_composition(
    x: Any, *, epsilon: float, softmax: Callable[[Any], Any], xp: Any = None
) -> Any:
    r"""The paper's reference code, written from its formula: a post-hoc masked softmax.

    .. math::

        p = \frac{\operatorname{softmax}(x) \odot (1\{x \ge \bar x\} + \varepsilon)}
                 {\sum \operatorname{softmax}(x) \odot (1\{x \ge \bar x\} + \varepsilon)}

    Four passes over the row and two extra full-size temporaries: the plain
    composition that :func:`evsoftmax.ev_softmax` is measured against.
    """
    xp = array_namespace(x) if xp is None else xp
    keep = xp.astype(x >= xp.mean(x, axis=-1, keepdims=True), x.dtype)
    weights = softmax(x) * (keep + epsilon if epsilon else keep)
    return weights / xp.sum(weights, axis=-1, keepdims=True)


def _package() -> Any:
    """The evsoftmax package itself, by relative name (so a vendored copy uses itself)."""
    return importlib.import_module("..", __package__)


def _evsoftmax(name: str, **kwargs: Any) -> Callable[[Any], Any]:
    evsoftmax = _package()
    function = getattr(evsoftmax, name)
    return functools.partial(function, axis=-1, **kwargs)


def methods(backend: Backend, epsilon: float) -> list[Method]:
    """Every method to time on ``backend``: native softmax first, the copy yardstick last."""
    evsoftmax = _package()

    def reference(epsilon: float) -> Callable[[Any], Any]:
        return functools.partial(reference_composition, epsilon=epsilon, softmax=backend.softmax)

    found = [
        Method(BASELINE, backend.native_softmax, backend.softmax),
        Method("ev_softmax", "evsoftmax.ev_softmax(x, epsilon=0)", _evsoftmax("ev_softmax")),
        Method(
            "ev_softmax_eps",
            f"evsoftmax.ev_softmax(x, epsilon={epsilon:g})",
            _evsoftmax("ev_softmax", epsilon=epsilon),
        ),
        Method("reference", "paper's composition, epsilon=0", reference(epsilon=0.0)),
        Method(
            "reference_eps",
            f"paper's composition, epsilon={epsilon:g}",
            reference(epsilon=epsilon),
        ),
    ]
    found += [
        Method(name, f"evsoftmax.{name}(x)", _evsoftmax(name))
        for name in _OPTIONAL
        if hasattr(evsoftmax, name)
    ]
    found += [Method(key, f"{key}(x, dim=-1)", fn) for key, fn in backend.peers().items()]
    found.append(Method(COPY, backend.copy_op, backend.copy, differentiable=False))
    return found
