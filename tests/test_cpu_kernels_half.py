"""The compiled kernel's half-precision conversions, on every float16/bfloat16 bit pattern.

The kernel converts float16 with F16C where the CPU has it and with portable bit
operations elsewhere (and in the loops that convert entry by entry); both must give
NumPy's float16 conversion (ml_dtypes' for bfloat16), rounding to nearest even, and
the same bits as each other, NaN payloads included, so that every conversion site
agrees whichever runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from evsoftmax import _ext

from .cpu_kernels import require_cpu_kernels

# NumPy and the C kernels only, the same in every session: run in the numpy one.
pytestmark = pytest.mark.only_xp_backend("numpy")

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")

CODES = {"float16": 2, "bfloat16": 3}
TYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@pytest.fixture(autouse=True)
def _kernels():
    require_cpu_kernels()


def convert(src, dtype, widen, hardware):
    """The kernel's conversion of the contiguous array ``src`` (and whether F16C converted)."""
    src = np.ascontiguousarray(src)
    dst = np.empty(src.shape, np.float32 if widen else np.uint16)
    kernels = _ext.cpu_kernels()
    used = kernels.convert_half(
        src.ctypes.data, dst.ctypes.data, src.size, CODES[dtype], widen, hardware
    )
    return dst, used


def float_candidates(dtype):
    """float32 values where rounding to ``dtype`` can go wrong, and random bit patterns.

    Every finite half value, its float32 neighbours, the midpoints to the next half
    (ties, exact in float32) and their neighbours, the overflow threshold, infinities,
    float32 subnormals and NaNs with random payloads.
    """
    halves = np.arange(1 << 16, dtype=np.uint16).view(TYPES[dtype]).astype(np.float32)
    halves = np.sort(halves[np.isfinite(halves)])
    mids = (halves[:-1] + (halves[1:] - halves[:-1]) / 2).astype(np.float32)
    base = np.concatenate([halves, mids, [np.finfo(np.float32).max, np.inf, -np.inf]])
    base = base.astype(np.float32)
    with np.errstate(over="ignore"):  # float32's largest value steps to infinity
        up, down = (np.nextafter(base, np.float32(s * np.inf)) for s in (1, -1))
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=1 << 18, dtype=np.uint64).astype(np.uint32)
    nans = (bits[:4096] & np.uint32(0x807FFFFF)) | np.uint32(0x7F800001)
    subnormals = bits[:4096] & np.uint32(0x807FFFFF)
    extra = np.concatenate([bits, nans, subnormals]).view(np.float32)
    # the largest half and its neighbours (rounding to 65504 or to infinity)
    edge = np.array([65504.0, 65519.99, 65520.0, 65520.01, 2.0**-24, 2.0**-25, 3 * 2.0**-26])
    return np.concatenate([base, up, down, extra, edge.astype(np.float32)])


def assert_same_or_both_nan(got, want):
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(np.signbit(got[nan]), np.signbit(want[nan]))
    assert np.array_equal(
        got[~nan].view(np.uint32 if got.itemsize == 4 else np.uint16),
        want[~nan].view(np.uint32 if want.itemsize == 4 else np.uint16),
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_widening_matches_numpy_on_every_bit_pattern(dtype):
    bits = np.arange(1 << 16, dtype=np.uint16)
    want = bits.view(TYPES[dtype]).astype(np.float32)
    hw, used = convert(bits, dtype, True, True)
    soft, _ = convert(bits, dtype, True, False)
    assert_same_or_both_nan(hw, want)
    assert np.array_equal(hw.view(np.uint32), soft.view(np.uint32))  # NaN payloads too
    if used:  # F16C makes a NaN quiet and keeps its payload: so does the portable path
        nan = np.isnan(want)
        assert np.all(hw.view(np.uint32)[nan] & 0x00400000)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_narrowing_rounds_to_nearest_even_as_numpy(dtype):
    f = float_candidates(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        want = f.astype(TYPES[dtype])
    hw, _ = convert(f, dtype, False, True)
    soft, _ = convert(f, dtype, False, False)
    assert_same_or_both_nan(hw.view(TYPES[dtype]), want)
    assert np.array_equal(hw, soft)  # NaN payloads too


def _forward_rows(x: np.ndarray) -> np.ndarray:
    """The kernel's ev-softmax of the contiguous rows of ``x`` (its own dtype), one thread."""
    y = np.empty_like(x)
    length = x.shape[1]
    _ext.ev_softmax_strided(
        x.ctypes.data, 0, y.ctypes.data, shape=x.shape, strides=(length, 1),
        mask_strides=(0, 0), out_strides=(length, 1), axis=1, dtype=str(x.dtype),
        epsilon=0.0, log=False, threads=1,
    )  # fmt: skip
    return y


def test_the_kernel_output_is_the_same_with_either_conversion():
    # Rows of every length up to a few tiles (the F16C loop's tail included), through
    # the contiguous path: the float32 result rounded once, as float_to_f16 rounds it.
    rng = np.random.default_rng(3)
    for length in (1, 7, 8, 9, 33, 1030):
        x = (rng.standard_normal((5, length)) * 4).astype(np.float16)
        soft, _ = convert(_forward_rows(x.astype(np.float32)), "float16", False, False)
        assert np.array_equal(_forward_rows(x).view(np.uint16), soft)


def log_vjp(lp, g, x, where):
    """The kernel's log VJP of contiguous rows (last axis), in lp's dtype."""
    out = np.empty_like(lp)
    mask = 0 if where is None else where.ctypes.data
    _ext.log_ev_softmax_vjp_strided(
        lp.ctypes.data, g.ctypes.data, x.ctypes.data, mask, out.ctypes.data,
        shape=lp.shape, strides=(lp.shape[1], 1), mask_strides=(lp.shape[1], 1),
        out_strides=(lp.shape[1], 1), axis=1, dtype=lp.dtype.name, threads=1,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("masked", [False, True])
def test_the_float16_log_vjp_is_float32_arithmetic_rounded_once(masked):
    # Contiguous float16 rows are widened and narrowed in runs (F16C where the CPU has
    # it) around the float32 arithmetic: the float32 kernel's result on the widened
    # values, rounded once. Rows with -inf (valid or not) and a NaN row included.
    rng = np.random.default_rng(5)
    for length in (3, 300):
        x = (rng.standard_normal((6, length)) * 3).astype(np.float16)
        x[1, ::3] = -np.inf
        x[2, 1] = np.nan
        lp = (x.astype(np.float32) - np.float32(4)).astype(np.float16)
        lp[3, ::2] = -np.inf  # off the support, valid: the gradient is g there
        g = rng.standard_normal((6, length)).astype(np.float16)
        where = rng.random((6, length)) > 0.2 if masked else None
        got = log_vjp(lp, g, x, where)
        f32 = [a.astype(np.float32) for a in (lp, g, x)]
        want, _ = convert(log_vjp(*f32, where), "float16", False, False)
        assert np.array_equal(got.view(np.uint16), want)
