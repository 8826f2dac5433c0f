"""Argument checks run once, at the public edge, so the core stays branch-free."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np
from numpy.exceptions import AxisError

from ._compat import array_namespace, device
from ._typing import Array, Namespace

__all__ = [
    "broadcast_shapes_to",
    "check_floating",
    "default_float",
    "index_dtype",
    "namespace_of",
    "normalize_axis",
    "split_masked",
    "validate_epsilon",
    "validate_index",
    "validate_input",
    "validate_where",
]


def _describe(value: Any) -> str:
    """A short description of a non-array argument for error messages."""
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} (convert it first, e.g. with numpy.asarray)"
    if isinstance(value, (numbers.Number, np.generic)):
        return f"a scalar {type(value).__name__} ({value!r}); pass a 1-d array"
    return type(value).__name__


def namespace_of(*named: tuple[str, Any]) -> Any:
    """The array namespace of the ``(name, value)`` arguments, with errors that name them.

    ``array_namespace`` alone says "list is not a supported array type"; the
    user needs to know which argument and what to do.
    """
    for name, value in named:
        try:
            array_namespace(value)
        except TypeError:
            raise TypeError(
                f"{name} must be an array (NumPy, PyTorch, JAX, CuPy, Dask or any "
                f"array-API array), got {_describe(value)}"
            ) from None
    try:
        return array_namespace(*(value for _, value in named))
    except TypeError as error:
        names = " and ".join(name for name, _ in named)
        raise TypeError(f"{names} must be arrays of one array library: {error}") from None


def split_masked(x: Any, where: Any) -> tuple[Any, Any]:
    """``(data, where)`` for a NumPy masked array ``x``: its mask acts as ``where=False``.

    Other inputs are returned unchanged. The results are plain arrays (masked
    entries are those that ``where=False`` excludes).
    """
    if not isinstance(x, np.ma.MaskedArray):
        return x, where
    keep = ~np.ma.getmaskarray(x)
    data = np.ma.getdata(x)
    if where is None:
        return data, keep
    mask = validate_where(where, data, array_namespace(data))
    return data, keep if mask is None else keep & mask


def _is_bfloat16(dtype: Any) -> bool:
    """Whether ``dtype`` is ml_dtypes' bfloat16 as a NumPy dtype (unknown to ``isdtype``)."""
    return getattr(getattr(dtype, "type", None), "__module__", "") == "ml_dtypes" and (
        getattr(dtype, "name", "") == "bfloat16"
    )


def default_float(xp: Namespace, dev: Any = None) -> Any:
    """The namespace's default real floating dtype (float64 for NumPy, float32 for torch)."""
    info = getattr(xp, "__array_namespace_info__", None)
    if info is None:
        return xp.float64
    return info().default_dtypes(device=dev)["real floating"]


def check_floating(x: Array, xp: Namespace, name: str) -> Array:
    """Return ``x`` as a real floating array: integers are promoted, bool/complex rejected."""
    dtype = x.dtype
    message = f"{name} must have a real floating or integer dtype, got {dtype}"
    if _is_bfloat16(dtype):
        return x  # NumPy bfloat16 (ml_dtypes): computed in float32 like every half dtype
    try:
        if xp.isdtype(dtype, "bool") or xp.isdtype(dtype, "complex floating"):
            raise TypeError(message)
        if xp.isdtype(dtype, "integral"):
            return xp.astype(x, default_float(xp, device(x)))
        floating = xp.isdtype(dtype, "real floating")
    except (TypeError, ValueError):
        raise TypeError(message) from None  # an extension dtype (float8, int4, ...)
    if not floating:
        raise TypeError(message)
    return x


def validate_input(x: Array, xp: Namespace, name: str = "x") -> Array:
    """Check that ``x`` is an array of ``xp`` with at least one dimension and a usable dtype."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {_describe(x)}")
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must not be a masked array here (only the scores' mask means where=False); "
            "pass numpy.ma.getdata(...) or numpy.ma.filled(...)"
        )
    layout = getattr(x, "layout", None)
    if layout is not None and "sparse" in str(layout):
        raise TypeError(
            f"{name} must be a dense (strided) tensor, got layout {layout}; convert it with "
            ".to_dense() (entries missing from a sparse row are zeros, not excluded: "
            "use where= or -inf to exclude them)"
        )
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


def validate_index(value: Any, name: str) -> int:
    """Return ``value`` (a Python or NumPy integer, not a bool) as an int."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got a bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})") from None


def index_dtype(xp: Namespace, dev: Any = None) -> Any:
    """The namespace's default integer (indexing) dtype: int64, or int32 for JAX without x64."""
    info = getattr(xp, "__array_namespace_info__", None)
    if info is None:
        return xp.int64
    return info().default_dtypes(device=dev)["indexing"]


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
    return all(s in (1, t) or _unknown(t) or _unknown(s) for s, t in zip(shape, tail, strict=False))


def _unknown(n: Any) -> bool:
    """Whether a dimension is unknown: None (array API) or NaN (Dask after boolean indexing)."""
    return n is None or (isinstance(n, float) and math.isnan(n))


def validate_where(where: Any, x: Array, xp: Namespace, name: str = "where") -> Array | None:
    """Return ``where`` as a boolean array of ``xp`` that broadcasts to ``x.shape``, or None."""
    if where is None:
        return None
    if isinstance(where, bool):
        # A bare True keeps every entry; a bare False masks every entry.
        where = [where]
    mask = _as_mask(where, x, xp, name)
    if not xp.isdtype(mask.dtype, "bool"):
        raise TypeError(f"{name} must be a boolean array, got dtype {mask.dtype}")
    if not broadcast_shapes_to(tuple(mask.shape), tuple(x.shape)):
        raise ValueError(
            f"{name} with shape {tuple(mask.shape)} does not broadcast to the input's "
            f"shape {tuple(x.shape)}"
        )
    return mask


def _is_foreign(where: Any, x: Array) -> bool:
    """Whether ``where`` is an array of another library than ``x`` (a tracer is not)."""
    if not hasattr(where, "__dlpack__"):
        return False
    try:
        return array_namespace(where) is not array_namespace(x)
    except TypeError:
        return True  # an array library that array_api_compat does not know


def _as_mask(where: Any, x: Array, xp: Namespace, name: str) -> Array:
    """``where`` as an array of ``xp`` on ``x``'s device.

    A mask of another array library (a JAX mask for torch scores, say) is
    converted through DLPack, else through NumPy, as ``torch.as_tensor`` or
    ``jnp.asarray`` would accept it; only what neither can read is rejected.
    """
    if isinstance(where, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain boolean array, got a masked array")
    if _is_foreign(where, x):
        try:
            where = xp.from_dlpack(where)
        except Exception:
            try:
                where = np.asarray(where)
            except Exception:
                raise TypeError(
                    f"{name} must be a boolean array that {type(x).__name__} can read, "
                    f"got {type(where).__name__}"
                ) from None
    try:
        return xp.asarray(where, device=device(x))
    except Exception:
        pass
    try:
        return xp.asarray(where)
    except Exception as error:
        raise TypeError(
            f"{name} must be a boolean array broadcastable to the input, "
            f"got {_describe(where)}: {error}"
        ) from None
