"""Type aliases used across the package."""

from types import ModuleType
from typing import Any, Literal, TypeAlias

Array: TypeAlias = Any
"""Any array-API array (NumPy, PyTorch, JAX, CuPy, Dask, array-api-strict, ...)."""

Namespace: TypeAlias = ModuleType
"""An array-API namespace, as returned by ``array_namespace``."""

Reduction: TypeAlias = Literal["mean", "sum", "none"]

__all__ = ["Array", "Namespace", "Reduction"]
