"""Route each public call to the adapter of the input's framework, or to the core.

Adapters live in ``adapters/`` and are imported only when an array of their
framework reaches a public function, so ``import evsoftmax`` never imports
torch, jax or cupy. An adapter module defines any subset of the core's
function names; the rest fall back to the array-API implementation.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ._lib._compat import (
    is_array_api_strict_namespace,
    is_cupy_namespace,
    is_dask_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)
from ._lib._typing import Namespace

__all__ = ["ADAPTER_MODULES", "adapter", "backend_name", "implementation"]

# One lookup, one place: the framework a namespace belongs to.
_BACKENDS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("numpy", is_numpy_namespace),
    ("torch", is_torch_namespace),
    ("jax", is_jax_namespace),
    ("cupy", is_cupy_namespace),
    ("dask", is_dask_namespace),
    ("array_api_strict", is_array_api_strict_namespace),
)

# Framework name -> adapter module, relative to this package (keeps it vendorable).
ADAPTER_MODULES: dict[str, str] = {}


def backend_name(xp: Namespace) -> str:
    """Name of the framework behind ``xp`` (``"other"`` for unknown array-API libraries)."""
    for name, matches in _BACKENDS:
        if matches(xp):
            return name
    return "other"


@functools.cache
def adapter(backend: str) -> ModuleType | None:
    """The adapter module registered for ``backend``, imported on first use."""
    module = ADAPTER_MODULES.get(backend)
    if module is None:
        return None
    return importlib.import_module(module, __package__)


def implementation(name: str, xp: Namespace, fallback: Callable[..., Any]) -> Callable[..., Any]:
    """The adapter's ``name`` for ``xp``'s framework if it defines one, else ``fallback``."""
    module = adapter(backend_name(xp))
    found: Callable[..., Any] | None = getattr(module, name, None)
    return fallback if found is None else found
