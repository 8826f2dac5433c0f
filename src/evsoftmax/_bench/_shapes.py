"""The shapes the benchmark times: named presets, the K-sweep, and ``RxK`` parsing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "DEFAULT_SHAPES",
    "GPU_SHAPES",
    "PRESETS",
    "QUICK_SHAPES",
    "QUICK_SWEEP_KS",
    "QUICK_SWEEP_TOTAL",
    "SWEEP_KS",
    "SWEEP_TOTAL",
    "Shape",
    "format_shape",
    "parse_ints",
    "parse_shapes",
    "sweep_shapes",
    "unique_shapes",
]

Shape = tuple[int, ...]

# The headline shapes: a batch of mid-size rows, an LLM vocabulary row, very long rows.
DEFAULT_SHAPES: tuple[Shape, ...] = ((4096, 1024), (64, 32000), (16, 262144))
# Larger shapes that keep a GPU busy (pick them with ``--shapes gpu``).
GPU_SHAPES: tuple[Shape, ...] = ((8192, 8192), (64, 128000))
# K from 16 to 262144 (powers of 4) at a constant 2**22 elements (16 MiB in float32).
SWEEP_TOTAL = 2**22
SWEEP_KS: tuple[int, ...] = tuple(4**i for i in range(2, 10))
# ``--quick``: a few small shapes, so that every CPU backend finishes in seconds.
QUICK_SHAPES: tuple[Shape, ...] = ((64, 1000),)
QUICK_SWEEP_TOTAL = 2**16
QUICK_SWEEP_KS: tuple[int, ...] = (16, 1024, 65536)

PRESETS: dict[str, tuple[Shape, ...]] = {
    "default": DEFAULT_SHAPES,
    "gpu": GPU_SHAPES,
    "quick": QUICK_SHAPES,
    "none": (),
}


def format_shape(shape: Sequence[int]) -> str:
    """``(4096, 1024)`` -> ``"4096x1024"``."""
    return "x".join(str(n) for n in shape)


def _parse_shape(text: str) -> Shape:
    try:
        shape = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(n <= 0 for n in shape):
        raise ValueError(f"a shape is written like 4096x1024 (positive sizes), got {text!r}")
    return shape


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """Comma-separated shapes (``"4096x1024,64x32000"``) and preset names (``default``, ``gpu``).

    Examples
    --------
    >>> parse_shapes("default,8x16")
    ((4096, 1024), (64, 32000), (16, 262144), (8, 16))
    """
    shapes: list[Shape] = []
    for item in (part.strip() for part in text.split(",")):
        if item in PRESETS:
            shapes.extend(PRESETS[item])
        elif item:
            shapes.append(_parse_shape(item))
    return tuple(shapes)


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """Comma-separated positive integers, for options such as ``--sweep-ks``."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = (0,)
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{what} takes comma-separated positive integers, got {text!r}")
    return values


def sweep_shapes(total: int, ks: Iterable[int]) -> tuple[Shape, ...]:
    """``(total // K, K)`` for every ``K <= total``: the K-sweep at a constant total size.

    Examples
    --------
    >>> sweep_shapes(1024, (16, 256, 4096))
    ((64, 16), (4, 256))
    """
    return tuple((total // k, k) for k in ks if 0 < k <= total)


def unique_shapes(*groups: Iterable[Shape]) -> tuple[Shape, ...]:
    """All shapes of the groups, each once, in first-seen order."""
    return tuple(dict.fromkeys(shape for group in groups for shape in group))
