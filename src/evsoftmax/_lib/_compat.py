"""The single place where ``array_api_compat`` is imported.

A library that vendors evsoftmax can point this one import at its own copy of
array-api-compat; nothing else in the package refers to it.
"""

from array_api_compat import (
    array_namespace,
    device,
    is_array_api_strict_namespace,
    is_cupy_namespace,
    is_dask_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)

__all__ = [
    "array_namespace",
    "device",
    "is_array_api_strict_namespace",
    "is_cupy_namespace",
    "is_dask_namespace",
    "is_jax_namespace",
    "is_numpy_namespace",
    "is_torch_namespace",
]
