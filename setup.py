"""Build script for the optional C kernels; all other metadata is in ``pyproject.toml``.

``evsoftmax._ext._cpu_kernels`` (fused CPU ev-softmax rows, used by the NumPy
and PyTorch adapters) is compiled when a C compiler is available. It is
optional: if the build fails, or on platforms without POSIX threads, the
package installs without it and takes its array-library code paths instead.
Set ``EVSOFTMAX_NO_EXTENSIONS=1`` to skip it on purpose.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup


def _extensions() -> list[Extension]:
    if os.name != "posix" or os.environ.get("EVSOFTMAX_NO_EXTENSIONS"):
        return []
    # -fopenmp-simd honours `omp simd` pragmas without linking an OpenMP runtime.
    args = ["-O3", "-fopenmp-simd"]
    if sys.platform.startswith("linux"):
        args.append("-pthread")
    kernels = Extension(
        "evsoftmax._ext._cpu_kernels",
        sources=["src/evsoftmax/_ext/_cpu_kernels.c"],
        extra_compile_args=args,
        extra_link_args=["-pthread"] if sys.platform.startswith("linux") else [],
        optional=True,
    )
    return [kernels]


setup(ext_modules=_extensions())
