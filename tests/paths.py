"""The path matrix: every execution path of ev-softmax, reached the way a user reaches it.

Each :class:`Path` names one way of running ``ev_softmax`` / ``log_ev_softmax`` /
``ev_softmax_support`` (and, where the path is about transformations, their
gradients and JVPs): NumPy with and without the compiled kernel, torch eager,
``torch.compile`` (plain, with ``where``, around ``torch.func``), ``torch.func``
eagerly, ``torch.export``, both ONNX exporters through onnxruntime,
``torch.jit.trace``, Triton in its interpreter, the CuPy kernels replayed in
NumPy, JAX ``jit`` with the FFI kernel and with the XLA form, ``jax.export``,
``shard_map`` on two host devices, Dask (rows split across chunks, and whole rows
in one chunk) and array-api-strict.

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

try:  # POSIX: workers share a subprocess battery's results (see _run_in_subprocess)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from . import path_cases as pc
from .backends import host_devices_xla_flags, selected, to_numpy
from .jax_helpers import sync_jax_caches

__all__ = ["PATHS", "Path", "by_name", "check", "main"]

ROOT = _FsPath(__file__).resolve().parent.parent
Result = tuple[np.ndarray, str]
# A runner takes a *bundle*: requests that share one input and dtype (different
# functions and epsilons), and returns one result per request, or raises when the
# bundle as a whole fails. Paths with ``bundled=True`` compute a bundle in one
# traced/compiled/exported program (one compile per input instead of one per call).
Runner = Callable[[list[pc.Request]], list[Result]]


@contextlib.contextmanager
def _every_row_length(path: Path) -> Iterator[None]:
    """On the JAX kernel path, send rows of every length to the kernel.

    The adapter routes short half-precision rows (``kernels._MIN_LENGTH``) to the
    XLA form (faster there); the battery's short rows would otherwise test that
    form twice.
    """
    if path.backend != "jax" or path.kernel is not True:
        yield
        return
    from evsoftmax.adapters.jax import kernels

    saved = kernels._MIN_LENGTH
    kernels._MIN_LENGTH = {}
    try:
        yield
    finally:
        kernels._MIN_LENGTH = saved


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
    bundled: bool = False
    # When a function's program fails, retry its calls one by one (False where an
    # export costs seconds: the function's calls then report the function's error).
    per_call: bool = True
    # The ε of the value functions and of the derivatives (see _TRACED below).
    epsilons: tuple[float, ...] = pc.EPSILONS
    derivative_epsilons: tuple[float, ...] = pc.EPSILONS

    def requests(self, group: str, dtype: str) -> list[pc.Request]:
        """The calls of one cell of the battery."""
        return pc.requests(group, dtype, self.functions, self.epsilons, self.derivative_epsilons)

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

    @property
    def in_child(self) -> bool:
        return os.environ.get("EVSOFTMAX_PATHS_CHILD") == self.name

    @functools.cached_property
    def runner(self) -> Runner:
        inner = self.make()
        env = {"EVSOFTMAX_NO_CPU_KERNELS": "1" if self.kernel is False else None}
        if self.kernel is None:
            return inner

        def run(bundle: list[pc.Request]) -> list[Result]:
            with _environment(env), _every_row_length(self):
                sync_jax_caches()  # JAX chooses its path when tracing
                return inner(bundle)

        return run

    @functools.cached_property
    def _from_child(self) -> dict[str, Result | str]:
        return _run_in_subprocess(self)

    def results(self, reqs: list[pc.Request]) -> list[Result | str]:
        """Results (or error descriptions) of ``reqs``, all of one group and dtype."""
        if self.subprocess_env is not None and not self.in_child:
            got = self._from_child
            missing = got.get("__error__", "not run in the subprocess")
            return [got.get(r.key, missing) for r in reqs]
        if not self.bundled:
            return [_attempt(self.runner, [r])[0] for r in reqs]
        out: list[Result | str] = []
        for bundle in _split(reqs, lambda r: r.inp.label):
            got = _attempt(self.runner, bundle)
            if all(isinstance(g, str) for g in got) and len(bundle) > 1:
                # One failing function must not hide the others: retry per function.
                got = []
                for part in _split(bundle, lambda r: r.function):
                    tried = _attempt(self.runner, part)
                    if all(isinstance(g, str) for g in tried) and len(part) > 1 and self.per_call:
                        tried = [_attempt(self.runner, [r])[0] for r in part]
                    got += tried
            out += got
        return out


def _split(reqs: list[pc.Request], key: Callable[[pc.Request], str]) -> list[list[pc.Request]]:
    parts: dict[str, list[pc.Request]] = {}
    for r in reqs:
        parts.setdefault(key(r), []).append(r)
    return list(parts.values())


def _attempt(runner: Runner, bundle: list[pc.Request]) -> list[Result | str]:
    """``runner(bundle)`` with warnings as errors (as pytest's filterwarnings=error does).

    Deprecation notices that frameworks raise about their own internals while
    compiling or exporting are ignored; any other warning fails the call.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for category in (DeprecationWarning, FutureWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category, module=_FRAMEWORKS)
            got = runner(bundle)
        assert len(got) == len(bundle)
        return list(got)
    except Exception as exc:
        return [f"raised {_describe(exc)}"] * len(bundle)


_FRAMEWORKS = r"(torch|onnx|onnxscript|onnxruntime|jax|jaxlib|triton|dask)(\.|$)"


def _each(one: Callable[[pc.Request], Result]) -> Runner:
    """A runner from a per-request function."""
    return lambda bundle: [one(r) for r in bundle]


# --- environment switching -------------------------------------------------------


@contextlib.contextmanager
def _environment(env: dict[str, str | None]) -> Iterator[None]:
    """Set (value) or unset (None) environment variables for one call, then restore them."""
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
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


def _base_function(function: str) -> str:
    return function.removeprefix("grad_").removeprefix("jvp_")


def _batch_axis(ndim: int, axis: int) -> tuple[int, int]:
    """A non-normalized axis to map over, and the normalized axis inside the map."""
    axis %= ndim
    b = 0 if axis != 0 else 1
    return b, axis - (1 if b < axis else 0)


# --- torch ------------------------------------------------------------------------


def _torch_tensor(a: np.ndarray, dtype: str) -> Any:
    import torch

    if dtype == "bfloat16":
        return torch.from_numpy(np.asarray(a, dtype=np.float32).copy()).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def _torch_inputs(req: pc.Request) -> tuple[Any, Any, Any]:
    """``x`` (with the input's layout), ``where`` and the cotangent, as tensors."""
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


def _torch_bundle(bundle: list[pc.Request], vmapped: bool = False) -> Callable[..., tuple]:
    """``(x, where, c) -> results`` for requests of ONE input, derivatives by torch.func.

    With ``vmapped``, the values come from ``torch.func.vmap`` over a batch axis.
    """
    import torch

    axis = bundle[0].inp.axis

    def value_calls(axis: int) -> list[Callable[..., Any]]:
        return [
            _torch_forward(r.function, axis, r.epsilon) for r in bundle if r.function in pc.FORWARD
        ]

    derivatives = [
        (r.function, _torch_forward(_base_function(r.function), axis, r.epsilon))
        for r in bundle
        if r.function not in pc.FORWARD
    ]

    def values(x: Any, w: Any) -> list[Any]:
        if not vmapped:
            return [f(x, w) for f in value_calls(axis)]
        b, inner = _batch_axis(x.ndim, axis)
        calls = value_calls(inner)
        mask = None if w is None else torch.broadcast_to(w, x.shape)
        mapped = torch.func.vmap(
            lambda v, m: tuple(f(v, m) for f in calls),
            in_dims=(b, None if mask is None else b),
            out_dims=b,
        )
        return list(mapped(x, mask)) if calls else []

    def run(x: Any, w: Any, c: Any) -> tuple:
        got = iter(values(x, w))
        extra = []
        for function, f in derivatives:
            if function.startswith("grad_"):
                extra.append(torch.func.grad(lambda v, f=f: (f(v, w) * c).sum())(x))
            else:
                extra.append(torch.func.jvp(lambda v, f=f: f(v, w), (x,), (c,))[1])
        more = iter(extra)
        return tuple(next(got) if r.function in pc.FORWARD else next(more) for r in bundle)

    return run


def _torch_cell(
    bundle: list[pc.Request],
    *,
    vmapped: bool = False,
    with_where: bool = False,
    example: bool = False,
) -> tuple[Callable[..., tuple], list[Any]]:
    """One function of flat tensor arguments computing every request of a cell, and its arguments.

    A cell holds a few inputs; putting them in one program makes one compile or
    export per cell instead of one per call. ``with_where`` gives inputs without
    a mask an all-True one (broadcast along the normalized axis). With
    ``example``, the arguments are stand-ins of one more dimension and other
    sizes (to trace on, then call with the real ones).
    """
    import torch

    args: list[Any] = []
    plan = []
    for part in _split(bundle, lambda r: r.inp.label):
        x, w, c = _torch_inputs(part[0])
        if with_where and w is None:
            axis = part[0].inp.axis % x.ndim
            w = torch.ones(x.shape[axis], dtype=torch.bool).reshape(-1, *[1] * (x.ndim - 1 - axis))
        if all(r.function in pc.FORWARD for r in part):
            c = None
        if example:
            shape = (3, *(n + 2 for n in x.shape))
            if w is not None:
                w = torch.ones(
                    [1 if m == 1 else shape[i - w.ndim] for i, m in enumerate(w.shape)],
                    dtype=torch.bool,
                )
            x = torch.randn(shape, dtype=torch.float64).to(x.dtype)
            c = None if c is None else torch.ones_like(x)
        slots = []
        for t in (x, w, c):
            slots.append(None if t is None else len(args))
            if t is not None:
                args.append(t)
        plan.append((_torch_bundle(part, vmapped), slots))

    def run(*flat: Any) -> tuple:
        out: list[Any] = []
        for f, slots in plan:
            out += f(*(None if s is None else flat[s] for s in slots))
        return tuple(out)

    return run, args


def _torch_eager() -> Runner:
    """The public torch functions eagerly; gradients by torch.autograd."""
    import torch

    def one(req: pc.Request) -> Result:
        x, where, c = _torch_inputs(req)
        f = _torch_forward(_base_function(req.function), req.inp.axis, req.epsilon)
        if req.function.startswith("grad_"):
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad((f(leaf, where) * c).sum(), leaf)
            return _numpy_result(grad)
        return _numpy_result(f(x, where))

    return _each(one)


def _torch_func() -> Runner:
    """torch.func transforms, eagerly: vmap for values, grad and jvp for derivatives."""

    def run(bundle: list[pc.Request]) -> list[Result]:
        f, args = _torch_cell(bundle, vmapped=True)
        return [_numpy_result(o) for o in f(*args)]

    return run


# torch.compile backends of the matrix (see tests/test_paths.py for the choice);
# EVSOFTMAX_MATRIX_COMPILE_BACKEND, when set, is used by every compiled path.
COMPILE_BACKEND = os.environ.get("EVSOFTMAX_MATRIX_COMPILE_BACKEND")


def _compile(f: Callable[..., Any], backend: str) -> Callable[..., Any]:
    """``torch.compile(f, fullgraph=True)`` from a clean Dynamo state (no silent eager fallback)."""
    import torch
    import torch._dynamo

    # Each cell compiles a new closure of the same code: reset so that no
    # recompile limit is reached (Dynamo would then run the code eagerly).
    torch._dynamo.reset()
    return torch.compile(f, fullgraph=True, backend=COMPILE_BACKEND or backend)


def _torch_compile(with_where: bool, vmapped: bool = False) -> Callable[[], Runner]:
    """torch.compile of the public calls (of their vmap and grad with ``vmapped``).

    The public calls compile with ``aot_eager``: Dynamo's capture, then
    AOTAutograd's trace, where the kernel op's traced form lives. Under
    ``torch.func`` transforms the kernel op is never used (it has no vmap or
    autograd rule, so the composed form runs): what those cells add is Dynamo
    capturing the transforms of the public functions without a graph break, so
    they compile with the ``eager`` backend, which runs Dynamo's graph as
    captured. AOTAutograd's trace of the transforms doubled their cost and
    changes no numerics (``aot_eager`` passes no decomposition table: the ops run
    as eager autograd runs them); ``tests/test_torch_compile.py`` traces ``grad``
    and ``vmap`` of both torch paths through AOTAutograd and Inductor.
    """
    backend = "eager" if vmapped else "aot_eager"

    def make() -> Runner:
        def run(bundle: list[pc.Request]) -> list[Result]:
            f, args = _torch_cell(bundle, vmapped=vmapped, with_where=with_where)
            return [_numpy_result(o) for o in _compile(f, backend)(*args)]

        return run

    return make


def _torch_module(f: Callable[..., tuple]) -> Any:
    """A ``torch.nn.Module`` around ``f`` (for export and tracing)."""
    import torch

    class Cell(torch.nn.Module):
        def forward(self, *args: Any) -> Any:
            return f(*args)

    return Cell().eval()


def _torch_export() -> Runner:
    """torch.export.export, then the exported program's module called."""
    import torch

    def run(bundle: list[pc.Request]) -> list[Result]:
        f, args = _torch_cell(bundle)
        program = torch.export.export(_torch_module(f), tuple(args))
        return [_numpy_result(o) for o in program.module()(*args)]

    return run


def _torch_onnx(dynamo: bool) -> Callable[[], Runner]:
    """torch.onnx.export (legacy or dynamo), run by onnxruntime."""

    def make() -> Runner:
        import onnxruntime
        import torch

        def run(bundle: list[pc.Request]) -> list[Result]:
            f, args = _torch_cell(bundle)
            names = [f"a{i}" for i in range(len(args))]
            buffer = io.BytesIO()
            with _quiet(), _one_torchlib_registry():
                module = _torch_module(f)
                if dynamo:
                    program = torch.onnx.export(
                        module, tuple(args), dynamo=True, input_names=names, verbose=False
                    )
                    program.save(buffer)
                else:
                    torch.onnx.export(module, tuple(args), buffer, dynamo=False, input_names=names)
            session = onnxruntime.InferenceSession(
                buffer.getvalue(), providers=["CPUExecutionProvider"]
            )
            fed = {i.name for i in session.get_inputs()}
            feeds = {n: np.ascontiguousarray(a.numpy()) for n, a in zip(names, args, strict=True)}
            outs = session.run(None, {n: a for n, a in feeds.items() if n in fed})
            return [(np.asarray(o), str(np.asarray(o).dtype)) for o in outs]

        return run

    return make


_TORCHLIB_REGISTRIES: dict[Any, Any] = {}


@contextlib.contextmanager
def _one_torchlib_registry() -> Iterator[None]:
    """The dynamo ONNX exporter with its torchlib registry built once per opset.

    ``torch.onnx.export(dynamo=True)`` builds the registry of every aten-to-ONNX
    function anew on each call (about a second, a fifth of a small cell's export);
    the matrix exports with no custom translations, so one registry serves them all.
    A torch without that internal exports as it is.
    """
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:  # pragma: no cover - another torch layout
        yield
        return
    registry_type = _registration.ONNXRegistry
    build = registry_type.__dict__.get("from_torchlib")
    if not isinstance(build, classmethod):  # pragma: no cover - another torch version
        yield
        return

    def cached(cls: Any, *args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        if key not in _TORCHLIB_REGISTRIES:
            _TORCHLIB_REGISTRIES[key] = build.__func__(cls, *args, **kwargs)
        return _TORCHLIB_REGISTRIES[key]

    registry_type.from_torchlib = classmethod(cached)
    try:
        yield
    finally:
        registry_type.from_torchlib = build


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters warn about their own internals (tracer notes, deprecations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _torch_jit_trace() -> Runner:
    """torch.jit.trace on inputs of another rank and shape, then called on the cell's inputs."""
    import torch

    def run(bundle: list[pc.Request]) -> list[Result]:
        f, args = _torch_cell(bundle)
        _, examples = _torch_cell(bundle, example=True)
        with _quiet():
            traced = torch.jit.trace(_torch_module(f), tuple(examples), check_trace=False)
        return [_numpy_result(o) for o in traced(*args)]

    return run


def _triton() -> Runner:
    """The public torch functions with CPU tensors routed through the Triton kernels."""
    from evsoftmax.adapters.torch import autograd as _torch_autograd
    from evsoftmax.adapters.torch import ops as _torch_ops
    from evsoftmax.adapters.torch import triton as kernels

    # As CUDA tensors go (tests/test_torch_triton.py does the same with monkeypatch);
    # this runs in a child process of its own.
    kernels.supports = lambda t: True
    _torch_autograd._TRITON_DEVICES = frozenset({"cuda", "cpu"})
    _torch_autograd._triton_module = lambda: kernels
    _torch_ops.fast_path_applies = lambda x, where: False
    return _torch_eager()


# --- NumPy, CuPy replay, Dask, array-api-strict ------------------------------------


def _cupy_replay() -> Runner:
    """The CuPy adapter's CUDA kernels, replayed step by step in NumPy."""
    from .cupy_emulation import emulate_forward

    modes = {"ev_softmax": "probs", "log_ev_softmax": "log_probs", "ev_softmax_support": "support"}

    def one(req: pc.Request) -> Result:
        x = pc.apply_view(req.inp.base(req.dtype), req.inp.view)
        values = x.astype(np.float32) if req.dtype == "bfloat16" else x
        out = emulate_forward(
            values,
            axis=req.inp.axis,
            epsilon=req.epsilon,
            where=req.inp.where,
            mode=modes[req.function],
            dtype=req.dtype,
        )
        return out, "bool" if out.dtype == bool else req.dtype

    return _each(one)


def _numpy_like(convert: Callable[[np.ndarray], Any]) -> Callable[[], Runner]:
    """The top-level functions on arrays made by ``convert`` (NumPy, Dask, array-api-strict)."""

    def make() -> Runner:
        import evsoftmax as evs

        def one(req: pc.Request) -> Result:
            x = pc.apply_view(convert(req.inp.base(req.dtype)), req.inp.view)
            w = req.inp.where
            kw: dict[str, Any] = {"axis": req.inp.axis, "where": None if w is None else convert(w)}
            if req.function != "ev_softmax_support":
                kw["epsilon"] = req.epsilon
            out = getattr(evs, req.function)(x, **kw)
            if hasattr(out, "dask"):
                import dask

                # Tiny graphs: the synchronous scheduler computes the same values faster.
                with dask.config.set(scheduler="synchronous"):
                    return to_numpy(out), _dtype_name(out)
            return _numpy_result(out)

        return _each(one)

    return make


def _as_numpy(a: np.ndarray) -> Any:
    return np.array(a)


def _as_dask(a: np.ndarray) -> Any:
    import dask.array as da

    # Two chunks along the first and the last axis: every group's normalized axis is split.
    chunks = [max(1, (n + 1) // 2) if i in (0, a.ndim - 1) else -1 for i, n in enumerate(a.shape)]
    return da.from_array(np.array(a), chunks=tuple(chunks))


def _as_dask_rows(a: np.ndarray) -> Any:
    import dask.array as da

    # One chunk: every row whole, as Dask makes a small array (the blocks' own function runs).
    return da.from_array(np.array(a), chunks=-1)


def _as_strict(a: np.ndarray) -> Any:
    import array_api_strict

    return array_api_strict.asarray(np.array(a))


# --- JAX --------------------------------------------------------------------------


def _jax() -> Any:
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _jax_inputs(req: pc.Request) -> tuple[Any, Any, Any]:
    _jax()  # float64 inputs stay float64 (tests/conftest.py resets the flag after each test)
    import jax.numpy as jnp

    x = pc.apply_view(jnp.asarray(req.inp.base(req.dtype)), req.inp.view)
    where = None if req.inp.where is None else jnp.asarray(req.inp.where)
    c = jnp.asarray(pc.as_dtype(pc.cotangent(tuple(x.shape)), req.dtype))
    return x, where, c


def _jax_bundle(bundle: list[pc.Request]) -> Callable[..., tuple]:
    """``(x, where, c) -> results`` (not jitted): the public functions, grad, jvp."""
    import evsoftmax as evs

    jax = _jax()
    import jax.numpy as jnp

    axis = bundle[0].inp.axis

    def forward(function: str, eps: float) -> Callable[..., Any]:
        if function == "ev_softmax_support":
            return lambda x, w: evs.ev_softmax_support(x, axis=axis, where=w)
        f = getattr(evs, function)
        return lambda x, w: f(x, axis=axis, epsilon=eps, where=w)

    calls = [(r.function, forward(_base_function(r.function), r.epsilon)) for r in bundle]

    def run(x: Any, w: Any, c: Any) -> tuple:
        out = []
        for function, f in calls:
            if function.startswith("grad_"):
                out.append(jax.grad(lambda v, f=f: jnp.sum(f(v, w) * c))(x))
            elif function.startswith("jvp_"):
                out.append(jax.jvp(lambda v, f=f: f(v, w), (x,), (c,))[1])
            else:
                out.append(f(x, w))
        return tuple(out)

    return run


def _jax_jit() -> Runner:
    """jax.jit of the public functions (and of their grad/jvp), one program per bundle."""
    jax = _jax()

    def run(bundle: list[pc.Request]) -> list[Result]:
        x, where, c = _jax_inputs(bundle[0])
        return [_numpy_result(o) for o in jax.jit(_jax_bundle(bundle))(x, where, c)]

    return run


def _jax_export() -> Runner:
    """jax.export of the jitted bundle, serialized, deserialized and called."""
    jax = _jax()
    from jax import export

    def run(bundle: list[pc.Request]) -> list[Result]:
        x, where, c = _jax_inputs(bundle[0])
        f = _jax_bundle(bundle)
        if where is None:
            exported = export.export(jax.jit(lambda v, t: f(v, None, t)))(x, c)
            args: tuple[Any, ...] = (x, c)
        else:
            exported = export.export(jax.jit(f))(x, where, c)
            args = (x, where, c)
        restored = export.deserialize(exported.serialize())
        return [_numpy_result(o) for o in restored.call(*args)]

    return run


def _jax_shard_map() -> Runner:
    """shard_map over 2 host devices along a batch axis (the input doubled along it)."""
    jax = _jax()
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:  # JAX before 0.6
        from jax.experimental.shard_map import shard_map
    if jax.device_count() < 2:
        raise RuntimeError(f"shard_map needs 2 host devices, found {jax.devices()}")
    mesh = jax.make_mesh((2,), ("d",))

    def put(a: Any, spec: Any) -> Any:
        return jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))

    def run(bundle: list[pc.Request]) -> list[Result]:
        x, where, c = _jax_inputs(bundle[0])
        b, _ = _batch_axis(x.ndim, bundle[0].inp.axis)
        n = x.shape[b]
        # Rows are independent: two copies along b split evenly over the 2 devices.
        x2, c2 = jnp.concatenate([x, x], axis=b), jnp.concatenate([c, c], axis=b)
        spec = P(*([None] * b), "d")
        f = _jax_bundle(bundle)
        specs = tuple(spec for _ in bundle)
        if where is None:
            mapped = shard_map(
                lambda v, t: f(v, None, t), mesh=mesh, in_specs=(spec, spec), out_specs=specs
            )
            got = jax.jit(mapped)(put(x2, spec), put(c2, spec))
        else:
            w = jnp.broadcast_to(where, x.shape)
            w2 = jnp.concatenate([w, w], axis=b)
            mapped = shard_map(f, mesh=mesh, in_specs=(spec, spec, spec), out_specs=specs)
            got = jax.jit(mapped)(put(x2, spec), put(w2, spec), put(c2, spec))
        # The first copy, sliced on the host (a sharded odd-sized slice is not allowed).
        return [(np.take(to_numpy(o), np.arange(n), axis=b), _dtype_name(o)) for o in got]

    return run


# --- subprocess paths -------------------------------------------------------------


def _run_in_subprocess(path: Path) -> dict[str, Result | str]:
    """Run ``path``'s whole battery in one child process; return its results by request key.

    Under pytest-xdist the workers of one run share the child's results (a file
    per path, made under a lock by the first worker that needs it): however the
    scheduler spreads the cells, the battery runs once per test run.
    """
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None or fcntl is None:
        with tempfile.TemporaryDirectory() as tmp:
            return _child_results(path, os.path.join(tmp, "results.npz"))
    shared = os.path.join(tempfile.gettempdir(), f"evsoftmax-paths-{run_id}")
    os.makedirs(shared, exist_ok=True)
    out = os.path.join(shared, f"{path.name}.npz")
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(out):
            return _load_results(out)
        return _child_results(path, out)


def _child_results(path: Path, out: str) -> dict[str, Result | str]:
    """Run the child that writes ``path``'s battery to ``out``; its results."""
    env = {**os.environ, **(path.subprocess_env or {}), "EVSOFTMAX_PATHS_CHILD": path.name}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "tests.paths", "--dump", path.name, out]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        # Remembered (not raised): every cell of the path reports it, none reruns the child.
        tail = (done.stdout[-1000:] + "\n" + done.stderr[-1500:]).strip()
        return {"__error__": f"the battery's subprocess failed: {tail}"}
    return _load_results(out)


def _load_results(out: str) -> dict[str, Result | str]:
    """The results a child saved in ``out``, by request key."""
    with np.load(out, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    results: dict[str, Result | str] = {}
    for key, entry in meta.items():
        if "error" in entry:
            results[key] = f"(in the subprocess) {entry['error']}"
        else:
            results[key] = (arrays[entry["array"]], entry["dtype"])
    return results


def _dump(name: str, file: str) -> None:
    """The child's side: run every cell of ``name``'s battery, save results or errors."""
    path = by_name(name)
    meta: dict[str, dict[str, str]] = {}
    arrays: dict[str, np.ndarray] = {}
    for group in pc.GROUPS:
        for dtype in path.dtypes:
            if path.skip(group, dtype) is not None:
                continue
            reqs = path.requests(group, dtype)
            for req, got in zip(reqs, path.results(reqs), strict=True):
                if isinstance(got, str):
                    meta[req.key] = {"error": got}
                    continue
                key = f"a{len(arrays)}"
                arrays[key] = np.asarray(got[0])
                meta[req.key] = {"array": key, "dtype": got[1]}
    np.savez(file, __meta__=np.array(json.dumps(meta)), **arrays)


def _describe(exc: BaseException) -> str:
    """One line: the exception's type, its first line and (for tracebacks) its last."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) > 2:
        lines = [lines[0], "...", lines[-1]]
    text = f"{type(exc).__name__}: {' '.join(lines)}"
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


_EMPTY_TRACE = (
    "torch.jit.trace records sizes as values, so a trace of an empty example is refused "
    "with a ValueError naming the remedy (tests/test_torch_export.py tests it)"
)


def _jit_trace_skip(group: str, dtype: str) -> str | None:
    return _EMPTY_TRACE if group == "empty" else None


def _onnx_dynamo_skip(group: str, dtype: str) -> str | None:
    if dtype == "float64" and group != "empty":
        # Seen in torch 2.13 / onnxscript 0.7: log(3/4) is stored as -0.28768208622932434.
        return (
            "torch.onnx.export(dynamo=True) stores the graph's Python float constants "
            "(log(eps/(1+eps))) rounded to float32: float64 graphs are float32-accurate"
        )
    return _onnx_skip(group, dtype)


def _onnx_legacy_skip(group: str, dtype: str) -> str | None:
    return _onnx_skip(group, dtype) or _jit_trace_skip(group, dtype)


_SHARD_ENV = {"XLA_FLAGS": host_devices_xla_flags(2)}

_ALL = pc.FORWARD + pc.GRADS + pc.JVPS
# Traced, compiled and exported paths pay a compile per call site (0.2-1 s
# each: XLA compiles of the JAX XLA form, Dynamo/AOTAutograd traces), so each
# cell runs as ONE program, and these paths sweep ε over 0 (no ε branch), 3
# (weights 1 and 3/4) and 1e300 (the overflow edge), derivatives over 0 and 3.
# ε = 1e-6 differs from 3 only by a constant in the same program; the eager
# paths run the full EPSILONS.
_TRACED: dict[str, Any] = {
    "bundled": True,
    "epsilons": (0.0, 3.0, 1e300),
    "derivative_epsilons": (0.0, 3.0),
}

PATHS: tuple[Path, ...] = (
    # NumPy session
    Path("numpy-kernel", "numpy", _numpy_like(_as_numpy), skip=_numpy_skip, kernel=True),
    Path("numpy-no-kernel", "numpy", _numpy_like(_as_numpy), skip=_numpy_skip, kernel=False),
    Path("cupy-replay", "numpy", _cupy_replay, skip=_numpy_skip),
    # array-api-strict and Dask sessions
    Path(
        "array-api-strict",
        "array_api_strict",
        _numpy_like(_as_strict),
        skip=_half_skip(("float16", "bfloat16"), "array-api-strict has no half-precision dtypes"),
    ),
    Path("dask", "dask", _numpy_like(_as_dask), skip=_numpy_skip),
    Path("dask-rows", "dask", _numpy_like(_as_dask_rows), skip=_numpy_skip),
    # torch session
    Path("torch-kernel", "torch", _torch_eager, pc.FORWARD + pc.GRADS, kernel=True),
    Path("torch-no-kernel", "torch", _torch_eager, pc.FORWARD + pc.GRADS, kernel=False),
    Path("torch-func", "torch", _torch_func, _ALL, **_TRACED),
    Path("torch-compile", "torch", _torch_compile(False), **_TRACED),
    Path("torch-compile-where", "torch", _torch_compile(True), **_TRACED),
    Path(
        "torch-compile-func", "torch", _torch_compile(False, True), pc.FORWARD + pc.GRADS, **_TRACED
    ),
    Path("torch-export", "torch", _torch_export, **_TRACED),
    Path(
        "torch-onnx-legacy",
        "torch",
        _torch_onnx(False),
        needs=("onnx", "onnxruntime"),
        skip=_onnx_legacy_skip,
        **_TRACED,
    ),
    Path(
        "torch-onnx-dynamo",
        "torch",
        _torch_onnx(True),
        needs=("onnx", "onnxruntime", "onnxscript"),
        skip=_onnx_dynamo_skip,
        per_call=False,
        **_TRACED,
    ),
    Path("torch-jit-trace", "torch", _torch_jit_trace, skip=_jit_trace_skip, **_TRACED),
    Path(
        "torch-triton",
        "torch",
        _triton,
        ("ev_softmax", "log_ev_softmax", *pc.GRADS),
        needs=("triton",),
        subprocess_env={"TRITON_INTERPRET": "1"},
        # The interpreter runs each kernel program in NumPy: the traced paths' ε sweep.
        epsilons=_TRACED["epsilons"],
        derivative_epsilons=_TRACED["derivative_epsilons"],
    ),
    # JAX session
    Path("jax-jit-kernel", "jax", _jax_jit, _ALL, kernel=True, **_TRACED),
    Path("jax-jit-xla", "jax", _jax_jit, _ALL, kernel=False, **_TRACED),
    Path("jax-export", "jax", _jax_export, **_TRACED),
    Path("jax-shard-map", "jax", _jax_shard_map, _ALL, subprocess_env=_SHARD_ENV, **_TRACED),
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
            where_bad = np.argwhere(bad)[:4].tolist()
            return f"support differs at {where_bad}: got {got.astype(int).tolist()}"
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
    reqs = path.requests(group, dtype)
    for req, got in zip(reqs, path.results(reqs), strict=True):
        problem = got if isinstance(got, str) else _compare(req, *got)
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
    print(*lines, sep="\n", flush=True)
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
        print(lines[-1], flush=True)
    lines.append("")
    lines.append("cell = dtypes passing / dtypes run (float16, bfloat16, float32, float64)")
    return "\n".join([*lines, "", *details])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--dump"]:
        _dump(argv[1], argv[2])
        return 0
    if argv[:1] == ["--summary"]:
        names = argv[1:]
        paths = [by_name(n) for n in names] if names else selected_paths()
        print("\n" + summary(paths))
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
