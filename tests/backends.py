"""The array backends the test-suite runs on, and how to get arrays in and out of them.

``EVSOFTMAX_TEST_BACKENDS`` (comma-separated, set by each nox session) picks the
backends; without it every importable backend runs. A backend that was asked for
by name but cannot be imported is an error, not a skip.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Any

import numpy as np

ALL_BACKENDS = ("numpy", "array_api_strict", "dask", "torch", "jax", "cupy")
_MODULES = {
    "numpy": "numpy",
    "array_api_strict": "array_api_strict",
    "dask": "dask.array",
    "torch": "torch",
    "jax": "jax",
    "cupy": "cupy",
}


def requested() -> tuple[str, ...] | None:
    """Backends named in ``EVSOFTMAX_TEST_BACKENDS``, or None when unset."""
    value = os.environ.get("EVSOFTMAX_TEST_BACKENDS", "").strip()
    if not value:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = set(names) - set(ALL_BACKENDS)
    if unknown:
        raise ValueError(f"EVSOFTMAX_TEST_BACKENDS names unknown backends: {sorted(unknown)}")
    return names


def importable(name: str) -> bool:
    """Whether the backend's package is installed (without importing it)."""
    return importlib.util.find_spec(_MODULES[name].split(".")[0]) is not None


def gpu_unavailable_reason(name: str) -> str | None:
    """Why a GPU-only backend cannot run here, or None when it can."""
    if name != "cupy":
        return None
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return None
    except Exception as exc:
        return f"cupy needs a CUDA GPU: {type(exc).__name__}: {exc}"
    return "cupy needs a CUDA GPU and none was found"


def selected() -> tuple[str, ...]:
    """The backends this run parametrizes tests over."""
    names = requested()
    if names is None:
        return tuple(n for n in ALL_BACKENDS if importable(n))
    missing = [n for n in names if not importable(n)]
    if missing:
        raise RuntimeError(f"requested backends are not installed: {missing}")
    return names


def namespace(name: str) -> ModuleType:
    """The array-API namespace tests create arrays with for backend ``name``."""
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp
    if name == "array_api_strict":
        return importlib.import_module("array_api_strict")
    from array_api_compat import array_namespace

    module = importlib.import_module(_MODULES[name])
    return array_namespace(module.asarray([0.0]))


def to_numpy(a: Any) -> np.ndarray:
    """A NumPy copy of any backend array (computing Dask graphs, detaching tensors)."""
    if hasattr(a, "compute"):
        a = a.compute()
    module = type(a).__module__.split(".")[0]
    if module == "torch":
        a = a.detach().cpu()
        if a.dtype.is_floating_point and a.dtype.itemsize < 4:
            a = a.float()
        return a.numpy().copy()
    if module == "cupy":
        return a.get()
    if module in ("jax", "jaxlib"):
        a = np.asarray(a)
        return a.astype(np.float32) if a.dtype.itemsize < 4 and a.dtype.kind == "V" else a
    if module == "array_api_strict":
        return np.asarray(a).copy()
    out = np.asarray(a)
    if out.dtype.kind not in "biufc":  # e.g. ml_dtypes.bfloat16
        out = out.astype(np.float32)
    return out.copy()


def host_devices_xla_flags(count: int) -> str:
    """``XLA_FLAGS`` for a subprocess with ``count`` host devices, keeping the flags already set.

    The nox sessions set ``--xla_backend_optimization_level=0`` (the tests' programs are
    tiny); a subprocess that replaced XLA_FLAGS would compile with full optimization.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    return f"{flags} --xla_force_host_platform_device_count={count}".strip()
