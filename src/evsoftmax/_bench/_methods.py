"""What is timed: ev-softmax, the native softmax, the paper's reference composition, peers."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._lib._compat import array_namespace
from ._backends import Backend
from ._cases import Case

__all__ = [
    "BASELINE",
    "COPY",
    "EV",
    "LOG_BASELINE",
    "LOG_EV",
    "Method",
    "baseline_methods",
    "methods",
    "reference_composition",
    "variant_methods",
]

BASELINE = "softmax"
COPY = "copy"
EV = "ev_softmax"
LOG_BASELINE = "log_softmax"
LOG_EV = "log_ev_softmax"
# evsoftmax normalizers timed when the installed version has them.
_OPTIONAL = ("sparsemax", "entmax15")


@dataclass(frozen=True)
class Method:
    """One timed function of ``x`` (and of the case's mask, if it has one) and what it is.

    Its ratio is its median time over that of the method ``peer`` in the same run.
    """

    key: str
    description: str
    fn: Callable[..., Any]
    differentiable: bool = True
    peer: str = BASELINE


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


def variant_methods(backend: Backend, case: Case, epsilon: float) -> list[Method]:
    """The peer and ours for one variant case: ``softmax`` and ``ev_softmax`` (or their logs).

    The peer is the library's softmax of the same layout: of the ``-inf``-filled
    input for a mask (``jax.nn.softmax(where=)`` for JAX); ``log_softmax`` against
    ``log_ev_softmax`` with ε. A masked case's functions take the mask as a second
    argument, so that JIT compilers see it as an input, not a constant.
    """
    evsoftmax = _package()
    axis = case.axis
    if case.log:
        peer = Method(
            LOG_BASELINE,
            f"{backend.native_softmax}'s log-softmax, axis={axis}",
            functools.partial(backend.log_softmax, axis=axis),
            peer=LOG_BASELINE,
        )
        ours = Method(
            LOG_EV,
            f"evsoftmax.log_ev_softmax(x, axis={axis}, epsilon={epsilon:g})",
            functools.partial(evsoftmax.log_ev_softmax, axis=axis, epsilon=epsilon),
            peer=LOG_BASELINE,
        )
        return [peer, ours]
    if case.where:
        return [
            Method(
                BASELINE,
                f"{backend.native_softmax} of the -inf-filled input, axis={axis}",
                functools.partial(_masked, backend.softmax, axis=axis),
            ),
            Method(
                EV,
                f"evsoftmax.ev_softmax(x, axis={axis}, where=mask)",
                functools.partial(_masked, evsoftmax.ev_softmax, axis=axis),
            ),
        ]
    return [
        Method(
            BASELINE,
            f"{backend.native_softmax}, axis={axis}",
            functools.partial(backend.softmax, axis=axis),
        ),
        Method(
            EV,
            f"evsoftmax.ev_softmax(x, axis={axis})",
            functools.partial(evsoftmax.ev_softmax, axis=axis),
        ),
    ]


def _masked(fn: Callable[..., Any], x: Any, mask: Any, *, axis: int) -> Any:
    return fn(x, axis=axis, where=mask)


def baseline_methods(backend: Backend) -> list[Method]:
    """evsoftmax's sparsemax, entmax15 and entmax_bisect, each against the ``entmax`` package's.

    Empty when the backend has no such peers (the package is torch's, and not installed).
    """
    evsoftmax = _package()
    found = []
    for name, theirs in backend.baseline_peers().items():
        peer = f"entmax.{name}"
        found.append(Method(name, f"evsoftmax.{name}(x)", getattr(evsoftmax, name), peer=peer))
        found.append(Method(peer, f"{peer}(x, dim=-1)", theirs, peer=peer))
    return found
