"""The path matrix: every execution path of ev-softmax, reached the way a user reaches it.

Each :class:`Path` names one way of running ``ev_softmax`` / ``log_ev_softmax`` /
``ev_softmax_support`` (and, where the path is about transformations, their
gradients and JVPs): NumPy with and without the compiled kernel, torch eager,
``torch.compile`` (plain, with ``where``, around ``torch.func``), ``torch.func``
eagerly, ``torch.export``, both ONNX exporters through onnxruntime,
``torch.jit.trace``, Triton in its interpreter, the CuPy kernels replayed in
NumPy, JAX ``jit`` with the FFI kernel and with the XLA form, ``jax.export``,
``shard_map`` on two host devices, Dask and array-api-strict.

A path takes :class:`tests.path_cases.Request` objects (NumPy in) and returns
NumPy arrays plus the dtype name of the framework's result; it converts in and
out itself. :func:`check` runs one (path, case group, dtype) cell of the
battery against the float64 reference; ``tests/test_paths.py`` makes each
cell a test, and ``python -m tests.paths --summary`` prints the whole matrix
(paths x case groups, passed/failed/skipped cells) for the backends selected
by ``EVSOFTMAX_TEST_BACKENDS``.

Paths that must run in another process (Triton reads ``TRITON_INTERPRET`` at
import; JAX fixes its device count at start) run their whole battery in ONE
subprocess (``python -m tests.paths --dump NAME FILE``), which ships the
results back as an ``.npz``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path as _FsPath
from typing import Any

import numpy as np

from . import path_cases as pc
from .backends import selected, to_numpy

__all__ = ["PATHS", "Path", "by_name", "check", "main"]

ROOT = _FsPath(__file__).resolve().parent.parent
Result = tuple[np.ndarray, str]
Runner = Callable[[pc.Request], Result]


@dataclasses.dataclass(frozen=True)
class Path:
    """One execution path: what it runs, where it belongs and how to call it."""

    name: str
    backend: str  # the EVSOFTMAX_TEST_BACKENDS entry whose session runs it
    make: Callable[[], Runner]  # builds the runner (imports the framework) once
    functions: tuple[str, ...] = pc.FORWARD
    dtypes: tuple[str, ...] = pc.DTYPES
    needs: tuple[str, ...] = ()  # importable modules the path needs
    # (group, dtype) -> reason to skip that cell visibly, or None.
    skip: Callable[[str, str], str | None] = lambda group, dtype: None
    # Environment for the whole battery in a subprocess, or None to run in-process.
    subprocess_env: dict[str, str] | None = None
    kernel: bool | None = None  # True: needs the compiled CPU kernel; False: runs without it

    def unavailable(self) -> str | None:
        """Why this path cannot run here (a visible skip), or None."""
        for module in self.needs:
            if importlib.util.find_spec(module) is None:
                return f"{self.name} needs {module}, which is not installed"
        if self.kernel:
            from evsoftmax import _ext

            if _ext._KERNELS is None:
                if os.environ.get("EVSOFTMAX_REQUIRE_CPU_KERNELS"):
                    return "REQUIRED: evsoftmax._ext._cpu_kernels is not built"
                return "evsoftmax's compiled CPU kernels are not built"
        return None

    @functools.cached_property
    def runner(self) -> Runner:
        if self.subprocess_env is not None and os.environ.get("EVSOFTMAX_PATHS_CHILD") != self.name:
            return _subprocess_runner(self)
        inner = self.make()
        env = {"EVSOFTMAX_NO_CPU_KERNELS": "1" if self.kernel is False else None}
        if self.kernel is None:
            return inner

        def run(req: pc.Request) -> Result:
            with _environment(env, jax_state=self.name):
                return inner(req)

        return run


# --- environment switching -------------------------------------------------------

_JAX_KERNEL_STATE: list[str | None] = [None]


@contextlib.contextmanager
def _environment(env: dict[str, str | None], jax_state: str) -> Iterator[None]:
    """Set (value) or unset (None) environment variables for one call, then restore them."""
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if "jax" in sys.modules and _JAX_KERNEL_STATE[0] != os.environ.get("EVSOFTMAX_NO_CPU_KERNELS"):
        # JAX reads the kernel switch when tracing: drop traces made in the other mode.
        sys.modules["jax"].clear_caches()
        _JAX_KERNEL_STATE[0] = os.environ.get("EVSOFTMAX_NO_CPU_KERNELS")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- framework conversions --------------------------------------------------------


def _dtype_name(a: Any) -> str:
    name = str(a.dtype)
    for prefix in ("torch.", "array_api_strict.", "dtype("):
        name = name.removeprefix(prefix)
    return name.strip("')")


def _numpy_result(out: Any) -> Result:
    return to_numpy(out), _dtype_name(out)


def _inputs_numpy(req: pc.Request) -> tuple[np.ndarray, np.ndarray | None]:
    x = pc.apply_view(req.inp.base(req.dtype), req.inp.view)
    return x, req.inp.where


def _torch_tensor(a: np.ndarray, dtype: str) -> Any:
    import torch

    if dtype == "bfloat16":
        return torch.from_numpy(np.asarray(a, dtype=np.float32).copy()).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def _torch_inputs(req: pc.Request) -> tuple[Any, Any, Any]:
    """``x`` (with the input's layout), ``where`` and the cotangent as tensors."""
    import torch

    x = pc.apply_view(_torch_tensor(req.inp.base(req.dtype), req.dtype), req.inp.view)
    where = None if req.inp.where is None else torch.from_numpy(req.inp.where.copy())
    c = _torch_tensor(pc.as_dtype(pc.cotangent(tuple(x.shape)), req.dtype), req.dtype)
    return x, where, c


def _torch_forward(function: str, axis: int, epsilon: float) -> Callable[..., Any]:
    """The public torch call for ``function`` (support through the top-level function)."""
    import evsoftmax as evs
    import evsoftmax.torch as evt

    if function == "ev_softmax":
        return lambda x, w=None: evt.ev_softmax(x, axis, epsilon, w)
    if function == "log_ev_softmax":
        return lambda x, w=None: evt.log_ev_softmax(x, axis, epsilon, w)
    if function == "ev_softmax_support":
        return lambda x, w=None: evs.ev_softmax_support(x, axis=axis, where=w)
    raise KeyError(function)


def _base_function(function: str) -> str:
    return function.removeprefix("grad_").removeprefix("jvp_")


def _batch_axis(ndim: int, axis: int) -> tuple[int, int]:
    """A non-normalized axis to map over, and the normalized axis inside the map."""
    axis %= ndim
    b = 0 if axis != 0 else 1
    return b, axis - (1 if b < axis else 0)


def _torch_eager() -> Runner:
    import torch

    def run(req: pc.Request) -> Result:
        x, where, c = _torch_inputs(req)
        name = _base_function(req.function)
        f = _torch_forward(name, req.inp.axis, req.epsilon)
        if req.function.startswith("grad_"):
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad((f(leaf, where) * c).sum(), leaf)
            return _numpy_result(grad)
        return _numpy_result(f(x, where))

    return run


def _torch_func() -> Runner:
    """torch.func transforms, eagerly: vmap for values, grad, jvp."""
    import torch

    def run(req: pc.Request) -> Result:
        x, where, c = _torch_inputs(req)
        axis, eps = req.inp.axis, req.epsilon
        name = _base_function(req.function)
        if req.function.startswith("grad_"):
            f = _torch_forward(name, axis, eps)
            return _numpy_result(torch.func.grad(lambda v: (f(v, where) * c).sum())(x))
        if req.function.startswith("jvp_"):
            f = _torch_forward(name, axis, eps)
            return _numpy_result(torch.func.jvp(lambda v: f(v, where), (x,), (c,))[1])
        return _numpy_result(_torch_vmapped(name, x, where, axis, eps, compiled=False))

    return run


def _torch_vmapped(name: str, x: Any, where: Any, axis: int, eps: float, compiled: bool) -> Any:
    import torch

    b, inner = _batch_axis(x.ndim, axis)
    w = None if where is None else torch.broadcast_to(where, x.shape).contiguous()
    f = _torch_forward(name, inner, eps)
    if w is None:
        mapped = torch.func.vmap(lambda v: f(v), in_dims=b, out_dims=b)
        args: tuple[Any, ...] = (x,)
    else:
        mapped = torch.func.vmap(lambda v, m: f(v, m), in_dims=(b, b), out_dims=b)
        args = (x, w)
    if compiled:
        mapped = _compiled(("vmap", name, b, inner, eps, w is None), lambda: mapped)
    return mapped(*args)


_COMPILED: dict[Any, Any] = {}


def _compiled(key: Any, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
    """One ``torch.compile(fullgraph=True)`` callable per key, reused across calls."""
    import torch

    if key not in _COMPILED:
        import torch._dynamo

        # Never fall back to eager silently after many recompilations.
        torch._dynamo.config.recompile_limit = 10_000
        torch._dynamo.config.accumulated_recompile_limit = 100_000
        _COMPILED[key] = torch.compile(build(), fullgraph=True, backend=COMPILE_BACKEND)
    return _COMPILED[key]


# torch.compile backend for the matrix (inductor is what users get by default).
COMPILE_BACKEND = os.environ.get("EVSOFTMAX_MATRIX_COMPILE_BACKEND", "inductor")


def _torch_compile(with_where: bool) -> Callable[[], Runner]:
    """torch.compile of the public call; ``with_where`` always passes a mask (all True if none)."""

    def make() -> Runner:
        import torch

        def run(req: pc.Request) -> Result:
            x, where, c = _torch_inputs(req)
            if with_where and where is None:
                where = torch.ones(x.shape[req.inp.axis], dtype=torch.bool)
                if req.inp.axis % x.ndim != x.ndim - 1:
                    where = where.reshape(-1, *([1] * (x.ndim - 1 - req.inp.axis % x.ndim)))
            key = (req.function, req.inp.axis, req.epsilon, where is None)
            f = _torch_forward(req.function, req.inp.axis, req.epsilon)
            compiled = _compiled(key, lambda: f if where is not None else (lambda v: f(v)))
            return _numpy_result(compiled(x) if where is None else compiled(x, where))

        return run

    return make


def _torch_compile_func() -> Runner:
    """torch.compile around torch.func.vmap (values) and torch.func.grad (gradients)."""
    import torch

    def run(req: pc.Request) -> Result:
        x, where, c = _torch_inputs(req)
        axis, eps = req.inp.axis, req.epsilon
        name = _base_function(req.function)
        if req.function.startswith("grad_"):
            f = _torch_forward(name, axis, eps)

            def build() -> Callable[..., Any]:
                return torch.func.grad(lambda v, m, t: (f(v, m) * t).sum())

            return _numpy_result(_compiled(("grad", name, axis, eps), build)(x, where, c))
        return _numpy_result(_torch_vmapped(name, x, where, axis, eps, compiled=True))

    return run


class _Module:
    """A ``torch.nn.Module`` around one public call (for export and tracing)."""

    @staticmethod
    def build(function: str, axis: int, epsilon: float, masked: bool) -> Any:
        import torch

        f = _torch_forward(function, axis, epsilon)

        if masked:

            class Masked(torch.nn.Module):
                def forward(self, x: Any, where: Any) -> Any:
                    return f(x, where)

            return Masked().eval()

        class Plain(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return f(x)

        return Plain().eval()


def _torch_export() -> Runner:
    import torch

    def run(req: pc.Request) -> Result:
        x, where, _ = _torch_inputs(req)
        module = _Module.build(req.function, req.inp.axis, req.epsilon, where is not None)
        args = (x,) if where is None else (x, where)
        program = torch.export.export(module, args)
        return _numpy_result(program.module()(*args))

    return run


def _torch_onnx(dynamo: bool) -> Callable[[], Runner]:
    def make() -> Runner:
        import onnxruntime
        import torch

        def run(req: pc.Request) -> Result:
            x, where, _ = _torch_inputs(req)
            module = _Module.build(req.function, req.inp.axis, req.epsilon, where is not None)
            args = (x,) if where is None else (x, where)
            names = ["x"] if where is None else ["x", "where"]
            buffer = io.BytesIO()
            with warnings_ignored():
                if dynamo:
                    program = torch.onnx.export(module, args, dynamo=True, input_names=names)
                    program.save(buffer)  # type: ignore[union-attr]
                else:
                    torch.onnx.export(module, args, buffer, dynamo=False, input_names=names)
            session = onnxruntime.InferenceSession(
                buffer.getvalue(), providers=["CPUExecutionProvider"]
            )
            feeds = {
                i.name: np.ascontiguousarray(a.numpy())
                for i, a in zip(session.get_inputs(), args, strict=False)
            }
            (out,) = session.run(None, feeds)
            return np.asarray(out).astype(np.float64) if out.dtype != bool else out, str(out.dtype)

        return run

    return make


@contextlib.contextmanager
def warnings_ignored() -> Iterator[None]:
    """Exporters warn about their own internals (deprecations, tracer notes)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _torch_jit_trace() -> Runner:
    """torch.jit.trace on an input of another rank (and shape), then called on the case."""
    import torch

    def run(req: pc.Request) -> Result:
        x, where, _ = _torch_inputs(req)
        module = _Module.build(req.function, req.inp.axis, req.epsilon, where is not None)
        example = torch.randn((3,) + tuple(max(n, 1) + 1 for n in x.shape), dtype=torch.float64)
        example = example.to(x.dtype)
        args: tuple[Any, ...] = (example,)
        if where is not None:
            args = (example, torch.ones(example.shape[-where.ndim :], dtype=torch.bool))
        with warnings_ignored():
            traced = torch.jit.trace(module, args, check_trace=False)
        return _numpy_result(traced(x) if where is None else traced(x, where))

    return run


def _triton() -> Runner:
    """The public torch functions with CPU tensors routed through the Triton kernels."""
    from evsoftmax.adapters.torch import autograd as _torch_autograd
    from evsoftmax.adapters.torch import ops as _torch_ops
    from evsoftmax.adapters.torch import triton as kernels

    # As CUDA tensors would go (tests/test_torch_triton.py does the same with monkeypatch).
    kernels.supports = lambda t: True  # type: ignore[assignment]
    _torch_autograd._TRITON_DEVICES = frozenset({"cuda", "cpu"})  # type: ignore[attr-defined]
    _torch_autograd._triton_module = lambda: kernels  # type: ignore[attr-defined]
    _torch_ops.fast_path_applies = lambda x, where: False  # type: ignore[assignment]
    return _torch_eager()


def _cupy_replay() -> Runner:
    from .cupy_emulation import emulate_forward

    modes = {"ev_softmax": "probs", "log_ev_softmax": "log_probs", "ev_softmax_support": "support"}

    def run(req: pc.Request) -> Result:
        x, where = _inputs_numpy(req)
        with np.errstate(all="ignore"):
            values = x.astype(np.float32) if req.dtype == "bfloat16" else x
            out = emulate_forward(
                values,
                axis=req.inp.axis,
                epsilon=req.epsilon,
                where=where,
                mode=modes[req.function],
                dtype=req.dtype,
            )
        return out, "bool" if out.dtype == bool else req.dtype

    return run


def _numpy_like(convert: Callable[[np.ndarray, str], Any]) -> Callable[[], Runner]:
    """The top-level functions on arrays made by ``convert`` (NumPy, Dask, array-api-strict)."""

    def make() -> Runner:
        import evsoftmax as evs

        def run(req: pc.Request) -> Result:
            x = pc.apply_view(convert(req.inp.base(req.dtype), req.dtype), req.inp.view)
            w = req.inp.where
            where = None if w is None else convert(w, "bool")
            kw = {"axis": req.inp.axis, "where": where}
            if req.function != "ev_softmax_support":
                kw["epsilon"] = req.epsilon
            out = getattr(evs, req.function)(x, **kw)
            if hasattr(out, "dask"):
                import dask

                # Tiny graphs: the synchronous scheduler computes the same values faster.
                with dask.config.set(scheduler="synchronous"):
                    return to_numpy(out), _dtype_name(out)
            return _numpy_result(out)

        return run

    return make


def _as_numpy(a: np.ndarray, dtype: str) -> Any:
    return np.array(a)


def _as_dask(a: np.ndarray, dtype: str) -> Any:
    import dask.array as da

    # Two chunks along the first and last axes: the normalized axis is split in
    # every group (each normalizes along the first or the last axis, or both views).
    chunks = [max(1, (n + 1) // 2) if i in (0, a.ndim - 1) else -1 for i, n in enumerate(a.shape)]
    return da.from_array(np.array(a), chunks=tuple(chunks))


def _as_strict(a: np.ndarray, dtype: str) -> Any:
    import array_api_strict

    return array_api_strict.asarray(np.array(a))


# --- JAX --------------------------------------------------------------------------


def _jax_setup() -> Any:
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _jax_inputs(req: pc.Request) -> tuple[Any, Any, Any]:
    import jax.numpy as jnp

    x = pc.apply_view(jnp.asarray(req.inp.base(req.dtype)), req.inp.view)
    where = None if req.inp.where is None else jnp.asarray(req.inp.where)
    c = jnp.asarray(pc.as_dtype(pc.cotangent(tuple(x.shape)), req.dtype))
    return x, where, c


def _jax_forward(function: str, axis: int, epsilon: float) -> Callable[..., Any]:
    import evsoftmax as evs

    if function == "ev_softmax_support":
        return lambda x, w: evs.ev_softmax_support(x, axis=axis, where=w)
    f = getattr(evs, function)
    return lambda x, w: f(x, axis=axis, epsilon=epsilon, where=w)


def _jax_transformed(req: pc.Request, axis: int | None = None) -> Callable[..., Any]:
    """``(x, where, c) -> result`` for the request, with grad/jvp applied (not jitted)."""
    jax = _jax_setup()
    import jax.numpy as jnp

    name = _base_function(req.function)
    f = _jax_forward(name, req.inp.axis if axis is None else axis, req.epsilon)
    if req.function.startswith("grad_"):
        return lambda x, w, c: jax.grad(lambda v: jnp.sum(f(v, w) * c))(x)
    if req.function.startswith("jvp_"):
        return lambda x, w, c: jax.jvp(lambda v: f(v, w), (x,), (c,))[1]
    return lambda x, w, c: f(x, w)


def _jax_jit() -> Runner:
    jax = _jax_setup()

    def run(req: pc.Request) -> Result:
        x, where, c = _jax_inputs(req)
        return _numpy_result(jax.jit(_jax_transformed(req))(x, where, c))

    return run


def _jax_export() -> Runner:
    """jax.export of the jitted call, serialized, deserialized and called."""
    jax = _jax_setup()
    from jax import export

    def run(req: pc.Request) -> Result:
        x, where, c = _jax_inputs(req)
        exported = export.export(jax.jit(_jax_transformed(req)))(x, where, c)
        restored = export.deserialize(exported.serialize())
        return _numpy_result(restored.call(x, where, c))

    return run


def _jax_shard_map() -> Runner:
    """shard_map over 2 host devices along a batch axis (the input doubled along it)."""
    jax = _jax_setup()
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:  # older JAX
        from jax.experimental.shard_map import shard_map
    if jax.device_count() < 2:
        raise RuntimeError(f"shard_map needs 2 host devices, found {jax.devices()}")
    mesh = jax.make_mesh((2,), ("d",))

    def run(req: pc.Request) -> Result:
        x, where, c = _jax_inputs(req)
        b, _ = _batch_axis(x.ndim, req.inp.axis)
        w = None if where is None else jnp.broadcast_to(where, x.shape)
        n = x.shape[b]
        # Rows are independent: two copies along b split evenly over the 2 devices.
        x2, c2 = jnp.concatenate([x, x], axis=b), jnp.concatenate([c, c], axis=b)
        w2 = None if w is None else jnp.concatenate([w, w], axis=b)
        spec = P(*([None] * b), "d")
        f = _jax_transformed(req)
        if w2 is None:
            mapped = shard_map(
                lambda v, t: f(v, None, t), mesh=mesh, in_specs=(spec, spec), out_specs=spec
            )
            out = jax.jit(mapped)(x2, c2)
        else:
            mapped = shard_map(f, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)
            out = jax.jit(mapped)(x2, w2, c2)
        return _numpy_result(jax.lax.slice_in_dim(out, 0, n, axis=b))

    return run


# --- subprocess paths -------------------------------------------------------------


def _subprocess_runner(path: Path) -> Runner:
    """Run ``path``'s whole battery in one child process; serve the results from its .npz."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.npz")
        env = {**os.environ, **(path.subprocess_env or {}), "EVSOFTMAX_PATHS_CHILD": path.name}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "tests.paths", "--dump", path.name, out]
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            message = f"{path.name}: the battery's subprocess failed:\n{done.stdout}\n{done.stderr}"
            raise RuntimeError(message[-4000:])
        with np.load(out, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("__meta__")))

    def run(req: pc.Request) -> Result:
        entry = meta[req.key]
        if "error" in entry:
            raise RuntimeError(f"(in the subprocess) {entry['error']}")
        return arrays[entry["array"]], entry["dtype"]

    return run


def _dump(name: str, file: str) -> None:
    """The child's side: run every cell of ``name``'s battery, save results or errors."""
    path = by_name(name)
    meta: dict[str, dict[str, str]] = {}
    arrays: dict[str, np.ndarray] = {}
    runner = path.runner
    for group in pc.GROUPS:
        for dtype in path.dtypes:
            if path.skip(group, dtype) is not None:
                continue
            for req in pc.requests(group, dtype, path.functions):
                try:
                    values, dtype_name = _call(runner, req)
                except Exception as exc:
                    meta[req.key] = {"error": _describe(exc)}
                    continue
                key = f"a{len(arrays)}"
                arrays[key] = np.asarray(values)
                meta[req.key] = {"array": key, "dtype": dtype_name}
    np.savez(file, __meta__=np.array(json.dumps(meta)), **arrays)


def _call(runner: Runner, req: pc.Request) -> Result:
    """``runner(req)`` with warnings as errors (as pytest's filterwarnings=error does).

    Deprecation notices that frameworks raise about their own internals while
    compiling or exporting are ignored; any other warning fails the call.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=_FRAMEWORKS)
        return runner(req)


_FRAMEWORKS = r"(torch|onnx|onnxscript|onnxruntime|jax|jaxlib|triton|dask)(\.|$)"


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > 400:
        text = text[:400] + " ..."
    return text


# --- the registry -----------------------------------------------------------------


def _half_skip(names: tuple[str, ...], reason: str) -> Callable[[str, str], str | None]:
    return lambda group, dtype: reason if dtype in names else None


def _numpy_skip(group: str, dtype: str) -> str | None:
    return pc.ml_dtypes_missing() if dtype == "bfloat16" else None


def _onnx_skip(group: str, dtype: str) -> str | None:
    if dtype == "bfloat16":
        return "onnxruntime's CPU provider has no bfloat16 kernels for these ops"
    return None


_SHARD_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

PATHS: tuple[Path, ...] = (
    Path("numpy-kernel", "numpy", _numpy_like(_as_numpy), skip=_numpy_skip, kernel=True),
    Path("numpy-no-kernel", "numpy", _numpy_like(_as_numpy), skip=_numpy_skip, kernel=False),
    Path("cupy-replay", "numpy", _cupy_replay, needs=("ml_dtypes",)),
    Path(
        "array-api-strict",
        "array_api_strict",
        _numpy_like(_as_strict),
        skip=_half_skip(("float16", "bfloat16"), "array-api-strict has no half-precision dtypes"),
    ),
    Path("dask", "dask", _numpy_like(_as_dask), skip=_numpy_skip),
    Path("torch-kernel", "torch", _torch_eager, pc.FORWARD + pc.GRADS, kernel=True),
    Path("torch-no-kernel", "torch", _torch_eager, pc.FORWARD + pc.GRADS, kernel=False),
    Path("torch-func", "torch", _torch_func, pc.FORWARD + pc.GRADS + pc.JVPS),
    Path("torch-compile", "torch", _torch_compile(False)),
    Path("torch-compile-where", "torch", _torch_compile(True)),
    Path("torch-compile-func", "torch", _torch_compile_func, pc.FORWARD + pc.GRADS),
    Path("torch-export", "torch", _torch_export),
    Path(
        "torch-onnx-legacy",
        "torch",
        _torch_onnx(False),
        needs=("onnx", "onnxruntime"),
        skip=_onnx_skip,
    ),
    Path(
        "torch-onnx-dynamo",
        "torch",
        _torch_onnx(True),
        needs=("onnx", "onnxruntime", "onnxscript"),
        skip=_onnx_skip,
    ),
    Path("torch-jit-trace", "torch", _torch_jit_trace),
    Path(
        "torch-triton",
        "torch",
        _triton,
        ("ev_softmax", "log_ev_softmax") + pc.GRADS,
        needs=("triton",),
        subprocess_env={"TRITON_INTERPRET": "1"},
    ),
    Path("jax-jit-kernel", "jax", _jax_jit, pc.FORWARD + pc.GRADS + pc.JVPS, kernel=True),
    Path("jax-jit-xla", "jax", _jax_jit, pc.FORWARD + pc.GRADS + pc.JVPS, kernel=False),
    Path("jax-export", "jax", _jax_export),
    Path(
        "jax-shard-map",
        "jax",
        _jax_shard_map,
        pc.FORWARD + pc.GRADS + pc.JVPS,
        subprocess_env=_SHARD_ENV,
    ),
)


def by_name(name: str) -> Path:
    """The registered path called ``name``."""
    for path in PATHS:
        if path.name == name:
            return path
    raise KeyError(f"no path named {name!r}; known: {[p.name for p in PATHS]}")


# --- checking ---------------------------------------------------------------------


def _compare(req: pc.Request, got: np.ndarray, got_dtype: str) -> str | None:
    """None when the path's result matches the reference, else what differs."""
    want, care = pc.expected(req)
    support = req.function == "ev_softmax_support"
    want_dtype = "bool" if support else req.dtype
    if got_dtype != want_dtype:
        return f"dtype {got_dtype}, expected {want_dtype}"
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if support:
        bad = got != want
        if bad.any():
            return f"support differs at {np.argwhere(bad)[:4].tolist()}: got {got.astype(int).tolist()}"
        return None
    got = got.astype(np.float64)
    if care is not None:
        got, want = np.where(care, got, 0.0), np.where(care, want, 0.0)
        nan_rows = ~care
        got = np.where(nan_rows & np.isnan(got), 0.0, got)
    rtol, atol = pc.tolerance(req.dtype)
    if req.function.startswith(("grad_", "jvp_")) and req.dtype in ("float16", "bfloat16"):
        atol = 10 * atol
    try:
        with np.errstate(all="ignore"):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        return " | ".join(lines[1:4])[:300]
    return None


def check(path: Path, group: str, dtype: str) -> tuple[str | None, list[str], int]:
    """Run one cell: ``(skip reason or None, failures, number of requests checked)``."""
    reason = path.unavailable() or (None if dtype in path.dtypes else f"{path.name} has no {dtype}")
    reason = reason or path.skip(group, dtype)
    if reason is not None:
        return reason, [], 0
    failures = []
    reqs = pc.requests(group, dtype, path.functions)
    for req in reqs:
        try:
            got, got_dtype = _call(path.runner, req)
        except Exception as exc:
            failures.append(
                f"{req.inp.label} {req.function} eps={req.epsilon:g}: raised {_describe(exc)}"
            )
            continue
        problem = _compare(req, got, got_dtype)
        if problem is not None:
            failures.append(f"{req.inp.label} {req.function} eps={req.epsilon:g}: {problem}")
    return None, failures, len(reqs)


def selected_paths() -> list[Path]:
    """The paths whose backend this run selected (``EVSOFTMAX_TEST_BACKENDS``)."""
    chosen = set(selected())
    return [p for p in PATHS if p.backend in chosen]


def summary(paths: list[Path]) -> str:
    """The matrix as text: one row per path, one column per case group (pass/total dtypes)."""
    groups = list(pc.GROUPS)
    width = max(len(p.name) for p in paths) + 2
    header = "path".ljust(width) + " ".join(g[:9].rjust(9) for g in groups) + "  seconds"
    lines = [header, "-" * len(header)]
    details = []
    for path in paths:
        start = time.perf_counter()
        cells = []
        for group in groups:
            passed = failed = skipped = 0
            for dtype in pc.DTYPES:
                reason, failures, _ = check(path, group, dtype)
                if reason is not None:
                    skipped += 1
                elif failures:
                    failed += 1
                    details.append(
                        f"{path.name}-{group}-{dtype}: {failures[0]} (+{len(failures) - 1} more)"
                    )
                else:
                    passed += 1
            ran = passed + failed
            cells.append((f"{passed}/{ran}" if ran else "skip").rjust(9))
        lines.append(
            path.name.ljust(width) + " ".join(cells) + f"  {time.perf_counter() - start:7.1f}"
        )
    lines.append("")
    lines.append("cell = dtypes passing / dtypes run (float16, bfloat16, float32, float64)")
    return "\n".join(lines + ["", *details])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--dump"]:
        _dump(argv[1], argv[2])
        return 0
    if argv[:1] == ["--summary"]:
        names = argv[1:]
        paths = [by_name(n) for n in names] if names else selected_paths()
        print(summary(paths))
        return 0
    print(__doc__)
    print("usage: python -m tests.paths --summary [PATH ...]")
    return 2


if __name__ == "__main__":
    with np.errstate(all="ignore"):
        try:
            sys.exit(main())
        except Exception:
            traceback.print_exc()
            sys.exit(1)
