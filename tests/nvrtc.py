"""Compile CUDA source with NVRTC through ctypes, on a machine with or without a GPU.

NVRTC is only a compiler, so it needs no driver or device: CI and developer
machines without a GPU can still check that the CuPy adapter's kernels compile
(and that ptxas keeps their register caches out of local memory). It is found
in the ``nvidia-cuda-nvrtc-cu12`` / ``nvidia-cuda-nvrtc`` wheels or on the
library path; tests skip when it is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import importlib.util
import os

__all__ = ["compile_cuda", "find_nvrtc"]


def _wheel_candidates() -> list[str]:
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    found: list[str] = []
    for root in roots:
        for pattern in ("cuda_nvrtc/lib/libnvrtc.so*", "cu*/lib/libnvrtc.so*"):
            found += [p for p in sorted(glob.glob(os.path.join(root, pattern))) if "alt" not in p]
    return found


@functools.cache
def find_nvrtc() -> ctypes.CDLL | None:
    """The NVRTC library, or None when it is not installed."""
    candidates = _wheel_candidates()
    system = ctypes.util.find_library("nvrtc")
    if system is not None:
        candidates.append(system)
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def version(lib: ctypes.CDLL) -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def compile_cuda(source: str, options: list[str]) -> tuple[bool, str]:
    """Compile ``source`` with ``options``; return (success, compiler log)."""
    lib = find_nvrtc()
    if lib is None:
        raise RuntimeError("NVRTC is not installed")
    program = ctypes.c_void_p()
    status = lib.nvrtcCreateProgram(
        ctypes.byref(program), source.encode(), b"kernel.cu", 0, None, None
    )
    if status != 0:
        raise RuntimeError(f"nvrtcCreateProgram failed with status {status}")
    try:
        encoded = [o.encode() for o in options]
        argv = (ctypes.c_char_p * len(encoded))(*encoded)
        status = lib.nvrtcCompileProgram(program, len(encoded), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        return status == 0, log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
