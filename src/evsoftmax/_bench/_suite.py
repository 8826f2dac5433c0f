"""Run the benchmark: for each backend and case, time every method interleaved.

The result is a plain ``dict`` (the JSON document, see :mod:`._document`):
medians per (backend, case, method, mode), their ratio to the peer in the same
mode (the native softmax of the same layout, or the ``entmax`` package's map
for the baselines), the effective bandwidth against a same-size copy, and for
the cells DESIGN section 6 sets a target for, the target and the verdict. The
``memory`` group adds peak-memory ratios measured in fresh processes.
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
from ._cases import (
    BASELINE_SHAPES,
    GROUPS,
    QUICK_BASELINE_SHAPES,
    Case,
    short_rows,
    variant_cases,
)
from ._memory import memory_cases, run_memory
from ._methods import BASELINE, COPY, EV, Method, baseline_methods, methods, variant_methods
from ._shapes import Shape, sweep_shapes, unique_shapes
from ._targets import BASELINE_TARGET, QUICK_NOTICE, TARGETS, verdict
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
    cases: tuple[str, ...] = GROUPS

    @property
    def sweep(self) -> tuple[Shape, ...]:
        """The K-sweep's shapes (empty when ``sweep_total`` is 0)."""
        return sweep_shapes(self.sweep_total, self.sweep_ks) if self.sweep_total else ()

    @property
    def judged_shapes(self) -> tuple[Shape, ...]:
        """The plain shapes with a target: ``shapes`` and, in group ``short``, the short rows."""
        short = short_rows(self.quick) if "short" in self.cases else ()
        return unique_shapes(self.shapes, short)

    @property
    def all_shapes(self) -> tuple[Shape, ...]:
        """Every plain (float32, last-axis, unmasked) shape timed, each once."""
        return unique_shapes(self.judged_shapes, self.sweep)

    @property
    def variants(self) -> tuple[Case, ...]:
        """The variant cases of the chosen groups (masks, axes, dtypes, log)."""
        return variant_cases(self.cases, self.quick)

    @property
    def baseline_shapes(self) -> tuple[Shape, ...]:
        """The shapes of the baselines against the ``entmax`` package (none unless chosen)."""
        if "baselines" not in self.cases:
            return ()
        return QUICK_BASELINE_SHAPES if self.quick else BASELINE_SHAPES


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
        "cases": list(config.cases),
        "judged_shapes": [list(s) for s in config.judged_shapes],
        "variants": [_case_dict(c) for c in config.variants],
        "baseline_shapes": [list(s) for s in config.baseline_shapes],
        "targets": {**TARGETS, "baselines": BASELINE_TARGET},
        "traffic_arrays": _TRAFFIC,
    }


def _case_dict(case: Case) -> dict[str, Any]:
    return {
        "label": case.label,
        "group": case.group,
        "shape": list(case.shape),
        "axis": case.axis,
        "dtype": case.dtype,
        "where": case.where,
        "log": case.log,
        "backends": None if case.backends is None else sorted(case.backends),
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


def causal_mask(shape: Shape) -> np.ndarray:
    """A causal-like ``where`` of a 2-D ``shape``: row ``i`` keeps its first ``i % K + 1`` entries.

    Every row keeps at least one entry, and rows of every length occur, as in
    causal attention scores.

    Examples
    --------
    >>> causal_mask((3, 2)).astype(int).tolist()
    [[1, 0], [1, 1], [1, 0]]
    """
    rows, k = shape
    return np.arange(k)[None, :] <= (np.arange(rows) % k)[:, None]


def _case_arrays(
    backend: Backend, case: Case, config: BenchConfig
) -> tuple[Any, Any, tuple[Any, ...]]:
    """``x``, the cotangent and the extra operands (the mask) of a variant, on ``backend``."""
    x_np, g_np = _inputs(case.shape, config)
    x, g = backend.asarray(x_np), backend.asarray(g_np)
    if case.dtype != "float32":
        x, g = backend.cast(x, case.dtype), backend.cast(g, case.dtype)
    operands = (backend.asarray(causal_mask(case.shape)),) if case.where else ()
    return x, g, operands


Compiled = dict[tuple[str, str], Callable[..., Any]]


def _compile(backend: Backend, found: list[Method]) -> Compiled:
    """Each method as the backend runs it: ``f(x, *ops)`` forward, ``f(x, g, *ops)`` with backward.

    The plain methods are built once per backend, so that JIT caches are shared
    by every shape and the checks.
    """
    compiled: Compiled = {}
    for method in found:
        compiled[method.key, FORWARD] = backend.forward(method.fn)
        vjp = backend.vjp(method.fn) if method.differentiable else None
        if vjp is not None:
            compiled[method.key, FORWARD_BACKWARD] = vjp
    return compiled


def _callables(
    backend: Backend, compiled: Compiled, x: Any, g: Any, operands: tuple[Any, ...] = ()
) -> dict[tuple[str, str], Callable[[], object]]:
    """One synchronised zero-argument call per (method, mode)."""
    xg = backend.grad_input(x)
    calls: dict[tuple[str, str], Callable[[], object]] = {}
    for (key, mode), f in compiled.items():
        args = (x, *operands) if mode == FORWARD else (xg, g, *operands)
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


@dataclass(frozen=True)
class _Judging:
    """Which methods of a case carry a target, and whether the run may judge them."""

    targets: dict[str, float] = field(default_factory=dict)
    quick: bool = False


def _records(
    backend: Backend,
    case: Case,
    itemsize: int,
    measured: dict[tuple[str, str], Measurement],
    peers: dict[str, str] | None = None,
    judging: _Judging | None = None,
) -> list[dict[str, Any]]:
    """One result row per (method, mode), with ratios, bandwidths and verdicts filled in.

    ``peers`` maps a method to the method its ratio divides by (the native
    softmax by default); ``judging`` names the methods with a target.
    """
    peers = peers or {}
    judging = judging or _Judging()
    size = int(np.prod(case.shape)) * itemsize
    copy = measured.get((COPY, FORWARD))
    copy_bandwidth = 2 * size / copy.median if copy is not None else float("nan")
    rows = []
    for (key, mode), m in measured.items():
        peer_key = peers.get(key, BASELINE)
        peer = measured.get((peer_key, mode))
        ratio = m.median / peer.median if peer else float("nan")
        nbytes = (2 if key == COPY else _TRAFFIC[mode]) * size
        bandwidth = nbytes / m.median
        target = judging.targets.get(key)
        rows.append(
            {
                "backend": backend.name,
                "case": case.label,
                "group": case.group,
                "shape": list(case.shape),
                "k": case.shape[-1],
                "method": key,
                "mode": mode,
                "median_s": m.median,
                "min_s": min(m.samples, default=float("nan")),
                "samples_s": m.samples,
                "calls_per_sample": m.number,
                "peer": peer_key,
                "peer_median_s": peer.median if peer else float("nan"),
                "ratio": ratio,
                "target": target,
                "verdict": None if target is None else verdict(ratio, target, judging.quick),
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


def _cases_on(backend: Backend, config: BenchConfig) -> tuple[list[Case], list[Case]]:
    """The variant and baseline cases ``backend`` times."""
    variants = [c for c in config.variants if c.runs_on(backend.name)]
    baselines = [Case(s, "baselines") for s in config.baseline_shapes]
    return variants, baselines if backend.has_baseline_peers() else []


def _steps(backend: Backend, config: BenchConfig) -> int:
    variants, baselines = _cases_on(backend, config)
    return (len(config.all_shapes) + len(variants) + len(baselines)) * (config.plan.repeats + 1)


def _time_case(
    backend: Backend,
    config: BenchConfig,
    progress: Progress,
    case: Case,
    found: list[Method],
) -> list[dict[str, Any]]:
    """Time the methods ``found`` on one variant or baseline case.

    Every method that is not its own peer (evsoftmax's, not the peers) carries the target.
    """
    with backend.dtype_scope(case.dtype):
        compiled = _compile(backend, found)
        x, g, operands = _case_arrays(backend, case, config)
        calls = _callables(backend, compiled, x, g, operands)
        step = functools.partial(progress.step, f"{backend.name} {case.label}")
        measured = interleaved(calls, config.plan, step)
    target = BASELINE_TARGET if case.group == "baselines" else TARGETS[backend.name]
    judging = _Judging({m.key: target for m in found if m.key != m.peer}, config.quick)
    itemsize = np.dtype("float16" if case.dtype == "bfloat16" else case.dtype).itemsize
    peers = {m.key: m.peer for m in found}
    return _records(backend, case, itemsize, measured, peers, judging)


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
        for _ in range(_steps(backend, config)):
            progress.step(f"{backend.name} failed")
        return
    doc["backends"][backend.name] = _backend_info(backend, found)
    judged = set(config.judged_shapes)
    plain_target = TARGETS.get(backend.name)
    for shape in config.all_shapes:
        case = Case(shape)
        x_np, g_np = _inputs(shape, config)
        doc["checks"] += _checks(backend, compiled, x_np, shape)
        calls = _callables(backend, compiled, backend.asarray(x_np), backend.asarray(g_np))
        step = functools.partial(progress.step, f"{backend.name} {case.label}")
        measured = interleaved(calls, config.plan, step)
        targets = {EV: plain_target} if plain_target is not None and shape in judged else {}
        judging = _Judging(targets, config.quick)
        doc["results"] += _records(backend, case, x_np.itemsize, measured, judging=judging)
    variants, baselines = _cases_on(backend, config)
    shared = baseline_methods(backend) if baselines else []
    for case in (*variants, *baselines):
        found = (
            shared if case.group == "baselines" else variant_methods(backend, case, config.epsilon)
        )
        doc["results"] += _time_case(backend, config, progress, case, found)


def run_suite(
    config: BenchConfig,
    progress: Progress | None = None,
    header: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every available backend of ``config`` and return the result document.

    Backends that cannot run here are listed with the reason under ``backends``;
    then the ``memory`` group measures peak memory in fresh processes. Large
    freed buffers are kept in the process first (:mod:`._allocator`).
    ``header`` entries (machine, versions, command) are copied into the document.
    """
    progress = _Silent() if progress is None else progress
    allocator = keep_freed_memory()
    start = time.perf_counter()
    doc: dict[str, Any] = {
        **(header or {}),
        "allocator": allocator or "default",
        "config": config_dict(config),
        "notice": QUICK_NOTICE if config.quick else None,
        "backends": {},
        "results": [],
        "checks": [],
        "memory": [],
    }
    ready: list[Backend] = []
    for name in config.backends:
        backend = BACKENDS[name](config.device)
        reason = backend.unavailable()
        if reason is None:
            ready.append(backend)
        else:
            doc["backends"][name] = {"status": "skipped", "reason": reason}
    memory = memory_cases([b.name for b in ready], config.quick) if "memory" in config.cases else []
    progress.begin(sum(_steps(b, config) for b in ready) + len(memory))
    for backend in ready:
        _run_backend(backend, config, progress, doc)
    judge = functools.partial(verdict, quick=config.quick)
    doc["memory"] = run_memory(memory, judge, functools.partial(progress.step, "memory"))
    doc["elapsed_s"] = time.perf_counter() - start
    return doc
