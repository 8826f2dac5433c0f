"""The battery every execution path runs: case groups, requests and their float64 expectations.

A *case group* (``ties``, ``extreme``, ...) builds, for one dtype, a few
:class:`Input` objects (the values, the axis, an optional ``where`` mask and an
optional non-contiguous view). The battery asks each path for every function it
offers on every input of the group at every ε of :data:`EPSILONS`; the
expectations come from :mod:`tests.reference` (float64, row by row, written
from the math) and from the closed-form derivatives of
:mod:`tests.closed_forms`, evaluated on the values exactly as the dtype holds
them and rounded once to that dtype.

Inputs are kept small and few per group, with one common row length inside a
group, so that the compile and export paths (one trace per distinct call) stay
cheap.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from . import reference as ref
from .closed_forms import ev_softmax_vjp, log_ev_softmax_vjp

__all__ = [
    "DTYPES",
    "EPSILONS",
    "FORWARD",
    "GRADS",
    "GROUPS",
    "JVPS",
    "Input",
    "Request",
    "as_dtype",
    "cotangent",
    "expected",
    "requests",
    "tolerance",
]

DTYPES = ("float16", "bfloat16", "float32", "float64")
EPSILONS = (0.0, 1e-6, 3.0, 1e300)

# What a path can be asked to compute. ``grad_*`` is the gradient of
# ``sum(f(x) * c)`` (a VJP with cotangent ``c``), ``jvp_*`` the forward-mode
# derivative along tangent ``c``; ``c`` is :func:`cotangent` of the input's shape.
FORWARD = ("ev_softmax", "log_ev_softmax", "ev_softmax_support")
GRADS = ("grad_ev_softmax", "grad_log_ev_softmax")
JVPS = ("jvp_ev_softmax", "jvp_log_ev_softmax")

# (rtol, atol) per dtype; supports are compared exactly.
_TOLERANCES = {
    "float64": (1e-12, 1e-13),
    "float32": (1e-5, 1e-6),
    "bfloat16": (2e-2, 2e-3),
    "float16": (1e-2, 1e-3),
}


def tolerance(dtype: str) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing a path's ``dtype`` output with the reference."""
    return _TOLERANCES[dtype]


def ml_dtypes_missing() -> str | None:
    """Why NumPy cannot hold bfloat16 here, or None."""
    if importlib.util.find_spec("ml_dtypes") is None:
        return "NumPy bfloat16 needs the ml_dtypes package, which is not installed"
    return None


def as_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` stored as ``dtype`` in NumPy (bfloat16 through ml_dtypes)."""
    if dtype == "bfloat16":
        import ml_dtypes

        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16)
    with np.errstate(over="ignore"):
        return np.asarray(values).astype(dtype)


def _exact(values: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values ``dtype`` holds for ``values`` (what every path actually sees)."""
    return as_dtype(values, dtype).astype(np.float64)


def _finfo_max(dtype: str) -> float:
    return {"float16": 65504.0, "bfloat16": 3.3895313892515355e38}.get(
        dtype, float(np.finfo(dtype).max) if dtype in ("float32", "float64") else 0.0
    )


def _spacing(value: float, dtype: str) -> float:
    """The distance from ``value`` to the next larger number of ``dtype``."""
    if dtype == "bfloat16":
        return float(np.spacing(np.float32(abs(value)))) * 2.0**16
    return float(np.spacing(np.dtype(dtype).type(abs(value))))


def away_from_ties(shape: tuple[int, ...], axis: int = -1, seed: int = 0) -> np.ndarray:
    """Normal scores pushed 0.5 away from their row mean.

    Rounding to half precision moves an entry of magnitude < 8 by at most 4e-3,
    so every dtype keeps the same support as the float64 values.
    """
    x = np.random.default_rng(seed).standard_normal(shape)
    x = x + 0.5 * np.sign(x - x.mean(axis=axis, keepdims=True))
    return np.clip(x, -7.5, 7.5)


@dataclasses.dataclass(frozen=True)
class Input:
    """One input of a case group: values already exact in the dtype, as float64."""

    label: str
    values: np.ndarray  # float64, exactly representable in the dtype
    axis: int = -1
    where: np.ndarray | None = None
    # "T": the path receives ``values.T`` of a contiguous ``values.T`` copy (a
    # transposed, non-contiguous array equal to ``values``); "stride": every other
    # column of a wider array whose other columns are NaN.
    view: str | None = None

    def base(self, dtype: str) -> np.ndarray:
        """The contiguous array in ``dtype`` that :func:`apply_view` turns into the input."""
        if self.view == "T":
            return np.ascontiguousarray(as_dtype(self.values, dtype).T)
        if self.view == "stride":
            wide = np.full((*self.values.shape[:-1], 2 * self.values.shape[-1]), np.nan)
            wide[..., ::2] = self.values
            return as_dtype(wide, dtype)
        return as_dtype(self.values, dtype)


def apply_view(array, view: str | None):
    """The layout of :class:`Input`: works on NumPy, torch, JAX, Dask and array-API arrays."""
    if view == "T":
        return array.T
    if view == "stride":
        return array[..., ::2]
    return array


def _ties(dtype: str) -> list[Input]:
    # Mean exactly 2 in every dtype and summation order: 2 is in the support.
    rows = [[2.0, 5.0, -1.0]] * 4 + [[-1.0, 2.0, 5.0], [5.0, -1.0, 2.0], [0.0, 3.0, 3.0]]
    return [Input("ties", np.array(rows))]


def _constant(dtype: str) -> list[Input]:
    big = _exact(np.array(0.5 * _finfo_max(dtype)), dtype)[()]
    rows = [[c] * 5 for c in (0.0, 1.0, -7.5, 1e-3, big, -big)]
    return [Input("constant", _exact(np.array(rows), dtype))]


def _tiny_pad(dtype: str) -> list[Input]:
    inf = np.inf
    rows = [
        [2e-9, 1e-9, -1e-9, -2e-9, -inf],
        [1e-9, -inf, -1e-9, 2e-9, -inf],
        [-inf, 3e-30, 1e-30, -2e-30, -2e-30],
    ]
    return [Input("tiny", _exact(np.array(rows), dtype))]


def _offset(dtype: str) -> list[Input]:
    offsets = {
        "float64": (1e7, -1e7, 1e15),
        "float32": (1e7, -1e7),
        "bfloat16": (1e7, -1e7),
        "float16": (1000.0, -1000.0),
    }[dtype]
    rows = []
    for off in offsets:
        base = float(_exact(np.array(off), dtype))
        step = max(1.0, _spacing(base, dtype))
        rows += [[base + 2 * step, base + step, base], [base, base + 2 * step, base + step]]
    return [Input("offset", _exact(np.array(rows), dtype))]


def _extreme(dtype: str) -> list[Input]:
    top = _finfo_max(dtype)
    # D16's example: the shift overflows, the exact mean is 0, so 0 is in.
    big = {"float64": 1.7e308, "float32": 3e38, "bfloat16": 3e38, "float16": 65000.0}[dtype]
    rows = [
        [big, -big, 0.0],
        [top, 0.5 * top, -top],
        [top, top, top],
        [-top, -0.5 * top, -top],
        [top, -top, top],
        [-top, 0.25 * top, 1.0],
    ]
    return [Input("extreme", _exact(np.array(rows), dtype))]


def _special(dtype: str) -> list[Input]:
    nan, inf = np.nan, np.inf
    rows = [
        [nan, 1.0, 2.0, 3.0],
        [inf, 1.0, 2.0, 3.0],
        [-inf, -inf, -inf, -inf],
        [1.0, -inf, 2.0, -inf],
        [-inf, -inf, 5.0, -inf],
        [inf, -inf, 0.0, 1.0],
        [1.0, 2.0, 3.5, 4.0],
        [nan, -inf, 0.0, 0.0],
        [-inf, inf, -inf, -inf],
    ]
    return [Input("special", np.array(rows))]


def _where(dtype: str) -> list[Input]:
    x = _exact(away_from_ties((6, 7), seed=1), dtype)
    where = np.ones(x.shape, dtype=bool)
    where[0, [1, 4]] = False
    where[1, :] = False  # fully masked row
    where[2, 0] = False
    x[2, 0] = np.nan  # masked NaN and +inf must not poison their rows
    where[3, 6] = False
    x[3, 6] = np.inf
    x[4, 2] = -np.inf  # -inf where the mask is True: invalid as well
    where[5, 1:] = False  # a single valid entry
    # The supports of the rows with entries dropped are recomputed by the
    # reference; keep them away from ties among the remaining entries.
    return [Input("full-mask", x, where=where)]


def _where_broadcast(dtype: str) -> list[Input]:
    x = _exact(away_from_ties((2, 3, 6), seed=2), dtype)
    keys = np.array([True, False, True, True, False, True])
    rows = np.array([True, False, True]).reshape(1, 3, 1)  # a fully masked row per batch
    # Rows of x restricted to the kept keys must stay away from their new mean too.
    x[..., keys] = _exact(away_from_ties((2, 3, 4), seed=3), dtype)
    return [Input("keys", x, where=keys), Input("rows", x, where=rows)]


def _layout(dtype: str) -> list[Input]:
    return [
        Input("transposed", _exact(away_from_ties((5, 9), seed=4), dtype), view="T"),
        Input("strided", _exact(away_from_ties((4, 6), seed=5), dtype), view="stride"),
        Input("axis0", _exact(away_from_ties((3, 5), axis=0, seed=6), dtype), axis=0),
        Input("axis1-3d", _exact(away_from_ties((2, 5, 3), axis=1, seed=7), dtype), axis=1),
        Input("axis-2", _exact(away_from_ties((2, 5, 3), axis=-2, seed=8), dtype), axis=-2),
    ]


def _empty(dtype: str) -> list[Input]:
    return [
        Input("no-rows", np.zeros((0, 4))),
        Input("no-columns", np.zeros((3, 0))),
        Input("empty-axis1", np.zeros((2, 0, 3)), axis=1),
    ]


def _random(dtype: str) -> list[Input]:
    return [Input("rows37", _exact(away_from_ties((6, 37), seed=9), dtype))]


GROUPS: dict[str, Callable[[str], list[Input]]] = {
    "ties": _ties,
    "constant": _constant,
    "tiny-pad": _tiny_pad,
    "offset": _offset,
    "extreme": _extreme,
    "special": _special,
    "where": _where,
    "where-broadcast": _where_broadcast,
    "layout": _layout,
    "empty": _empty,
    "random": _random,
}


@dataclasses.dataclass(frozen=True)
class Request:
    """One call a path is asked to make: ``function`` of ``inp`` at ``epsilon`` in ``dtype``."""

    group: str
    dtype: str
    function: str
    epsilon: float
    inp: Input

    @property
    def key(self) -> str:
        return f"{self.group}|{self.dtype}|{self.inp.label}|{self.function}|{self.epsilon!r}"


def requests(
    group: str,
    dtype: str,
    functions: tuple[str, ...],
    epsilons: tuple[float, ...] = EPSILONS,
    derivative_epsilons: tuple[float, ...] = EPSILONS,
) -> list[Request]:
    """Every call of ``group`` in ``dtype`` for the ``functions`` a path offers."""
    out = []
    for inp in GROUPS[group](dtype):
        for function in functions:
            if function == "ev_softmax_support":
                eps_list: tuple[float, ...] = (0.0,)
            elif function in FORWARD:
                eps_list = epsilons
            else:
                eps_list = derivative_epsilons
            out += [Request(group, dtype, function, eps, inp) for eps in eps_list]
    return out


def cotangent(shape: tuple[int, ...]) -> np.ndarray:
    """The cotangent/tangent used by ``grad_*``/``jvp_*`` requests: small integers, exact."""
    n = math.prod(shape)
    return ((np.arange(n) * 7) % 5 - 2.0).reshape(shape) / 2.0


def _support_row(v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid entries at or above the EXACT valid mean (rational arithmetic), plus the maximum.

    ``tests.reference.support_row`` sums in float64, which overflows for float64
    rows near ``finfo.max``; here no sum can overflow or round.
    """
    out = np.zeros(v.shape, dtype=bool)
    vals = v[valid]
    if vals.size == 0 or np.isnan(vals).any() or np.isposinf(vals).any():
        return out
    exact = [Fraction(float(a)) for a in vals]
    mean = sum(exact, Fraction(0)) / len(exact)
    out[valid] = np.array([a >= mean for a in exact]) | (vals == vals.max())
    return out


def _rows_apply(x: np.ndarray, axis: int, where: np.ndarray | None, row: Callable) -> np.ndarray:
    valid = ref._valid(x, where)
    moved, vmoved = np.moveaxis(x, axis, -1), np.moveaxis(valid, axis, -1)
    out = [
        row(v, m)
        for v, m in zip(
            moved.reshape(-1, x.shape[axis]), vmoved.reshape(-1, x.shape[axis]), strict=True
        )
    ]
    return np.moveaxis(np.stack(out).reshape(moved.shape), -1, axis)


def support(x: np.ndarray, axis: int, where: np.ndarray | None) -> np.ndarray:
    """The exact support of every row of ``x`` along ``axis``."""
    return _rows_apply(x, axis, where, _support_row)


def _log_weights(v: np.ndarray, valid: np.ndarray, eps: float) -> np.ndarray | None:
    """``log((1{support} + eps) exp(x - max))`` on the valid entries, None for a NaN row."""
    vals = v[valid]
    if np.isnan(vals).any() or np.isposinf(vals).any():
        return None
    sup = _support_row(v, valid)[valid]
    return np.log(sup + eps) + (vals - vals.max())


def ev_softmax(x: np.ndarray, axis: int, eps: float, where: np.ndarray | None) -> np.ndarray:
    """Float64 ev-softmax from the exact support (``p ∝ (1{support} + eps) e^x``)."""

    def row(v: np.ndarray, valid: np.ndarray) -> np.ndarray:
        p = np.zeros(v.shape)
        if not valid.any():
            return p
        logw = _log_weights(v, valid, eps)
        if logw is None:
            return np.full(v.shape, np.nan)
        w = np.exp(logw - logw.max())
        p[valid] = w / w.sum()
        return p

    return _rows_apply(x, axis, where, row)


def log_ev_softmax(x: np.ndarray, axis: int, eps: float, where: np.ndarray | None) -> np.ndarray:
    """Float64 log ev-softmax from the exact support, by log-sum-exp (-inf off the valid set)."""

    def row(v: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = np.full(v.shape, -np.inf)
        if not valid.any():
            return out
        logw = _log_weights(v, valid, eps)
        if logw is None:
            return np.full(v.shape, np.nan)
        top = logw.max()
        out[valid] = logw - (top + np.log(np.exp(logw - top).sum()))
        return out

    return _rows_apply(x, axis, where, row)


_EXPECTED: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}


def expected(req: Request) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_expected`, computed once per request (every path asks the same ones)."""
    if req.key not in _EXPECTED:
        _EXPECTED[req.key] = _expected(req)
    return _EXPECTED[req.key]


def _expected(req: Request) -> tuple[np.ndarray, np.ndarray | None]:
    """The float64 reference for ``req`` rounded once to its dtype, and where it binds.

    The second item is None (every entry binds) or a boolean mask of the
    entries that are compared: in a row holding NaN or +inf among its valid
    entries, a derivative must be NaN on the valid entries and may be NaN or 0
    on the invalid ones.
    """
    x = req.inp.values
    axis, eps, where = req.inp.axis, req.epsilon, req.inp.where
    if x.size == 0:  # the reference works row by row; an empty input has nothing to do
        return np.zeros(x.shape, bool if req.function == "ev_softmax_support" else float), None
    with np.errstate(all="ignore"):
        if req.function == "ev_softmax_support":
            return support(x, axis, where), None
        if req.function == "ev_softmax":
            return _exact(ev_softmax(x, axis, eps, where), req.dtype), None
        if req.function == "log_ev_softmax":
            return _exact(log_ev_softmax(x, axis, eps, where), req.dtype), None
        c = cotangent(x.shape)
        valid = ref._valid(x, where)
        p = ev_softmax(x, axis, eps, where)
        if req.function in ("grad_ev_softmax", "jvp_ev_softmax"):
            # The Jacobian diag(p) - p p^T is symmetric: VJP and JVP agree.
            out = ev_softmax_vjp(p, c, axis)
        elif req.function == "grad_log_ev_softmax":
            out = log_ev_softmax_vjp(p, c, valid, axis)
        else:  # jvp_log_ev_softmax: 1_V (t - <p_eps, t>)
            out = np.where(valid, c - (p * c).sum(axis=axis, keepdims=True), 0.0)
        nan_rows = np.broadcast_to(np.isnan(p).any(axis=axis, keepdims=True), x.shape)
        out = np.where(nan_rows, np.nan, out)
        care = ~nan_rows | valid
        return _exact(out, req.dtype), care
