"""The JSON document: schema name, machine description, library versions, writing it."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA", "command_line", "header", "machine", "versions", "write_json"]

SCHEMA = "evsoftmax-bench/1"
# Distributions whose versions explain the numbers.
_DISTRIBUTIONS = (
    "evsoftmax",
    "numpy",
    "scipy",
    "torch",
    "jax",
    "jaxlib",
    "entmax",
    "cupy-cuda12x",
    "dask",
    "array-api-strict",
    "array-api-compat",
    "triton",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[str]:
    """GPU names, asked of frameworks the run has already imported (never imports one)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    jax = sys.modules.get("jax")
    if jax is not None:
        return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    return []


def machine() -> dict[str, Any]:
    """The machine the numbers come from."""
    affinity = getattr(os, "sched_getaffinity", None)
    torch = sys.modules.get("torch")
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(affinity(0)) if affinity else os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries involved (None when not installed)."""
    found: dict[str, str | None] = {}
    for name in _DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def command_line(config: dict[str, Any]) -> str:
    """The ``evsoftmax bench`` command that times what ``config`` describes."""
    plan = config["plan"]
    options = {
        "--backends": ",".join(config["backends"]),
        "--shapes": ",".join("x".join(map(str, s)) for s in config["shapes"]) or "none",
        "--sweep-total": config["sweep_total"],
        "--sweep-ks": ",".join(map(str, config["sweep_ks"])),
        "--repeats": plan["repeats"],
        "--warmup": plan["warmup"],
        "--max-time": plan["max_time_s"],
        "--device": config["device"],
        "--cases": ",".join(config.get("cases", ())) or "none",
    }
    words = ["evsoftmax bench", *(f"{k} {v}" for k, v in options.items())]
    return " ".join(words + (["--quick"] if config["quick"] else []))


def header(config: dict[str, Any]) -> dict[str, Any]:
    """The document's leading fields (the machine is added once the run is over)."""
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(config),
        "config": config,
        "versions": versions(),
    }


def _finite(value: Any) -> Any:
    """NaN and infinities as null: strict JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``doc`` as strict JSON (no NaN) to ``path``."""
    text = json.dumps(_finite(doc), indent=1, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")
