"""Build script for the optional C kernels; all other metadata is in ``pyproject.toml``.

``evsoftmax._ext._cpu_kernels`` (fused CPU ev-softmax rows, used by the NumPy
and PyTorch adapters) and ``evsoftmax._ext._baseline_kernels`` (sparsemax and
entmax rows) are compiled when a C compiler is available. They are
optional: if the build fails, or on platforms without POSIX threads, the
package installs without them and takes its array-library code paths instead.
Set ``EVSOFTMAX_NO_EXTENSIONS=1`` to skip them on purpose.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup


def _extensions() -> list[Extension]:
    if os.name != "posix" or os.environ.get("EVSOFTMAX_NO_EXTENSIONS"):
        return []
    # -fopenmp-simd honours `omp simd` pragmas without linking an OpenMP runtime.
    # -g0 overrides the -g of Python's own CFLAGS: debug information for three
    # target clones of every kernel is a third of the kernels' build time (about
    # 44 s to 31 s of CPU on our 2-core machine) and changes no instruction.
    args = ["-O3", "-fopenmp-simd", "-g0"]
    if sys.platform.startswith("linux"):
        args.append("-pthread")
    link = ["-pthread"] if sys.platform.startswith("linux") else []
    kernels = Extension(
        "evsoftmax._ext._cpu_kernels",
        sources=["src/evsoftmax/_ext/_cpu_kernels.c"],
        depends=["src/evsoftmax/_ext/_xla_ffi.h"],
        extra_compile_args=args,
        extra_link_args=link,
        optional=True,
    )
    headers = [
        "src/evsoftmax/_ext/_common.h",
        "src/evsoftmax/_ext/_baseline_rows.h",
        "src/evsoftmax/_ext/_xla_ffi.h",
    ]
    baselines = Extension(
        "evsoftmax._ext._baseline_kernels",
        sources=["src/evsoftmax/_ext/_baseline_kernels.c"],
        depends=headers,
        # No errno to set (the kernels never read it): GCC then vectorizes the VJP's
        # sqrt instead of calling libm once per entry (about 10x on that loop).
        extra_compile_args=[*args, "-fno-math-errno"],
        extra_link_args=link,
        optional=True,
    )
    return [kernels, baselines]


setup(ext_modules=_extensions())
