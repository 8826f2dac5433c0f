"""Peak memory of the fast paths, as a multiple of the output's size, in a fresh process.

Each measurement runs in a new Python process: NumPy's allocations through
``tracemalloc`` (NumPy reports its data buffers to it), torch's through the peak
resident set (``VmHWM``), reset to the current footprint just before the call
by writing 5 to ``/proc/self/clear_refs`` (Linux). Not ``ru_maxrss``: a child
process inherits its parent's peak through ``fork`` and ``exec``, so under a
large parent (pytest, the benchmark with its frameworks loaded) it never grows
and every path would read 0. The inputs are built in place before the call, so that no
freed temporary raises the peak. The target (DESIGN section 6) is at most one
extra output-sized buffer: a peak of 2.0 outputs (the output itself and one more).
Shared by ``tests/test_memory.py`` and the benchmark's ``memory`` group.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MEMORY_TARGET",
    "NUMPY_MEMORY_CASES",
    "MemoryCase",
    "memory_cases",
    "numpy_peak_ratios",
    "peak_rss_growth",
    "run_fresh",
    "run_memory",
    "torch_peak_ratio",
]

MEMORY_TARGET = 2.0

_NUMPY = """
import json, sys, tracemalloc
import numpy as np
import PACKAGE as evsoftmax

names, shape = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2]))
x = np.empty(shape, dtype=np.float64)
x[...] = np.random.default_rng(0).standard_normal(x.shape)
mask = np.random.default_rng(1).random(x.shape) > 0.3
x32 = x.astype(np.float32) if "float32 transposed" in names else None
x16 = x.astype(np.float16) if "float16" in names else None
evsoftmax.ev_softmax(x[:4], axis=0)  # warm up
cases = {
    "axis=0": lambda: evsoftmax.ev_softmax(x, axis=0),
    "axis=0, where": lambda: evsoftmax.ev_softmax(x, axis=0, where=mask),
    "log, where broadcast": lambda: evsoftmax.log_ev_softmax(x, where=mask[:1]),
    "float32 transposed": lambda: evsoftmax.ev_softmax(x32.T, axis=1),
    "float16": lambda: evsoftmax.ev_softmax(x16, axis=-1),
}
ratios = {}
tracemalloc.start()
for name in names:
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    out = cases[name]()
    ratios[name] = (tracemalloc.get_traced_memory()[1] - before) / out.nbytes
    del out
print(json.dumps(ratios))
"""
# The NumPy measurements the script knows.
NUMPY_MEMORY_CASES = ("axis=0", "axis=0, where", "log, where broadcast", "float32 transposed",
                      "float16")  # fmt: skip

_TORCH = """
import json, sys
import torch
import PACKAGE.torch as evt
from PACKAGE._bench._memory import peak_rss_growth

dtype, dim, masked = getattr(torch, sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
shape = tuple(json.loads(sys.argv[4]))
x = torch.empty(shape, dtype=dtype)
x.normal_()
mask = None
if masked:
    mask = torch.empty(shape, dtype=torch.bool)
    mask.view(torch.uint8).random_(0, 2)
evt.ev_softmax(x[:8, :8], dim=dim, where=None if mask is None else mask[:8, :8])  # warm up
outs = []
peak = peak_rss_growth(lambda: outs.append(evt.ev_softmax(x, dim=dim, where=mask)))
print(json.dumps(peak / (outs[0].numel() * outs[0].element_size())))
"""
_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from {_STATUS}")


def peak_rss_growth(call: Callable[[], object]) -> int:
    """Bytes by which ``call()`` raises the peak resident set above the current one (Linux).

    Freed heap memory is first handed back (``malloc_trim``) and the peak reset
    to the current resident set (``/proc/self/clear_refs``), so only what the
    call itself touches counts.
    """
    ctypes.CDLL(None).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    call()
    return (_status_kib("VmHWM") - before) * 1024


def run_fresh(args: Sequence[str], timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a new interpreter that imports this evsoftmax (not an installed one)."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": path},
        timeout=timeout,
        check=False,
    )


def _run(source: str, *args: str) -> Any:
    """Run ``source`` in a fresh single-threaded interpreter; its last output line as JSON."""
    # The child imports this copy of the package by its own name (a vendored copy too).
    package = __name__.rpartition("._bench.")[0]
    script = textwrap.dedent(source).replace("PACKAGE", package)
    done = run_fresh(["-c", script, *args], 300, OMP_NUM_THREADS="1")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the measuring process failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def numpy_peak_ratios(names: Sequence[str], shape: Sequence[int]) -> dict[str, float]:
    """Peak traced allocation of each NumPy case of ``names`` ÷ its output's bytes.

    The input is a float64 standard-normal array of ``shape`` (float32 and float16
    copies for the cases that use them), the mask keeps about 70 % of the entries.

    Examples
    --------
    >>> numpy_peak_ratios(["axis=0"], (64, 128))["axis=0"] <= 2.0  # doctest: +SKIP
    True
    """
    unknown = [n for n in names if n not in NUMPY_MEMORY_CASES]
    if unknown:
        raise ValueError(f"unknown NumPy memory cases {unknown}; known: {NUMPY_MEMORY_CASES}")
    ratios = _run(_NUMPY, json.dumps(list(names)), json.dumps(list(shape)))
    return {str(k): float(v) for k, v in ratios.items()}


def torch_peak_ratio(dtype: str, dim: int, masked: bool, shape: Sequence[int]) -> float:
    """Peak resident growth of ``evsoftmax.torch.ev_softmax`` ÷ its output's bytes.

    ``dtype`` names a torch dtype (``"bfloat16"``); ``masked`` adds a random
    boolean ``where`` of the input's shape.
    """
    return float(_run(_TORCH, dtype, str(dim), "1" if masked else "0", json.dumps(list(shape))))


@dataclass(frozen=True)
class MemoryCase:
    """One fast path whose peak the benchmark reports."""

    backend: str
    label: str
    measure: Callable[[], float]


def memory_cases(backends: Sequence[str], quick: bool) -> list[MemoryCase]:
    """The memory cases of issue 13 for the chosen backends (small shapes with ``quick``)."""
    numpy_shape = (512, 1024) if quick else (2048, 2048)
    torch_shape = (1024, 2048) if quick else (2048, 4096)
    cases = []
    if "numpy" in backends:
        for name in ("axis=0", "axis=0, where", "float16"):
            label = f"float64 {name}" if name != "float16" else "float16, last axis"
            measure = _numpy_measure(name, numpy_shape)
            cases.append(
                MemoryCase("numpy", f"{label} ({numpy_shape[0]}x{numpy_shape[1]})", measure)
            )
    if "torch" in backends:
        for dtype, dim, masked in (
            ("float32", 0, False),
            ("float32", 1, True),
            ("float16", 1, False),
            ("bfloat16", 0, True),
        ):
            where = ", where" if masked else ""
            label = f"{dtype} dim {dim}{where} ({torch_shape[0]}x{torch_shape[1]})"

            def measure(d: str = dtype, k: int = dim, m: bool = masked) -> float:
                return torch_peak_ratio(d, k, m, torch_shape)

            cases.append(MemoryCase("torch", label, measure))
    return cases


def _numpy_measure(name: str, shape: Sequence[int]) -> Callable[[], float]:
    def measure() -> float:
        return numpy_peak_ratios([name], shape)[name]

    return measure


def run_memory(
    cases: Sequence[MemoryCase],
    verdict: Callable[[float | None, float], str],
    on_step: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every case (errors are recorded, not raised) and judge it against the target."""
    out = []
    for case in cases:
        ratio: float | None
        try:
            ratio, error = case.measure(), None
        except Exception as exc:  # a failed measurement must not hide the others
            ratio, error = None, f"{type(exc).__name__}: {exc}"
        out.append(
            {
                "backend": case.backend,
                "case": case.label,
                "ratio": ratio,
                "target": MEMORY_TARGET,
                "verdict": verdict(ratio, MEMORY_TARGET),
                "error": error,
            }
        )
        if on_step is not None:
            on_step()
    return out
