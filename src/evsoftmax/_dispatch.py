"""Route each public call to the adapter of the input's framework, or to the core.

Adapters live in ``adapters/`` and are imported only when an array of their
framework reaches a public function, so ``import evsoftmax`` never imports
torch, jax or cupy. A framework may have several adapter modules (say, one
for ev-softmax and one for the baselines); each defines any subset of the
public function names, with the signatures of the array-API implementations,
and whatever none defines falls back to those.
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
from ._lib._prepare import empty_like, is_empty
from ._lib._typing import Array, Namespace

__all__ = ["ADAPTER_MODULES", "adapters", "backend_name", "call", "implementation"]

# One lookup, one place: the framework a namespace belongs to.
_BACKENDS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("numpy", is_numpy_namespace),
    ("torch", is_torch_namespace),
    ("jax", is_jax_namespace),
    ("cupy", is_cupy_namespace),
    ("dask", is_dask_namespace),
    ("array_api_strict", is_array_api_strict_namespace),
)

# Framework name -> adapter modules, relative to this package (keeps it vendorable),
# searched in order.
ADAPTER_MODULES: dict[str, tuple[str, ...]] = {
    "numpy": (".adapters.numpy", ".adapters.numpy_baselines", ".adapters.numpy_attention"),
    "cupy": (".adapters.cupy.adapter",),
    "torch": (".adapters.torch.adapter", ".adapters.torch.baselines", ".adapters.torch.attention"),
    "jax": (
        ".adapters.jax.adapter",
        ".adapters.jax.baselines",
        ".adapters.jax.expectation",
        ".adapters.jax.attention",
    ),
}


def backend_name(xp: Namespace) -> str:
    """Name of the framework behind ``xp`` (``"other"`` for unknown array-API libraries)."""
    for name, matches in _BACKENDS:
        if matches(xp):
            return name
    return "other"


@functools.cache
def adapters(backend: str) -> tuple[ModuleType, ...]:
    """The adapter modules registered for ``backend``, imported on first use."""
    names = ADAPTER_MODULES.get(backend, ())
    return tuple(importlib.import_module(name, __package__) for name in names)


def implementation(name: str, xp: Namespace, fallback: Callable[..., Any]) -> Callable[..., Any]:
    """The first adapter function ``name`` for ``xp``'s framework, else ``fallback``."""
    for module in adapters(backend_name(xp)):
        found: Callable[..., Any] | None = getattr(module, name, None)
        if found is not None:
            return found
    return fallback


def call(
    name: str,
    fallback: Callable[..., Any],
    x: Array,
    *,
    xp: Namespace,
    empty_dtype: Any = None,
    **kwargs: Any,
) -> Any:
    """Run ``name`` on validated ``x``: an empty array short-circuits, else dispatch.

    The common tail of every public row-wise function, after ``prepare``:
    empty input gives a new empty array (of ``empty_dtype``, default ``x``'s,
    which is also the result's), a Dask array whose chunks hold whole rows runs
    the function of its blocks' library block by block (:mod:`.adapters.dask`),
    anything else goes to the adapter's ``name`` or ``fallback`` with ``kwargs``.
    """
    if is_empty(x):
        # An adapter's own empty_like may keep the result in the input's autograd graph.
        return implementation("empty_like", xp, empty_like)(x, xp, dtype=empty_dtype)
    if backend_name(xp) == "dask":
        from .adapters import dask as dask_rows

        if dask_rows.holds_whole_rows(x, kwargs["axis"], kwargs.get("where")):
            return dask_rows.map_rows(
                lambda block_xp: implementation(name, block_xp, fallback),
                x,
                dtype=x.dtype if empty_dtype is None else empty_dtype,
                **kwargs,
            )
    return implementation(name, xp, fallback)(x, xp=xp, **kwargs)
