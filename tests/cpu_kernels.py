"""The compiled CPU kernels in tests: run a test on both paths, require the kernels in CI.

``nox`` sets ``EVSOFTMAX_REQUIRE_CPU_KERNELS=1``: there a missing build fails the
kernel tests instead of skipping them (CI installs the package from source with a
C compiler present).
"""

from __future__ import annotations

import os

import pytest

from evsoftmax import _ext

__all__ = ["PATHS", "require_baseline_kernels", "require_cpu_kernels", "use_path"]

# "kernel": the compiled kernel; "array-ops": the framework's own ops without it.
PATHS = ["kernel", "array-ops"]


def require_cpu_kernels(module: str = "_cpu_kernels") -> None:
    """Skip (or, when required, fail) unless the compiled kernels (``module``) are available."""
    found = _ext.available() if module == "_cpu_kernels" else _ext.baseline_kernels() is not None
    if found:
        return
    if os.environ.get("EVSOFTMAX_REQUIRE_CPU_KERNELS"):
        pytest.fail(
            f"evsoftmax._ext.{module} is not built, but the test run requires it "
            "(EVSOFTMAX_REQUIRE_CPU_KERNELS is set): install a C compiler (e.g. gcc) and "
            "reinstall evsoftmax from source; `evsoftmax info` shows whether the kernel is built"
        )
    pytest.skip("evsoftmax's compiled CPU kernels are not built")


def require_baseline_kernels() -> None:
    """:func:`require_cpu_kernels` for the baselines' kernels (``_baseline_kernels``)."""
    require_cpu_kernels("_baseline_kernels")


def use_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the adapters take ``path`` (one of :data:`PATHS`) for the rest of the test."""
    if path == "kernel":
        require_cpu_kernels()
    else:
        monkeypatch.setenv("EVSOFTMAX_NO_CPU_KERNELS", "1")
