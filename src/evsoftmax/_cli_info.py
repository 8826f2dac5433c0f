"""``evsoftmax info``: versions, the backends found, and which fast paths are active.

The fast paths: the ev-softmax CPU kernel and its JAX FFI handlers, the
baselines' kernels (sparsemax, 1.5-entmax, alpha-entmax by bisection) and
theirs, Triton and the CuPy kernels.

Each fast path is reported as active or not, and when it is not, why and what to
do about it (the remedy). ``--json`` prints the same report as one JSON object,
for bug reports. Frameworks are imported only inside :func:`collect`, and only
those that are installed (asking Triton or CuPy whether a GPU is present needs
torch or cupy).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, _ext

__all__ = ["HELP", "NAME", "add_arguments", "collect", "run"]

NAME = "info"
HELP = "Show versions, the backends found and which fast paths are active (and why not)."

# How to install things: the package is not on a package index yet, so extras are
# installed from a clone of the repository.
_FROM_CLONE = 'from a clone of the repository: pip install ".[{extra}]"'
_REBUILD = (
    "install a C compiler (gcc or clang on Linux, the Xcode command line tools on macOS), "
    "then reinstall from the clone: pip install --force-reinstall --no-deps ."
)
_NO_POSIX = "none on this platform: the kernel uses POSIX threads (Linux, macOS)"
_ENV_OFF = "EVSOFTMAX_NO_CPU_KERNELS"

# Backend name -> (module to look for, distribution names that may provide it, extra).
_BACKENDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "numpy": ("numpy", ("numpy",), ""),
    "array_api_strict": ("array_api_strict", ("array-api-strict",), "array-api-strict"),
    "dask": ("dask", ("dask",), "dask"),
    "torch": ("torch", ("torch",), "torch"),
    "jax": ("jax", ("jax",), "jax"),
    "cupy": ("cupy", ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy"), "cupy"),
}

# Integration modules (evsoftmax.integrations.NAME) -> their extra.
_INTEGRATIONS = {"flax": "flax", "equinox": "equinox", "transformers": "transformers"}

# The C kernel's clones (GCC ``target_clones``, x86-64 Linux builds) and the CPU
# flags (as /proc/cpuinfo names them) each needs; GCC's loader picks the first
# clone the CPU supports, the same test as ``__builtin_cpu_supports("arch=...")``.
_CLONES: tuple[tuple[str, str, frozenset[str]], ...] = (
    (
        "x86-64-v4",
        "AVX-512",
        frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ),
    (
        "x86-64-v3",
        "AVX2",
        frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}),
    ),
)
# numpy's names for the same features (used where /proc/cpuinfo is missing).
_NUMPY_FEATURES = {
    "avx512f": "AVX512F",
    "avx512bw": "AVX512BW",
    "avx512cd": "AVX512CD",
    "avx512dq": "AVX512DQ",
    "avx512vl": "AVX512VL",
    "avx": "AVX",
    "avx2": "AVX2",
    "f16c": "F16C",
    "fma": "FMA3",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``evsoftmax info``."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _path(
    available: bool, active: bool, detail: str = "", why_not: str = "", remedy: str = ""
) -> dict[str, Any]:
    return {
        "available": available,
        "active": active,
        "detail": detail,
        "why_not": why_not,
        "remedy": remedy,
    }


def _version(module: str, distributions: tuple[str, ...]) -> str | None:
    """The installed version of ``module`` (from package metadata, without importing it)."""
    if importlib.util.find_spec(module) is None:
        return None
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown version"


def _backends() -> dict[str, dict[str, Any]]:
    found = {}
    for name, (module, distributions, extra) in _BACKENDS.items():
        version = _version(module, distributions)
        remedy = _FROM_CLONE.format(extra=extra) if extra and version is None else ""
        found[name] = {"installed": version is not None, "version": version, "remedy": remedy}
    return found


def _integrations() -> dict[str, dict[str, Any]]:
    found = {}
    for name, extra in _INTEGRATIONS.items():
        version = _version(name, (name,))
        remedy = _FROM_CLONE.format(extra=extra) if version is None else ""
        found[name] = {"installed": version is not None, "version": version, "remedy": remedy}
    return found


def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags in /proc/cpuinfo's names (numpy's detection as a fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    try:
        features = importlib.import_module("numpy._core._multiarray_umath").__cpu_features__
    except (ImportError, AttributeError):
        return None
    return frozenset(ours for ours, theirs in _NUMPY_FEATURES.items() if features.get(theirs))


def _has_clones(kernels: Any) -> bool:
    """Whether the built kernel carries the AVX-512/AVX2 clones (GCC on x86-64 Linux)."""
    try:
        return b"arch_x86_64_v3" in Path(kernels.__file__).read_bytes()
    except (OSError, AttributeError, TypeError):
        return False


def _kernel_isa(kernels: Any) -> str:
    """Which instruction set the kernel runs: the clone the loader picks on this CPU."""
    if not _has_clones(kernels):
        return f"one build for {platform.machine() or 'this CPU'} (no per-ISA clones)"
    flags = _cpu_flags()
    if flags is None:
        return "AVX-512, AVX2 or baseline x86-64 clone (CPU flags unreadable)"
    for arch, name, needed in _CLONES:
        if needed <= flags:
            return f"{name} ({arch} clone)"
    return "baseline x86-64 (default clone; the CPU has neither AVX-512 nor AVX2)"


def _compiled(kernels: Any, module: str) -> dict[str, Any]:
    """A compiled kernel module (``kernels``, None when not built): built, active, its ISA."""
    if kernels is None:
        why = f"the C extension evsoftmax._ext.{module} is not built (no C compiler at install)"
        return _path(
            False, False, why_not=why, remedy=_REBUILD if os.name == "posix" else _NO_POSIX
        )
    isa = _kernel_isa(kernels)
    if os.environ.get(_ENV_OFF):
        why = f"turned off by the environment variable {_ENV_OFF}={os.environ[_ENV_OFF]}"
        return _path(True, False, isa, why, f"unset {_ENV_OFF}")
    return _path(True, True, isa)


def _cpu_kernel() -> dict[str, Any]:
    return _compiled(_ext._KERNELS, "_cpu_kernels")


def _baseline_kernels() -> dict[str, Any]:
    """The kernels of sparsemax, 1.5-entmax and alpha-entmax (NumPy, torch and JAX)."""
    return _compiled(_ext._BASELINES, "_baseline_kernels")


def _jax_ffi(kernel: dict[str, Any], adapter: str = "kernels") -> dict[str, Any]:
    """The XLA FFI handlers of a compiled kernel (``kernel``: its report), registered by
    importing ``evsoftmax.adapters.jax.<adapter>``."""
    if importlib.util.find_spec("jax") is None:
        return _path(
            False, False, why_not="jax is not installed", remedy=_FROM_CLONE.format(extra="jax")
        )
    if not kernel["available"]:
        why = "needs the CPU kernel, which is not built"
        return _path(False, False, why_not=why, remedy=kernel["remedy"])
    if not kernel["active"]:
        return _path(True, False, "XLA custom calls on CPU", kernel["why_not"], kernel["remedy"])
    # Registers the handlers (with the kernels switched on).
    module = importlib.import_module(f"{__package__}.adapters.jax.{adapter}")
    if not module._REGISTERED:
        why = "this jax/XLA refused the FFI handlers (jax.ffi.register_ffi_target failed)"
        return _path(False, False, why_not=why, remedy='pip install --upgrade "jax>=0.4.30"')
    return _path(True, True, "XLA custom calls on CPU (registered)")


def _triton() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return _path(
            False, False, why_not="torch is not installed", remedy=_FROM_CLONE.format(extra="torch")
        )
    import torch

    # The GPU first: without one, installing triton would not help.
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA device visible"
        why = f"torch.cuda.is_available() is False ({build})"
        remedy = "a CUDA build of torch on a machine with an NVIDIA GPU (see docs/gpu.md)"
        return _path(False, False, "CUDA tensors in eager mode", why, remedy)
    if importlib.util.find_spec("triton") is None:
        return _path(False, False, why_not="triton is not installed", remedy="pip install triton")
    return _path(True, True, f"CUDA tensors on {torch.cuda.get_device_name()}")


def _cupy() -> dict[str, Any]:
    if importlib.util.find_spec("cupy") is None:
        why, remedy = "cupy is not installed", _FROM_CLONE.format(extra="cupy") + " (NVIDIA GPU)"
        return _path(False, False, why_not=why, remedy=remedy)
    try:
        import cupy

        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as error:  # no driver, no device: CuPy raises its own error types
        why = f"cupy cannot reach a GPU ({type(error).__name__}: {error})"
        return _path(False, False, why_not=why, remedy="an NVIDIA GPU with its driver")
    if count == 0:
        return _path(False, False, why_not="no CUDA device", remedy="an NVIDIA GPU with its driver")
    return _path(True, True, f"fused CUDA kernels on {count} device(s)")


def collect() -> dict[str, Any]:
    """The report as a JSON-ready dictionary.

    Examples
    --------
    >>> from evsoftmax._cli_info import collect
    >>> report = collect()
    >>> sorted(report["fast_paths"])  # doctest: +NORMALIZE_WHITESPACE
    ['baseline_kernels', 'cpu_kernel', 'cupy_kernels', 'jax_ffi', 'jax_ffi_baselines',
     'triton']
    """
    cpu_kernel, baselines = _cpu_kernel(), _baseline_kernels()
    fast_paths: dict[str, Callable[[], dict[str, Any]]] = {
        "cpu_kernel": lambda: cpu_kernel,
        "jax_ffi": lambda: _jax_ffi(cpu_kernel),
        "baseline_kernels": lambda: baselines,
        "jax_ffi_baselines": lambda: _jax_ffi(baselines, "baseline_kernels"),
        "triton": _triton,
        "cupy_kernels": _cupy,
    }
    return {
        "evsoftmax": {"version": __version__, "location": str(Path(__file__).parent)},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "platform": {"system": platform.platform(), "machine": platform.machine()},
        "backends": _backends(),
        "integrations": _integrations(),
        "fast_paths": {name: probe() for name, probe in fast_paths.items()},
    }


_TITLES = {
    "cpu_kernel": "CPU kernel",
    "jax_ffi": "JAX FFI",
    "baseline_kernels": "baseline kernels",
    "jax_ffi_baselines": "JAX FFI baselines",
    "triton": "Triton",
    "cupy_kernels": "CuPy kernels",
}


def _text(report: dict[str, Any]) -> str:
    package, python = report["evsoftmax"], report["python"]
    lines = [
        f"evsoftmax {package['version']} ({package['location']})",
        f"Python    {python['version']} ({python['implementation']})",
        f"platform  {report['platform']['system']}",
        "",
        "backends:",
    ]
    for name, found in report["backends"].items():
        state = found["version"] if found["installed"] else f"not installed ({found['remedy']})"
        lines.append(f"  {name:<17} {state}")
    lines += ["", "integrations (evsoftmax.integrations):"]
    for name, found in report["integrations"].items():
        state = found["version"] if found["installed"] else f"not installed ({found['remedy']})"
        lines.append(f"  {name:<17} {state}")
    lines += ["", "fast paths:"]
    for name, path in report["fast_paths"].items():
        title = f"  {_TITLES[name]:<17} "
        if path["active"]:
            lines.append(f"{title}active: {path['detail']}")
        else:
            lines.append(f"{title}inactive: {path['why_not']}")
            lines.append(f"  {'':<17}   remedy: {path['remedy']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the report (text, or JSON with ``--json``); always exits 0."""
    report = collect()
    print(json.dumps(report, indent=2) if args.json else _text(report))
    sys.stdout.flush()
    return 0
