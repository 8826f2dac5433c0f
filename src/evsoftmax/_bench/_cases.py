"""The case matrix of DESIGN section 6: what is timed beyond the plain float32 shapes.

A :class:`Case` is one input layout (shape, normalized axis, dtype, a ``where``
mask) and one function (``ev_softmax``, or ``log_ev_softmax`` with ε against
``log_softmax``). The plain cases (float32, last axis, no mask) are the
``--shapes`` and the short rows; the *variants* change one thing each. The
groups name what ``--cases`` picks: the variants, ``short`` rows, the
``baselines`` against the ``entmax`` package and the ``memory`` measurements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._shapes import Shape, format_shape

__all__ = [
    "BASELINE_SHAPES",
    "GROUPS",
    "PLAIN",
    "QUICK_BASELINE_SHAPES",
    "Case",
    "parse_groups",
    "short_rows",
    "variant_cases",
]

PLAIN = "shape"
# Every group --cases knows, in the order the report shows them.
GROUPS: tuple[str, ...] = ("short", "where", "axis", "dtype", "log", "baselines", "memory")
# The backends the variants run on: those with a target in DESIGN section 6.
_TARGETED = frozenset({"numpy", "torch", "torch-compile", "jax"})
_FRAMEWORKS = frozenset({"torch", "torch-compile", "jax"})

# (full run, --quick): the short rows, the base shape of the variants, the strided case.
_SHORT = (((262144, 16), (65536, 64)), ((4096, 16), (1024, 64)))
_BASE = ((4096, 1024), (64, 1000))
_STRIDED = ((64, 1024, 64), (8, 64, 8))
_AXIS0 = ((1024, 1024), (64, 64))
BASELINE_SHAPES: tuple[Shape, ...] = ((4096, 128), (1024, 1024), (64, 32000))
QUICK_BASELINE_SHAPES: tuple[Shape, ...] = ((64, 128),)


@dataclass(frozen=True)
class Case:
    """One timed input layout and function, against the native peer of the same layout."""

    shape: Shape
    group: str = PLAIN
    axis: int = -1
    dtype: str = "float32"
    where: bool = False
    log: bool = False
    backends: frozenset[str] | None = None

    @property
    def label(self) -> str:
        """``"4096x1024"``, ``"64x1024x64 axis 1"``, ``"4096x1024 where"``, ..."""
        parts = [format_shape(self.shape)]
        if self.axis not in (-1, len(self.shape) - 1):
            parts.append(f"axis {self.axis}")
        if self.dtype != "float32":
            parts.append(self.dtype)
        if self.where:
            parts.append("where")
        if self.log:
            parts.append("log ε")
        return " ".join(parts)

    def runs_on(self, backend: str) -> bool:
        """Whether ``backend`` times this case."""
        return self.backends is None or backend in self.backends


def parse_groups(text: str) -> tuple[str, ...]:
    """Comma-separated groups of :data:`GROUPS`, ``all`` or ``none``.

    Examples
    --------
    >>> parse_groups("where,dtype")
    ('where', 'dtype')
    """
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if item == "all":
            names.extend(GROUPS)
        elif item and item != "none":
            names.append(item)
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise ValueError(f"unknown case groups {unknown}; choose from {', '.join(GROUPS)}, all")
    return tuple(dict.fromkeys(names))


def short_rows(quick: bool) -> tuple[Shape, ...]:
    """The short-row shapes of the matrix (plain cases, timed with the ``--shapes``)."""
    return _SHORT[quick]


def variant_cases(groups: Iterable[str], quick: bool) -> tuple[Case, ...]:
    """The variants of the chosen groups: each changes the base case in one way."""
    base, strided, axis0 = _BASE[quick], _STRIDED[quick], _AXIS0[quick]
    chosen = set(groups)
    cases = [
        Case(base, "where", where=True, backends=_TARGETED),
        Case(strided, "axis", axis=1, backends=_TARGETED),
        Case(axis0, "axis", axis=0, backends=frozenset({"numpy"})),
        Case(base, "dtype", dtype="float16", backends=_TARGETED),
        Case(base, "dtype", dtype="bfloat16", backends=_FRAMEWORKS),
        Case(base, "dtype", dtype="float64", backends=_TARGETED),
        Case(base, "log", log=True, backends=_TARGETED),
    ]
    return tuple(c for c in cases if c.group in chosen)
