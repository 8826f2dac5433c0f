"""The CuPy adapter's fused kernels on a GPU: against the references, the core and the emulation.

Skipped where CuPy is not installed; everything but the laziness check also
needs a CUDA device (``benchmarks/gpu/run_gpu_checks.sh`` runs it on one). The
backend-independent semantics tests run on CuPy through the ``xp`` fixture too.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

import evsoftmax as evs  # noqa: E402
from evsoftmax import _core, _dispatch  # noqa: E402
from evsoftmax.adapters.cupy import kernels  # noqa: E402

from . import reference  # noqa: E402
from .backends import gpu_unavailable_reason, namespace  # noqa: E402
from .cupy_emulation import emulate_forward, emulate_jvp, to_storage  # noqa: E402
from .kernel_cases import CASES, TOLERANCES, Case, expected_output, stored  # noqa: E402

_NO_GPU = gpu_unavailable_reason("cupy")
requires_gpu = pytest.mark.skipif(_NO_GPU is not None, reason=str(_NO_GPU))

PUBLIC = {"probs": evs.ev_softmax, "log_probs": evs.log_ev_softmax}
DTYPES = ("float16", "float32", "float64")


def test_adapter_imports_without_building_kernels() -> None:
    """Importing the adapter needs no device: kernels are built on first use."""
    code = (
        "from evsoftmax.adapters.cupy import adapter as _cupy\n"
        "assert _cupy.forward_kernel.cache_info().currsize == 0\n"
        "assert _cupy.jvp_kernel.cache_info().currsize == 0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _device_input(case: Case, dtype: str) -> tuple[object, object]:
    x = cupy.asarray(to_storage(case.x, dtype))
    where = None if case.where is None else cupy.asarray(case.where)
    return x, where


def _run(mode: str, x: object, case: Case, where: object) -> object:
    if mode == "support":
        return evs.ev_softmax_support(x, axis=case.axis, where=where)
    return PUBLIC[mode](x, axis=case.axis, epsilon=case.epsilon, where=where)


@requires_gpu
def test_cupy_arrays_dispatch_to_the_kernels() -> None:
    from evsoftmax.adapters.cupy import adapter as _cupy

    xp = namespace("cupy")
    for name in ("ev_softmax", "log_ev_softmax", "ev_softmax_support", "ev_softmax_jvp"):
        assert _dispatch.implementation(name, xp, getattr(_core, name)) is getattr(_cupy, name)


@requires_gpu
@pytest.mark.parametrize("mode", kernels.MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kernels_match_reference_and_emulation(case: Case, dtype: str, mode: str) -> None:
    x, where = _device_input(case, dtype)
    before = x.copy()
    out = _run(mode, x, case, where)
    assert isinstance(out, cupy.ndarray)
    assert out.shape == x.shape
    assert out.dtype == (cupy.bool_ if mode == "support" else x.dtype)
    assert out.device == x.device
    cupy.testing.assert_array_equal(x, before)  # inputs are never modified

    got = cupy.asnumpy(out).astype(bool if mode == "support" else np.float64)
    expected = expected_output(case, dtype, mode)
    emulated = emulate_forward(
        case.x, axis=case.axis, epsilon=case.epsilon, where=case.where, mode=mode, dtype=dtype
    )
    if mode == "support":
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got, emulated)
        return
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    # The device and its NumPy re-enactment differ only in the last bits.
    np.testing.assert_allclose(got, emulated, rtol=rtol, atol=atol, equal_nan=True)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kernels_agree_with_the_array_api_core(case: Case, dtype: str) -> None:
    xp = namespace("cupy")
    x, where = _device_input(case, dtype)
    for mode, public in PUBLIC.items():
        core = getattr(_core, "ev_softmax" if mode == "probs" else "log_ev_softmax")
        expected = core(x, axis=case.axis % x.ndim, epsilon=case.epsilon, where=where, xp=xp)
        got = public(x, axis=case.axis, epsilon=case.epsilon, where=where)
        rtol, atol = TOLERANCES[dtype]
        cupy.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_jvp_kernel(case: Case, dtype: str) -> None:
    rng = np.random.default_rng(3)
    probs = np.nan_to_num(reference.ev_softmax(case.x, case.axis, case.epsilon, case.where))
    tangent = rng.normal(size=case.x.shape)
    p = cupy.asarray(to_storage(probs, dtype))
    t = cupy.asarray(to_storage(tangent, dtype))
    got = evs.ev_softmax_jvp(p, t, axis=case.axis)
    assert got.dtype == p.dtype
    p64, t64 = stored(probs, dtype), stored(tangent, dtype)
    expected = p64 * (t64 - (p64 * t64).sum(axis=case.axis, keepdims=True))
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(cupy.asnumpy(got).astype(np.float64), expected, rtol, 10 * atol)
    emulated = emulate_jvp(probs, tangent, axis=case.axis, dtype=dtype)
    np.testing.assert_allclose(cupy.asnumpy(got).astype(np.float64), emulated, rtol, atol)


@requires_gpu
def test_jvp_promotes_mixed_dtypes() -> None:
    p = evs.ev_softmax(cupy.asarray([[0.4, 1.4, -0.8]], dtype=cupy.float32))
    t = cupy.asarray([[1.0, 0.0, 0.0]], dtype=cupy.float64)
    got = evs.ev_softmax_jvp(p, t)
    assert got.dtype == cupy.float64
    p64 = cupy.asnumpy(p).astype(np.float64)
    expected = p64 * (np.array([[1.0, 0.0, 0.0]]) - p64[:, :1])
    np.testing.assert_allclose(cupy.asnumpy(got), expected, rtol=1e-6)


@requires_gpu
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_non_contiguous_input_and_any_axis(axis: int) -> None:
    rng = np.random.default_rng(4)
    host = rng.normal(size=(6, 40, 9))
    x = cupy.asarray(host).transpose(2, 0, 1)[:, ::2]  # a strided view
    expected = reference.ev_softmax(np.ascontiguousarray(host.transpose(2, 0, 1)[:, ::2]), axis)
    np.testing.assert_allclose(cupy.asnumpy(evs.ev_softmax(x, axis=axis)), expected, rtol=1e-12)


@requires_gpu
def test_kernels_are_built_once_per_variant() -> None:
    from evsoftmax.adapters.cupy import adapter as _cupy

    x = cupy.asarray(np.random.default_rng(5).normal(size=(3, 17)), dtype=cupy.float32)
    evs.ev_softmax(x)
    before = _cupy.forward_kernel.cache_info()
    evs.ev_softmax(x[:, 1:])
    after = _cupy.forward_kernel.cache_info()
    assert after.currsize == before.currsize
    assert after.hits == before.hits + 1


@requires_gpu
def test_bfloat16_kernels() -> None:
    """bfloat16 through the adapter (CuPy >= 14 with ml_dtypes); computed in float32."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from evsoftmax.adapters.cupy import adapter as _cupy

    host = np.random.default_rng(6).normal(size=(4, 300)).astype(ml_dtypes.bfloat16)
    try:
        x = cupy.asarray(host)
    except Exception as exc:  # CuPy without bfloat16 support
        pytest.skip(f"this CuPy has no bfloat16 arrays: {exc}")
    xp = namespace("cupy")
    got = _cupy.ev_softmax(x, axis=1, epsilon=0.0, where=None, xp=xp)
    assert str(got.dtype) == "bfloat16"
    expected = reference.ev_softmax(host.astype(np.float64), axis=1)
    rtol, atol = TOLERANCES["bfloat16"]
    np.testing.assert_allclose(cupy.asnumpy(got).astype(np.float64), expected, rtol, atol)


@requires_gpu
def test_long_rows_use_the_streamed_tail() -> None:
    """Rows longer than the register cache (64 x 128000, the benchmark shape) stay exact."""
    rng = np.random.default_rng(7)
    host = rng.normal(size=(64, 128000)).astype(np.float32)
    got = cupy.asnumpy(evs.ev_softmax(cupy.asarray(host)))
    expected = reference.ev_softmax(host[:4].astype(np.float64))
    np.testing.assert_allclose(got[:4], expected, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-4)


def test_kernels_cover_the_design_dtypes_and_fall_back_otherwise() -> None:
    """No device needed: which inputs the adapter hands to its kernels."""
    from evsoftmax.adapters.cupy import adapter as _cupy

    for dtype in ("float16", "bfloat16", "float32", "float64"):
        assert _cupy._supported(dtype, 12, 4)
    assert not _cupy._supported("complex64", 12, 4)
    assert not _cupy._supported("float32", 2**31 * 3, 3)  # more rows than a grid holds
    assert _cupy._supported("float32", (2**31 - 1) * 3, 3)
