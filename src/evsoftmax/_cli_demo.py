"""``evsoftmax demo``: the paper's worked example on every installed backend.

For each backend it prints softmax, ev-softmax and the support of
v = (0.4, 1.4, -0.8) (paper Fig. 1), and the largest difference from NumPy's
result over the example and a masked random batch (ε = 0 and ε = 1e-6). The
exit status is 0 only if every installed backend agrees with NumPy.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

NAME = "demo"
HELP = "Show ev-softmax on the paper's worked example on every installed backend."

WORKED_EXAMPLE = (0.4, 1.4, -0.8)
TOLERANCE = 1e-6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``evsoftmax demo``."""
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"largest allowed float32 difference from NumPy (default {TOLERANCE:g})",
    )


def _numpy(x: Any) -> Any:
    if hasattr(x, "compute"):
        x = x.compute()
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)


def _cupy_with_gpu() -> Any:
    import cupy

    cupy.cuda.runtime.getDeviceCount()  # raises without a usable GPU
    return cupy


# Backend name -> loader returning the module whose ``asarray`` makes its arrays.
_BACKENDS: dict[str, Callable[[], Any]] = {
    "numpy": lambda: np,
    "array_api_strict": lambda: importlib.import_module("array_api_strict"),
    "dask": lambda: importlib.import_module("dask.array"),
    "torch": lambda: importlib.import_module("torch"),
    "jax": lambda: importlib.import_module("jax.numpy"),
    "cupy": _cupy_with_gpu,
}


def _version(name: str) -> str:
    top = importlib.import_module(name.split(".")[0] if name != "dask" else "dask")
    return str(getattr(top, "__version__", "?"))


def _inputs() -> list[tuple[np.ndarray, np.ndarray | None, float]]:
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(64, 100)) * 3).astype(np.float32)
    mask = rng.random(size=batch.shape) > 0.25
    example = np.asarray(WORKED_EXAMPLE, dtype=np.float32)
    return [(example, None, 0.0), (batch, mask, 0.0), (batch, mask, 1e-6)]


def _format(values: np.ndarray) -> str:
    return " ".join(f"{v:.4f}" for v in values)


def run(args: argparse.Namespace) -> int:
    """Print the table and return 0 if every installed backend agrees with NumPy."""
    from . import ev_softmax, ev_softmax_support, softmax

    inputs = _inputs()
    expected = [ev_softmax(x, where=w, epsilon=e) for x, w, e in inputs]
    header = f"{'backend':<26}{'softmax':<22}{'ev-softmax':<22}{'support':<10}max |diff| vs NumPy"
    print("ev-softmax on the worked example v = (0.4, 1.4, -0.8) (Chen et al. 2021, Fig. 1)\n")
    print(header)
    print("-" * len(header))
    agree: list[str] = []
    missing: list[str] = []
    failed: list[str] = []
    for name, load in _BACKENDS.items():
        try:
            module = load()
        except Exception as exc:  # not installed, or (cupy) no GPU
            missing.append(f"{name} ({type(exc).__name__})")
            continue
        label = f"{name} {_version(module.__name__)}"
        try:
            arrays = [
                (module.asarray(x), None if w is None else module.asarray(w), e)
                for x, w, e in inputs
            ]
            example = arrays[0][0]
            soft = _numpy(softmax(example))
            ev = _numpy(ev_softmax(example))
            support = _numpy(ev_softmax_support(example)).astype(int)
            diff = max(
                float(np.max(np.abs(_numpy(ev_softmax(x, where=w, epsilon=e)) - ref)))
                for (x, w, e), ref in zip(arrays, expected, strict=False)
            )
        except Exception as exc:
            failed.append(name)
            print(f"{label:<26}FAILED: {type(exc).__name__}: {exc}")
            continue
        ok = diff <= args.tolerance
        (agree if ok else failed).append(name)
        mark = "" if ok else "  <-- exceeds tolerance"
        print(f"{label:<26}{_format(soft):<22}{_format(ev):<22}{support!s:<10}{diff:.1e}{mark}")
    print()
    summary = f"{len(agree)} of {len(agree) + len(failed)} installed backends agree with NumPy"
    summary += f" to {args.tolerance:g}"
    if missing:
        summary += f"; not available: {', '.join(missing)}"
    print(("OK: " if not failed else "FAILED: ") + summary)
    return 0 if not failed and agree else 1
