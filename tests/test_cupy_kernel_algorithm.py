"""CPU-side checks of the CuPy adapter's fused kernels: no GPU (and no CuPy) needed.

* the CUDA templates render for every dtype and variant, and compile with NVRTC
  (a compiler only: it needs no GPU) where NVRTC is installed;
* a NumPy re-enactment of the kernels' exact sequence of operations
  (``cupy_emulation.py``) agrees with the float64 references on every edge case;
* the adapter stays lazy: using evsoftmax does not import CuPy.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from evsoftmax.adapters.cupy import kernels

from . import reference
from .cupy_emulation import (
    bfloat16_from_bits,
    bfloat16_to_bits,
    emulate_forward,
    emulate_jvp,
)
from .kernel_cases import CASES, TOLERANCES, Case, expected_output, stored
from .nvrtc import compile_cuda, find_nvrtc

# The CuPy kernels' source and algorithm, replayed in NumPy: the numpy (or cupy) session.
pytestmark = pytest.mark.only_xp_backend("numpy", "cupy")

_F32_MAX = float(np.finfo(np.float32).max)
VARIANTS = [(d, m, w) for d in kernels.DTYPES for m in kernels.MODES for w in (False, True)]


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize(("dtype", "mode", "masked"), VARIANTS)
def test_forward_source_renders(dtype: str, mode: str, masked: bool) -> None:
    src = kernels.forward_source(dtype, mode, masked)
    assert 'extern "C" __global__ void __launch_bounds__' in src
    assert f"{kernels.FORWARD_KERNEL}(" in src
    assert f"#define EV_MODE {kernels.MODES.index(mode)}\n" in src
    assert f"#define EV_MASKED {int(masked)}\n" in src
    assert f"// Rendered for storage dtype {dtype}." in src
    # Every placeholder was filled and the braces balance.
    assert re.search(r"\{[a-z_]+\}", src) is None
    assert src.count("{") == src.count("}")
    assert src.count("(") == src.count(")")


@pytest.mark.parametrize("dtype", kernels.DTYPES)
def test_jvp_source_renders(dtype: str) -> None:
    src = kernels.jvp_source(dtype)
    assert f"{kernels.JVP_KERNEL}(" in src
    assert re.search(r"\{[a-z_]+\}", src) is None
    assert src.count("{") == src.count("}")


@pytest.mark.parametrize(
    ("dtype", "storage", "acc"),
    [
        ("float16", "unsigned short", "float"),
        ("bfloat16", "unsigned short", "float"),
        ("float32", "float", "float"),
        ("float64", "double", "double"),
    ],
)
def test_storage_and_accumulation_types(dtype: str, storage: str, acc: str) -> None:
    """Half precision is stored as 16-bit words and computed in float32 (DESIGN §4)."""
    src = kernels.jvp_source(dtype)
    assert f"typedef {storage} ev_store_t;" in src
    assert f"typedef {acc} ev_acc_t;" in src
    assert kernels.accumulation_dtype_name(dtype) == {"float": "float32", "double": "float64"}[acc]


def test_unknown_dtype_and_mode_are_rejected() -> None:
    with pytest.raises(ValueError, match="int32"):
        kernels.jvp_source("int32")
    with pytest.raises(ValueError, match="entropy"):
        kernels.forward_source("float32", "entropy", False)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 255, 256, 257, 4096, 8192, 8193, 128000])
def test_block_threads(length: int) -> None:
    threads = kernels.block_threads(length)
    assert threads & (threads - 1) == 0
    assert kernels.WARP <= threads <= kernels.MAX_THREADS
    # The row fits the register cache whenever a block of at most 1024 threads can hold it,
    # and no smaller power of two would.
    if length <= kernels.CACHE_ITEMS * kernels.MAX_THREADS:
        assert threads * kernels.CACHE_ITEMS >= length
        assert threads == kernels.WARP or (threads // 2) * kernels.CACHE_ITEMS < length
    else:
        assert threads == kernels.MAX_THREADS


needs_nvrtc = pytest.mark.skipif(
    find_nvrtc() is None, reason="NVRTC not installed (pip install nvidia-cuda-nvrtc-cu12)"
)


@needs_nvrtc
@pytest.mark.parametrize("dtype", kernels.DTYPES)
def test_kernels_compile_for_hopper_without_spilling(dtype: str) -> None:
    """Every variant compiles for sm_90 (H100/H200), keeping its row cache in registers."""
    sources = [kernels.forward_source(dtype, m, w) for m in kernels.MODES for w in (False, True)]
    for src in [*sources, kernels.jvp_source(dtype)]:
        ok, log = compile_cuda(src, ["--gpu-architecture=sm_90", "--ptxas-options=-v"])
        assert ok, log
        assert re.search(r"\b0 bytes spill stores", log), log


@needs_nvrtc
def test_kernels_compile_for_older_architectures() -> None:
    """The PTX uses nothing newer than Volta (sm_70) offers."""
    for dtype in kernels.DTYPES:
        ok, log = compile_cuda(kernels.forward_source(dtype, "probs", True), ["-arch=compute_70"])
        assert ok, log


@needs_nvrtc
def test_broken_source_fails_to_compile() -> None:
    """The compile check can fail: a kernel with a syntax error is reported."""
    broken = kernels.jvp_source("float32").replace(";", "", 1)
    ok, log = compile_cuda(broken, ["-arch=sm_90"])
    assert not ok
    assert "error" in log


# ---------------------------------------------------------------- emulation


def test_bfloat16_store_rounds_like_ml_dtypes() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(scale=10.0, size=2000).astype(np.float32),
            # Ties between two bfloat16 values (low 16 bits exactly 0x8000), both parities.
            (np.arange(1, 200, dtype=np.uint32) << 16 | 0x8000).view(np.float32),
            np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-40], np.float32),
        ]
    )
    expected = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    got = bfloat16_to_bits(values)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(got[finite], expected[finite])
    assert np.isnan(bfloat16_from_bits(got[~finite])).all()
    # The load is exact: the same float32 values ml_dtypes gives back.
    np.testing.assert_array_equal(
        bfloat16_from_bits(got[finite]),
        expected[finite].view(ml_dtypes.bfloat16).astype(np.float32),
    )


@pytest.mark.parametrize("mode", kernels.MODES)
@pytest.mark.parametrize("dtype", kernels.DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_emulated_forward_matches_reference(case: Case, dtype: str, mode: str) -> None:
    got = emulate_forward(
        case.x, axis=case.axis, epsilon=case.epsilon, where=case.where, mode=mode, dtype=dtype
    )
    expected = expected_output(case, dtype, mode)
    if mode == "support":
        np.testing.assert_array_equal(got, expected)
        return
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("dtype", kernels.DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_emulated_jvp_matches_formula(case: Case, dtype: str) -> None:
    rng = np.random.default_rng(1)
    probs = np.nan_to_num(reference.ev_softmax(stored(case.x, dtype), case.axis, case.epsilon))
    tangent = rng.normal(size=case.x.shape)
    p, t = stored(probs, dtype), stored(tangent, dtype)
    expected = p * (t - (p * t).sum(axis=case.axis, keepdims=True))
    got = emulate_jvp(probs, tangent, axis=case.axis, dtype=dtype)
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=10 * atol)


def test_emulated_probabilities_sum_to_one_on_long_rows() -> None:
    x = np.random.default_rng(2).normal(size=(2, 3 * kernels.CACHE_ITEMS * kernels.MAX_THREADS))
    p = emulate_forward(x, axis=-1, epsilon=0.0, where=None, mode="probs", dtype="float32")
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(p > 0, reference.support(x.astype(np.float32)))


@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=300),
        elements=st.floats(-_F32_MAX, _F32_MAX, width=32),
    )
)
def test_emulated_row_maximum_is_always_in_the_support(x: np.ndarray) -> None:
    """Under any rounding, the kernel's support holds each row's maximum (no NaN rows)."""
    support = emulate_forward(x, axis=-1, epsilon=0.0, where=None, mode="support", dtype="float32")
    at_max = x == x.max(axis=-1, keepdims=True)
    assert (support | ~at_max).all()
    p = emulate_forward(x, axis=-1, epsilon=0.0, where=None, mode="probs", dtype="float32")
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-5)


@given(
    value=st.floats(-_F32_MAX, _F32_MAX, width=32),
    length=st.integers(1, 3 * kernels.CACHE_ITEMS * kernels.MAX_THREADS),
)
def test_emulated_constant_rows_are_uniform(value: float, length: int) -> None:
    x = np.full((1, length), value, dtype=np.float32)
    p = emulate_forward(x, axis=-1, epsilon=0.0, where=None, mode="probs", dtype="float32")
    np.testing.assert_allclose(p, 1.0 / length, rtol=1e-6)


# ---------------------------------------------------------------- laziness


def test_using_evsoftmax_does_not_import_cupy() -> None:
    code = (
        "import sys, numpy as np, evsoftmax as evs\n"
        "from evsoftmax import _dispatch\n"
        "from evsoftmax.adapters.cupy import kernels as _cupy_kernels\n"
        "evs.ev_softmax(np.ones((2, 3)))\n"
        "_cupy_kernels.forward_source('float32', 'probs', True)\n"
        "assert _dispatch.ADAPTER_MODULES['cupy'] == ('.adapters.cupy.adapter',)\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "assert 'evsoftmax.adapters.cupy.adapter' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- GPU benchmark script


def _cupy_bench_module() -> types.ModuleType:
    path = Path(__file__).parents[1] / "benchmarks" / "gpu" / "cupy_bench.py"
    spec = importlib.util.spec_from_file_location("evsoftmax_cupy_bench", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cupy_bench_parses_shapes_without_importing_cupy() -> None:
    path = str(Path(__file__).parents[1] / "benchmarks" / "gpu" / "cupy_bench.py")
    code = (
        "import sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('b', {path!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert m.parse_shapes('8192x8192, 64X128000') == ((8192, 8192), (64, 128000))\n"
        "assert 'cupy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_nvrtc
@pytest.mark.parametrize("dtype", kernels.DTYPES)
def test_cupy_bench_softmax_kernel_compiles(dtype: str) -> None:
    """The like-for-like softmax the GPU benchmark times compiles for sm_90."""
    ok, log = compile_cuda(_cupy_bench_module().softmax_source(dtype), ["--gpu-architecture=sm_90"])
    assert ok, log
