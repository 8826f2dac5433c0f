"""Run the benchmark: for each backend and shape, time every method interleaved.

The result is a plain ``dict`` (the JSON document, see :mod:`._document`):
medians per (backend, shape, method, mode), their ratio to the native softmax
in the same mode, and the effective bandwidth against a same-size copy.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ._allocator import keep_freed_memory
from ._backends import BACKENDS, Backend
from ._methods import BASELINE, COPY, Method, methods
from ._shapes import Shape, format_shape, sweep_shapes, unique_shapes
from ._timing import Measurement, TimingPlan, interleaved

__all__ = [
    "FORWARD",
    "FORWARD_BACKWARD",
    "BenchConfig",
    "Progress",
    "config_dict",
    "run_suite",
]

FORWARD = "forward"
FORWARD_BACKWARD = "forward+backward"
# Minimal memory traffic, in arrays of x's size: forward reads x and writes p;
# backward reads p and the cotangent and writes the gradient.
_TRAFFIC = {FORWARD: 2, FORWARD_BACKWARD: 5}


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides what a run times."""

    backends: tuple[str, ...]
    shapes: tuple[Shape, ...]
    sweep_total: int
    sweep_ks: tuple[int, ...]
    plan: TimingPlan = field(default_factory=TimingPlan)
    device: str = "auto"
    epsilon: float = 1e-6
    dtype: str = "float32"
    seed: int = 0
    quick: bool = False

    @property
    def sweep(self) -> tuple[Shape, ...]:
        """The K-sweep's shapes (empty when ``sweep_total`` is 0)."""
        return sweep_shapes(self.sweep_total, self.sweep_ks) if self.sweep_total else ()

    @property
    def all_shapes(self) -> tuple[Shape, ...]:
        """Every shape timed, each once."""
        return unique_shapes(self.shapes, self.sweep)


def config_dict(config: BenchConfig) -> dict[str, Any]:
    """``config`` as JSON-ready data, with the K-sweep's shapes spelled out."""
    return {
        "backends": list(config.backends),
        "shapes": [list(s) for s in config.shapes],
        "sweep_total": config.sweep_total,
        "sweep_ks": list(config.sweep_ks),
        "sweep_shapes": [list(s) for s in config.sweep],
        "plan": dataclasses.asdict(config.plan),
        "device": config.device,
        "epsilon": config.epsilon,
        "dtype": config.dtype,
        "seed": config.seed,
        "quick": config.quick,
        "traffic_arrays": _TRAFFIC,
    }


class Progress(Protocol):
    """Where the suite reports its steps (a progress bar, or nothing)."""

    def begin(self, total: int) -> None: ...

    def step(self, description: str) -> None: ...


class _Silent:
    def begin(self, total: int) -> None:
        pass

    def step(self, description: str) -> None:
        pass


def _inputs(shape: Shape, config: BenchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal logits and cotangent of ``shape``, the same on every backend."""
    rng = np.random.default_rng(config.seed)
    x = rng.standard_normal(shape, dtype=np.float32).astype(config.dtype)
    g = rng.standard_normal(shape, dtype=np.float32).astype(config.dtype)
    return x, g


Compiled = dict[tuple[str, str], Callable[..., Any]]


def _compile(backend: Backend, found: list[Method]) -> Compiled:
    """Each method as the backend runs it: ``f(x)`` forward, ``f(x, g)`` forward+backward.

    Built once per backend, so that JIT caches are shared by every shape and the checks.
    """
    compiled: Compiled = {}
    for method in found:
        compiled[method.key, FORWARD] = backend.forward(method.fn)
        vjp = backend.vjp(method.fn) if method.differentiable else None
        if vjp is not None:
            compiled[method.key, FORWARD_BACKWARD] = vjp
    return compiled


def _callables(
    backend: Backend, compiled: Compiled, x_np: np.ndarray, g_np: np.ndarray
) -> dict[tuple[str, str], Callable[[], object]]:
    """One synchronised zero-argument call per (method, mode)."""
    x = backend.asarray(x_np)
    g = backend.asarray(g_np)
    xg = backend.grad_input(x)
    calls: dict[tuple[str, str], Callable[[], object]] = {}
    for (key, mode), f in compiled.items():
        args = (x,) if mode == FORWARD else (xg, g)
        calls[key, mode] = functools.partial(_synchronised, backend, f, *args)
    return calls


def _synchronised(backend: Backend, f: Callable[..., Any], *args: Any) -> None:
    backend.sync(f(*args))


def _away_from_mean(x: np.ndarray, gap: float = 1e-2) -> np.ndarray:
    """``x`` with every entry at least about ``gap`` from its row mean.

    An entry within rounding of the mean may fall on either side of it in two
    correct float32 computations (the mean of ``x`` and of ``x - max`` round
    differently), and flipping it changes its row by about ``1/K``. Moving such
    entries to ``mean ± gap`` (about 1 % of them for standard-normal rows) shifts
    the mean by far less than ``gap``, so the check compares like with like.
    """
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    near = np.abs(x64 - mean) < gap
    moved = np.where(near, mean + np.where(x64 >= mean, gap, -gap), x64)
    return moved.astype(x.dtype)


def _checks(
    backend: Backend, compiled: Compiled, x_np: np.ndarray, shape: Shape
) -> list[dict[str, Any]]:
    """Largest difference between ev_softmax and the reference composition (a sanity check)."""
    x = backend.asarray(_away_from_mean(x_np))
    out = []
    for key, against in (("ev_softmax", "reference"), ("ev_softmax_eps", "reference_eps")):
        try:
            a = backend.to_numpy(compiled[key, FORWARD](x)).astype(np.float64)
            b = backend.to_numpy(compiled[against, FORWARD](x))
            diff: float | None = float(np.max(np.abs(a - b)))
            error = None
        except Exception as exc:
            diff, error = None, f"{type(exc).__name__}: {exc}".splitlines()[0]
        out.append(
            {
                "backend": backend.name,
                "shape": list(shape),
                "method": key,
                "against": against,
                "max_abs_diff": diff,
                "error": error,
            }
        )
    return out


def _records(
    backend: Backend,
    shape: Shape,
    itemsize: int,
    measured: dict[tuple[str, str], Measurement],
) -> list[dict[str, Any]]:
    """One result row per (method, mode), with ratios and bandwidths filled in."""
    size = int(np.prod(shape)) * itemsize
    copy = measured.get((COPY, FORWARD))
    copy_bandwidth = 2 * size / copy.median if copy is not None else float("nan")
    rows = []
    for (key, mode), m in measured.items():
        baseline = measured.get((BASELINE, mode))
        nbytes = (2 if key == COPY else _TRAFFIC[mode]) * size
        bandwidth = nbytes / m.median
        rows.append(
            {
                "backend": backend.name,
                "shape": list(shape),
                "k": shape[-1],
                "method": key,
                "mode": mode,
                "median_s": m.median,
                "min_s": min(m.samples, default=float("nan")),
                "samples_s": m.samples,
                "calls_per_sample": m.number,
                "ratio": m.median / baseline.median if baseline else float("nan"),
                "bytes": nbytes,
                "bandwidth_gbs": bandwidth / 1e9,
                "copy_fraction": bandwidth / copy_bandwidth,
                "error": m.error,
            }
        )
    return rows


def _backend_info(backend: Backend, found: list[Method]) -> dict[str, Any]:
    return {
        "status": "ok",
        "version": backend.version(),
        "device": backend.device,
        "native_softmax": backend.native_softmax,
        "copy": backend.copy_op,
        "autodiff": backend.autodiff,
        "methods": {m.key: m.description for m in found},
    }


def _run_backend(
    backend: Backend, config: BenchConfig, progress: Progress, doc: dict[str, Any]
) -> None:
    try:
        backend.setup()
        found = backend.select(methods(backend, config.epsilon))
        compiled = _compile(backend, found)
    except Exception as exc:  # a broken install must not hide the other backends
        doc["backends"][backend.name] = {
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc}",
        }
        for _ in range(len(config.all_shapes) * (config.plan.repeats + 1)):
            progress.step(f"{backend.name} failed")
        return
    doc["backends"][backend.name] = _backend_info(backend, found)
    for shape in config.all_shapes:
        label = f"{backend.name} {format_shape(shape)}"
        x_np, g_np = _inputs(shape, config)
        doc["checks"] += _checks(backend, compiled, x_np, shape)
        calls = _callables(backend, compiled, x_np, g_np)
        measured = interleaved(calls, config.plan, functools.partial(progress.step, label))
        doc["results"] += _records(backend, shape, x_np.itemsize, measured)


def run_suite(
    config: BenchConfig,
    progress: Progress | None = None,
    header: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every available backend of ``config`` and return the result document.

    Backends that cannot run here are listed with the reason under ``backends``.
    Large freed buffers are kept in the process first (:mod:`._allocator`).
    ``header`` entries (machine, versions, command) are copied into the document.
    """
    progress = _Silent() if progress is None else progress
    allocator = keep_freed_memory()
    start = time.perf_counter()
    doc: dict[str, Any] = {
        **(header or {}),
        "allocator": allocator or "default",
        "config": config_dict(config),
        "backends": {},
        "results": [],
        "checks": [],
    }
    ready: list[Backend] = []
    for name in config.backends:
        backend = BACKENDS[name](config.device)
        reason = backend.unavailable()
        if reason is None:
            ready.append(backend)
        else:
            doc["backends"][name] = {"status": "skipped", "reason": reason}
    progress.begin(len(ready) * len(config.all_shapes) * (config.plan.repeats + 1))
    for backend in ready:
        _run_backend(backend, config, progress, doc)
    doc["elapsed_s"] = time.perf_counter() - start
    return doc
