"""One small class per array library: inputs, synchronisation, native ops, autodiff.

Frameworks are imported in :meth:`Backend.setup`, never at module import, so
``import evsoftmax`` stays light. ``BACKENDS`` is the registry ``--backends``
picks from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .._lib._compat import array_namespace

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKENDS",
    "Backend",
    "composed_log_softmax",
    "composed_softmax",
]

Fn = Callable[..., Any]


def composed_softmax(x: Any, axis: int = -1, where: Any = None) -> Any:
    """Softmax along ``axis`` from array-API calls (for libraries without one).

    ``where=False`` entries are filled with ``-inf`` first, as users mask a softmax.
    """
    xp = array_namespace(x)
    if where is not None:
        x = xp.where(where, x, -xp.inf)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def composed_log_softmax(x: Any, axis: int = -1) -> Any:
    """Log-softmax along ``axis`` from array-API calls: ``x - max - log(sum(exp))``."""
    xp = array_namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


class Backend:
    """An array library as the benchmark sees it; subclasses fill in the framework calls."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]
    native_softmax: ClassVar[str] = "array-API composition exp(x - max) / sum"
    copy_op: ClassVar[str] = "copy"
    autodiff: ClassVar[str | None] = None

    def __init__(self, device: str = "auto") -> None:
        self.device_request = device
        self.device = "cpu"

    def unavailable(self) -> str | None:
        """Why this backend cannot run here (a missing package, no GPU), or None."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"not installed: {', '.join(missing)}"
        if self.device_request == "gpu":
            return self.no_gpu_reason()
        return None

    def no_gpu_reason(self) -> str | None:
        """Why ``--device gpu`` cannot run on this backend, or None."""
        return f"{self.name} runs on the CPU only"

    def setup(self) -> None:
        """Import the framework and choose the device."""

    def version(self) -> str:
        """The framework's version."""
        return str(importlib.import_module(self.requires[0]).__version__)

    def asarray(self, a: np.ndarray) -> Any:
        """``a`` as an array of this library on the chosen device."""
        raise NotImplementedError

    def to_numpy(self, y: Any) -> np.ndarray:
        """A NumPy copy of a result."""
        return np.asarray(y)

    def sync(self, y: Any) -> None:
        """Block until ``y`` is computed (GPU queues, JAX dispatch, Dask graphs)."""

    def softmax(self, x: Any, axis: int = -1, where: Any = None) -> Any:
        """The library's softmax along ``axis`` (of the ``-inf``-filled input with ``where``)."""
        return composed_softmax(x, axis, where)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        """The library's own log-softmax along ``axis``."""
        return composed_log_softmax(x, axis)

    def dtype_scope(self, dtype: str) -> contextlib.AbstractContextManager[Any]:
        """A context in which the library computes in ``dtype`` (JAX needs x64 for float64)."""
        return contextlib.nullcontext()

    def cast(self, x: Any, dtype: str) -> Any:
        """``x`` converted to the dtype named ``dtype`` (``"bfloat16"`` where there is one)."""
        xp = array_namespace(x)
        return xp.astype(x, getattr(xp, dtype))

    def copy(self, x: Any) -> Any:
        """A same-size copy: the bandwidth yardstick."""
        return x.copy()

    def forward(self, fn: Fn) -> Fn:
        """``fn`` as the library runs it fastest (``jax.jit``; unchanged elsewhere)."""
        return fn

    def vjp(self, fn: Fn) -> Callable[..., Any] | None:
        """``(x, g, *operands) -> g``-weighted gradient of ``fn`` in ``x`` (forward + backward).

        None where the library has no autodiff; ``operands`` (a mask) are not differentiated.
        """
        return None

    def grad_input(self, x: Any) -> Any:
        """``x`` prepared to be differentiated (``requires_grad`` for torch)."""
        return x

    def peers(self) -> dict[str, Fn]:
        """Third-party normalizers to time alongside (the ``entmax`` package for torch)."""
        return {}

    def has_baseline_peers(self) -> bool:
        """Whether :meth:`baseline_peers` has any (checked without importing them)."""
        return False

    def baseline_peers(self) -> dict[str, Fn]:
        """The ``entmax`` package's maps, by evsoftmax name: the baselines' peers."""
        return {}

    def select(self, found: list[Any]) -> list[Any]:
        """The methods this backend times, out of every method found (all of them)."""
        return found


class NumpyBackend(Backend):
    name = "numpy"
    requires = ("numpy", "scipy")
    native_softmax = "scipy.special.softmax"

    def asarray(self, a: np.ndarray) -> Any:
        return a

    def softmax(self, x: Any, axis: int = -1, where: Any = None) -> Any:
        from scipy.special import softmax

        return softmax(x if where is None else np.where(where, x, -np.inf), axis=axis)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        from scipy.special import log_softmax

        return log_softmax(x, axis=axis)

    def cast(self, x: Any, dtype: str) -> Any:
        return x.astype(dtype)


class TorchBackend(Backend):
    name = "torch"
    requires = ("torch",)
    native_softmax = "torch.softmax"
    copy_op = "Tensor.clone"
    autodiff = "torch.autograd.grad"

    def no_gpu_reason(self) -> str | None:
        import torch

        return None if torch.cuda.is_available() else "no CUDA device visible to torch"

    def setup(self) -> None:
        import torch

        gpu = self.device_request != "cpu" and torch.cuda.is_available()
        self.device = "cuda" if gpu else "cpu"

    def asarray(self, a: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(a).to(self.device)

    def to_numpy(self, y: Any) -> np.ndarray:
        return np.asarray(y.detach().cpu().numpy())

    def sync(self, y: Any) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def softmax(self, x: Any, axis: int = -1, where: Any = None) -> Any:
        import torch

        if where is not None:
            x = x.masked_fill(~where, -torch.inf)
        return torch.softmax(x, dim=axis)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        import torch

        return torch.log_softmax(x, dim=axis)

    def cast(self, x: Any, dtype: str) -> Any:
        import torch

        return x.to(getattr(torch, dtype))

    def copy(self, x: Any) -> Any:
        return x.clone()

    def vjp(self, fn: Fn) -> Callable[..., Any] | None:
        import torch

        def forward_backward(x: Any, g: Any, *operands: Any) -> Any:
            return torch.autograd.grad(fn(x, *operands), x, g)[0]

        return forward_backward

    def grad_input(self, x: Any) -> Any:
        return x.detach().clone().requires_grad_(True)

    def peers(self) -> dict[str, Fn]:
        if importlib.util.find_spec("entmax") is None:
            return {}
        import entmax

        return {
            "entmax.sparsemax": lambda x: entmax.sparsemax(x, dim=-1),
            "entmax.entmax15": lambda x: entmax.entmax15(x, dim=-1),
        }

    def has_baseline_peers(self) -> bool:
        return importlib.util.find_spec("entmax") is not None

    def baseline_peers(self) -> dict[str, Fn]:
        if not self.has_baseline_peers():
            return {}
        import entmax

        return {
            "sparsemax": lambda x: entmax.sparsemax(x, dim=-1),
            "entmax15": lambda x: entmax.entmax15(x, dim=-1),
            "entmax_bisect": lambda x: entmax.entmax_bisect(x, alpha=1.5, dim=-1),
        }


class JaxBackend(Backend):
    name = "jax"
    requires = ("jax",)
    native_softmax = "jax.nn.softmax under jax.jit"
    copy_op = "jnp.copy under jax.jit"
    autodiff = "jax.vjp under jax.jit"

    def no_gpu_reason(self) -> str | None:
        import jax

        try:
            jax.devices("gpu")
        except RuntimeError as exc:
            return f"no GPU visible to jax ({str(exc).splitlines()[0]})"
        return None

    def setup(self) -> None:
        import jax

        kinds = {"cpu": "cpu", "gpu": "gpu"}
        self._device = (
            jax.devices(kinds[self.device_request])[0]
            if self.device_request in kinds
            else jax.devices()[0]
        )
        self.device = str(self._device)

    def asarray(self, a: np.ndarray) -> Any:
        import jax

        return jax.device_put(a, self._device)

    def sync(self, y: Any) -> None:
        import jax

        jax.block_until_ready(y)  # type: ignore[no-untyped-call]

    def softmax(self, x: Any, axis: int = -1, where: Any = None) -> Any:
        import jax

        return jax.nn.softmax(x, axis=axis, where=where)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        import jax

        return jax.nn.log_softmax(x, axis=axis)

    def dtype_scope(self, dtype: str) -> contextlib.AbstractContextManager[Any]:
        import jax

        # Without x64, JAX silently computes "float64" in float32.
        return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()

    def cast(self, x: Any, dtype: str) -> Any:
        import jax.numpy as jnp

        return x.astype(getattr(jnp, dtype))

    def copy(self, x: Any) -> Any:
        import jax.numpy as jnp

        return jnp.copy(x)

    def forward(self, fn: Fn) -> Fn:
        import jax

        return jax.jit(fn)  # type: ignore[no-any-return]

    def vjp(self, fn: Fn) -> Callable[..., Any] | None:
        import jax

        def forward_backward(x: Any, g: Any, *operands: Any) -> Any:
            return jax.vjp(lambda x: fn(x, *operands), x)[1](g)[0]

        return jax.jit(forward_backward)  # type: ignore[no-any-return]


class DaskBackend(Backend):
    name = "dask"
    requires = ("dask",)
    copy_op = "Array.copy"

    def asarray(self, a: np.ndarray) -> Any:
        import os

        import dask.array as da

        rows = max(1, a.shape[0] // (os.cpu_count() or 1))
        return da.from_array(a, chunks=(rows, *a.shape[1:]))  # type: ignore[no-untyped-call]

    def to_numpy(self, y: Any) -> np.ndarray:
        return np.asarray(y.compute())

    def sync(self, y: Any) -> None:
        y.compute()


class ArrayApiStrictBackend(Backend):
    name = "array_api_strict"
    requires = ("array_api_strict",)
    copy_op = "asarray(x, copy=True)"

    def asarray(self, a: np.ndarray) -> Any:
        import array_api_strict as xp

        return xp.asarray(a)

    def to_numpy(self, y: Any) -> np.ndarray:
        return np.array(np.from_dlpack(y), copy=True)

    def copy(self, x: Any) -> Any:
        import array_api_strict as xp

        return xp.asarray(x, copy=True)


class CupyBackend(Backend):
    name = "cupy"
    requires = ("cupy",)
    native_softmax = "cupyx.scipy.special.softmax"

    def unavailable(self) -> str | None:
        if self.device_request == "cpu":
            return "cupy runs on a GPU only"
        return super().unavailable() or self.no_gpu_reason()

    def no_gpu_reason(self) -> str | None:
        import cupy

        try:
            found = cupy.cuda.runtime.getDeviceCount() > 0
        except Exception as exc:  # CUDA driver or runtime missing
            return f"no CUDA device ({type(exc).__name__})"
        return None if found else "no CUDA device"

    def setup(self) -> None:
        self.device = "cuda"

    def asarray(self, a: np.ndarray) -> Any:
        import cupy

        return cupy.asarray(a)

    def to_numpy(self, y: Any) -> np.ndarray:
        import cupy

        return np.asarray(cupy.asnumpy(y))

    def sync(self, y: Any) -> None:
        import cupy

        cupy.cuda.get_current_stream().synchronize()

    def softmax(self, x: Any, axis: int = -1, where: Any = None) -> Any:
        import cupy
        from cupyx.scipy.special import softmax

        return softmax(x if where is None else cupy.where(where, x, -cupy.inf), axis=axis)


class TorchCompileBackend(TorchBackend):
    """PyTorch inside ``torch.compile`` (Inductor), as in a user's compiled model.

    Each method is compiled on its own (static shapes; the tests check that
    ev-softmax compiles with ``fullgraph=True``, the paper's composition breaks
    the graph); the forward+backward times the compiled forward and its compiled
    backward. Peers are left out: compiling them all would take minutes.
    """

    name = "torch-compile"
    native_softmax = "torch.softmax under torch.compile"
    copy_op = "Tensor.clone under torch.compile"
    autodiff = "torch.autograd.grad through the compiled graph"
    _METHODS = ("softmax", "ev_softmax", "ev_softmax_eps", "reference", "reference_eps", "copy")

    def setup(self) -> None:
        super().setup()
        import torch._dynamo

        # Every method is a functools.partial compiled through the same wrapper code,
        # so all of them share one cache: a graph per method, shape and mode.
        torch._dynamo.config.recompile_limit = 4096
        torch._dynamo.config.accumulated_recompile_limit = 4096

    def forward(self, fn: Fn) -> Fn:
        import torch

        return torch.compile(fn, dynamic=False)  # type: ignore[no-any-return]

    def vjp(self, fn: Fn) -> Callable[..., Any] | None:
        import torch

        compiled = torch.compile(fn, dynamic=False)

        def forward_backward(x: Any, g: Any, *operands: Any) -> Any:
            return torch.autograd.grad(compiled(x, *operands), x, g)[0]

        return forward_backward

    def peers(self) -> dict[str, Fn]:
        return {}

    def has_baseline_peers(self) -> bool:
        return False

    def select(self, found: list[Any]) -> list[Any]:
        import torch

        # The paper's composition with its namespace bound in advance: looking it up
        # inside the compiled function would trace into array_api_compat's caches.
        xp = array_namespace(torch.empty(0))
        chosen = []
        for method in found:
            if method.key not in self._METHODS:
                continue
            if method.key.startswith("reference"):
                fn = functools.partial(method.fn, xp=xp)
                method = dataclasses.replace(method, fn=fn)
            chosen.append(method)
        return chosen


BACKENDS: dict[str, type[Backend]] = {
    b.name: b
    for b in (
        NumpyBackend,
        TorchBackend,
        TorchCompileBackend,
        JaxBackend,
        CupyBackend,
        DaskBackend,
        ArrayApiStrictBackend,
    )
}
# What ``--backends`` means when not given: the libraries users pick for speed.
# Dask and array-api-strict are for correctness and scale-out, not speed: on request.
DEFAULT_BACKENDS = ("numpy", "torch", "jax", "cupy")
