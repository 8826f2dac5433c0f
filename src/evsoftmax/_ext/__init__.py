r"""Optional compiled kernels: fused ev-softmax and baselines over contiguous CPU rows.

``_cpu_kernels`` (ev-softmax) and ``_baseline_kernels`` (sparsemax, 1.5-entmax,
alpha-entmax by bisection and their VJP) are C extensions built at install
time when a C compiler is available (see ``setup.py``); without them,
:func:`cpu_kernels` and :func:`baseline_kernels` return None and the adapters
use their array-library code paths, which give the same results. Set the
environment variable ``EVSOFTMAX_NO_CPU_KERNELS=1`` to ignore built copies
(the tests use it to exercise both paths).

The kernel reads each row from memory once and computes, in cache, the row
maximum, the mean of the shifted scores (the support test of
:mod:`evsoftmax._core`), the weights with their sum and the normalized output:
the loop structure of a native softmax plus one cheap reduction. The NumPy and
PyTorch adapters call it through :func:`ev_softmax_rows`; the JAX adapter
registers its XLA FFI handler (``xla_ffi_handler()``) as a custom-call target.

Examples
--------
>>> import numpy as np
>>> from evsoftmax._ext import available, ev_softmax_rows
>>> x = np.array([[0.4, 1.4, -0.8]])
>>> out = np.empty_like(x)
>>> if available():  # doctest: +SKIP
...     ev_softmax_rows(x.ctypes.data, out.ctypes.data, rows=1, length=3,
...                     itemsize=8, epsilon=0.0, log=False, threads=1)
...     print(out.round(4))
[[0.2689 0.7311 0.    ]]
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from .._core import off_support_weight

__all__ = [
    "BASELINE_OPS",
    "DTYPE_CODES",
    "available",
    "baseline_kernels",
    "baseline_rows",
    "baseline_vjp_rows",
    "cpu_kernels",
    "ev_softmax_rows",
    "ev_softmax_strided",
    "log_ev_softmax_vjp_strided",
    "off_support_weight",
    "strided_dtypes",
]

# The element types of ev_softmax_strided, by name (half precision computed in float32).
DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name, __name__)
    except ImportError:
        return None


# Loaded with the package (small libraries, no framework): plain globals, which
# torch.compile can read while tracing, unlike a cached loader.
_KERNELS = _load("._cpu_kernels")
_BASELINES = _load("._baseline_kernels")

BASELINE_OPS = {"sparsemax": 0, "entmax15": 1, "entmax_bisect": 2}
"""The maps of :func:`baseline_rows`, by name, and their codes in the C kernel."""


def cpu_kernels() -> ModuleType | None:
    """The compiled kernel module, or None when it is not built or turned off."""
    if os.environ.get("EVSOFTMAX_NO_CPU_KERNELS"):
        return None
    return _KERNELS


def available() -> bool:
    """Whether the compiled CPU kernels are built and in use."""
    return cpu_kernels() is not None


def ev_softmax_rows(
    x: int,
    out: int,
    *,
    rows: int,
    length: int,
    itemsize: int,
    epsilon: float,
    log: bool,
    threads: int,
    parallel: int = 0,
) -> None:
    """ev-softmax (or its log) of C-contiguous rows at address ``x`` into address ``out``.

    ``itemsize`` is 4 (float32) or 8 (float64). Every rule of the core holds,
    special rows included (NaN rows, -inf entries, rows with no valid entry).
    With ``threads > 1`` the rows are spread (each thread taking at least one
    row and 32768 entries) over the OpenMP team of the
    libgomp whose ``GOMP_parallel`` is at address ``parallel`` (PyTorch passes
    its own, so that the kernel runs on its intra-op threads instead of
    competing with them), or over POSIX threads started for the call when
    ``parallel`` is 0. Raises RuntimeError when the kernels are not available.
    """
    kernels = cpu_kernels()
    if kernels is None:
        raise RuntimeError("evsoftmax's compiled CPU kernels are not available")
    ratio, log_ratio = off_support_weight(epsilon)
    args = (rows, length, itemsize, ratio, log_ratio, log, threads, parallel)
    kernels.ev_softmax_rows(x, out, *args)


def baseline_kernels() -> ModuleType | None:
    """The compiled baseline kernel module, or None when it is not built or turned off."""
    if os.environ.get("EVSOFTMAX_NO_CPU_KERNELS"):
        return None
    return _BASELINES


def _baselines() -> ModuleType:
    kernels = baseline_kernels()
    if kernels is None:
        raise RuntimeError("evsoftmax's compiled baseline kernels are not available")
    return kernels


def baseline_rows(
    name: str,
    x: int,
    out: int,
    *,
    rows: int,
    length: int,
    itemsize: int,
    threads: int,
    parallel: int = 0,
    alpha: float = 1.5,
    n_iter: int = 50,
) -> None:
    """A baseline (a key of :data:`BASELINE_OPS`) of C-contiguous rows at ``x`` into ``out``.

    The maps of :mod:`evsoftmax._sparsemax` and :mod:`evsoftmax._entmax` on the
    last axis, special rows included (NaN rows, -inf entries, rows with no valid
    entry); ``alpha`` and ``n_iter`` are read for ``"entmax_bisect"`` only.
    ``itemsize``, ``threads`` and ``parallel`` are as in :func:`ev_softmax_rows`.
    Raises RuntimeError when the kernels are not available.
    """
    args = (rows, length, itemsize, float(alpha), int(n_iter), threads, parallel)
    _baselines().forward_rows(BASELINE_OPS[name], x, out, *args)


def baseline_vjp_rows(
    probs: int,
    grad: int,
    out: int,
    *,
    rows: int,
    length: int,
    itemsize: int,
    alpha: float,
    threads: int,
    parallel: int = 0,
) -> None:
    """The closed-form VJP of alpha-entmax (:func:`evsoftmax._entmax.entmax_jvp`) on rows.

    ``probs`` holds the map's output rows, ``grad`` the cotangent rows and ``out``
    receives the gradient rows (addresses of C-contiguous float32/float64 rows);
    ``alpha = 2`` is sparsemax's, ``alpha = 1.5`` 1.5-entmax's.
    """
    args = (rows, length, itemsize, float(alpha), threads, parallel)
    _baselines().vjp_rows(probs, grad, out, *args)


def _strided_kernels(dtype: str) -> ModuleType:
    """The kernels module for a strided call on ``dtype``; raises as the entry points say."""
    kernels = cpu_kernels()
    if kernels is None:
        raise RuntimeError("evsoftmax's compiled CPU kernels are not available")
    if dtype not in DTYPE_CODES or (dtype == "float16" and not kernels.FLOAT16):
        raise ValueError(f"dtype {dtype!r} is not supported by the compiled kernels")
    return kernels


def ev_softmax_strided(
    x: int,
    mask: int,
    out: int,
    *,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    mask_strides: tuple[int, ...],
    out_strides: tuple[int, ...],
    axis: int,
    dtype: str,
    epsilon: float,
    log: bool,
    threads: int,
    parallel: int = 0,
    scan: bool = False,
) -> bool:
    """ev-softmax (or its log) along ``axis`` of a strided array, read and written in place.

    ``x`` and ``out`` are addresses of arrays of ``shape`` and element type
    ``dtype`` (a key of :data:`DTYPE_CODES`; float16 and bfloat16 are computed
    in float32) with ``strides`` and ``out_strides`` in elements. ``mask`` is
    the address of a boolean array of the same shape (``mask_strides`` in bytes,
    0 along broadcast axes) whose false entries count as ``-inf``, or 0 for
    none: no full-size copy is made of anything. ``threads`` and ``parallel``
    are as for :func:`ev_softmax_rows`. Returns whether ``out`` holds a ``-inf``
    when ``scan`` is true (each thread looks at the rows it wrote while they are
    in cache, a small fraction of the kernel's time), else False. Raises
    RuntimeError when the kernels are not available, ValueError for a dtype
    they cannot take.
    """
    kernels = _strided_kernels(dtype)
    ratio, log_ratio = off_support_weight(epsilon)
    found = kernels.ev_softmax_strided(
        x, mask, out, shape, strides, mask_strides, out_strides, axis, DTYPE_CODES[dtype],
        ratio, log_ratio, log, threads, parallel, scan,
    )  # fmt: skip
    return bool(found)


def log_ev_softmax_vjp_strided(
    logp: int,
    grad: int,
    x: int,
    mask: int,
    out: int,
    *,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    mask_strides: tuple[int, ...],
    out_strides: tuple[int, ...],
    axis: int,
    dtype: str,
    threads: int,
    parallel: int = 0,
) -> None:
    r"""The VJP of log ev-softmax along ``axis``, read and written in place.

    :math:`g - e^{\log p} \sum g` over the valid entries of each row and exactly 0
    on the others, in one read of ``logp`` and ``grad`` (addresses of arrays of
    ``shape`` and ``dtype`` with the same ``strides``, in elements) into ``out``
    (``out_strides``). An entry is valid where ``mask`` (an address as for
    :func:`ev_softmax_strided`, or 0) is true and the input ``x`` (laid out as
    ``logp``, or 0) is not ``-inf``; with neither, where ``logp`` is not ``-inf``.
    Only rows whose ``logp`` holds ``-inf`` or NaN read them: every invalid entry
    has ``logp = -inf`` (NaN in a NaN row), so the other rows are all valid.
    Raises RuntimeError when the kernels are not available, ValueError for a
    dtype they cannot take.
    """
    kernels = _strided_kernels(dtype)
    kernels.log_ev_softmax_vjp_strided(
        logp, grad, x, mask, out, shape, strides, mask_strides, out_strides, axis,
        DTYPE_CODES[dtype], threads, parallel,
    )  # fmt: skip


# What the built kernels take, found once: strided_dtypes() is asked on every call.
_STRIDED_DTYPES = (
    frozenset()
    if _KERNELS is None
    else frozenset(name for name in DTYPE_CODES if name != "float16" or _KERNELS.FLOAT16)
)


def strided_dtypes() -> frozenset[str]:
    """The dtype names :func:`ev_softmax_strided` takes (empty when the kernels are missing)."""
    return frozenset() if cpu_kernels() is None else _STRIDED_DTYPES
