"""pytest plugin for GPU runs: ``-p evsoftmax_gpu_plugin`` with this folder on ``PYTHONPATH``.

With ``EVSOFTMAX_TEST_DEVICE=cuda`` it makes CUDA torch's default device, so every
tensor the test-suite creates through the ``xp`` fixture lives on the GPU (and
the torch adapter takes its CUDA/Triton path). JAX and CuPy need nothing: JAX
uses a GPU when its CUDA plugin finds one and CuPy arrays always live on one.
The report header names the devices the run used.
"""

from __future__ import annotations

import os

import pytest


def _torch_on_cuda() -> bool:
    return os.environ.get("EVSOFTMAX_TEST_DEVICE", "") == "cuda"


def pytest_configure(config: pytest.Config) -> None:
    if _torch_on_cuda():
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("EVSOFTMAX_TEST_DEVICE=cuda but torch sees no CUDA device")
        torch.set_default_device("cuda")


def _describe(backend: str) -> str:
    if backend == "torch":
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
        where = torch.get_default_device()
        return f"torch {torch.__version__}: default device {where}, CUDA device {name}"
    if backend == "jax":
        import jax

        return f"jax {jax.__version__}: devices {jax.devices()}"
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return f"cupy {cupy.__version__}: device {props['name']!r}"


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for backend in os.environ.get("EVSOFTMAX_TEST_BACKENDS", "").split(","):
        if backend in ("torch", "jax", "cupy"):
            try:
                lines.append(_describe(backend))
            except Exception as exc:
                lines.append(f"{backend}: no device ({type(exc).__name__}: {exc})")
    return lines
