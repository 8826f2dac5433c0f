"""Argument checks run once, at the public edge, so the core stays branch-free."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from numpy.exceptions import AxisError

from ._compat import device
from ._typing import Array, Namespace

__all__ = [
    "broadcast_shapes_to",
    "check_floating",
    "default_float",
    "normalize_axis",
    "validate_epsilon",
    "validate_input",
    "validate_where",
]


def default_float(xp: Namespace, dev: Any = None) -> Any:
    """The namespace's default real floating dtype (float64 for NumPy, float32 for torch)."""
    info = getattr(xp, "__array_namespace_info__", None)
    if info is None:
        return xp.float64
    return info().default_dtypes(device=dev)["real floating"]


def check_floating(x: Array, xp: Namespace, name: str) -> Array:
    """Return ``x`` as a real floating array: integers are promoted, bool/complex rejected."""
    dtype = x.dtype
    if xp.isdtype(dtype, "bool") or xp.isdtype(dtype, "complex floating"):
        raise TypeError(f"{name} must have a real floating or integer dtype, got {dtype}")
    if xp.isdtype(dtype, "integral"):
        return xp.astype(x, default_float(xp, device(x)))
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating or integer dtype, got {dtype}")
    return x


def validate_input(x: Array, xp: Namespace, name: str = "x") -> Array:
    """Check that ``x`` is an array of ``xp`` with at least one dimension and a usable dtype."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d array")
    return check_floating(x, xp, name)


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Return ``axis`` as a non-negative int, raising ``AxisError`` when out of range."""
    if isinstance(axis, bool):
        raise TypeError(f"{name} must be an int, got a bool ({axis!r})")
    try:
        index: int = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(axis).__name__} ({axis!r})") from None
    if not -ndim <= index < ndim:
        raise AxisError(index, ndim, f"{name}={index}")
    return index % ndim


def validate_epsilon(epsilon: Any, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a Python float, raising ``ValueError`` unless finite and >= 0."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise ValueError(
            f"{name} must be a finite float >= 0, got {type(epsilon).__name__} {epsilon!r}"
        )
    value = float(epsilon)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite float >= 0, got {epsilon!r}")
    return value


def broadcast_shapes_to(shape: tuple[Any, ...], target: tuple[Any, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to exactly ``target``."""
    if len(shape) > len(target):
        return False
    tail = target[len(target) - len(shape) :]
    return all(s in (1, t) or t is None or s is None for s, t in zip(shape, tail, strict=False))


def validate_where(where: Any, x: Array, xp: Namespace, name: str = "where") -> Array | None:
    """Return ``where`` as a boolean array of ``xp`` that broadcasts to ``x.shape``, or None."""
    if where is None:
        return None
    if isinstance(where, bool):
        # A bare True keeps every entry; a bare False masks every entry.
        where = [where]
    try:
        mask = xp.asarray(where, device=device(x))
    except Exception:
        mask = xp.asarray(where)
    if not xp.isdtype(mask.dtype, "bool"):
        raise TypeError(f"{name} must be a boolean array, got dtype {mask.dtype}")
    if not broadcast_shapes_to(tuple(mask.shape), tuple(x.shape)):
        raise ValueError(
            f"{name} with shape {tuple(mask.shape)} does not broadcast to the input's "
            f"shape {tuple(x.shape)}"
        )
    return mask
