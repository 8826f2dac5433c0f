"""The compiled kernel's VJP of log ev-softmax, and the forward's scan for -inf.

``log_ev_softmax_vjp_strided`` computes ``g - exp(lp) * sum(g)`` over the valid
entries of each row and exactly 0 on the others. Expected values are the closed
form of ``tests/closed_forms.py`` in float64, evaluated on the exact values the
kernel reads (the log-probabilities and cotangent as the dtype holds them) and
on the validity of ``tests/reference.py`` (``where`` true and ``x != -inf``).
"""

from __future__ import annotations

import numpy as np
import pytest

from evsoftmax import _ext

from .closed_forms import log_ev_softmax_vjp
from .cpu_kernels import require_cpu_kernels
from .reference import _valid
from .test_cpu_kernels_strided import MASKS, NUMPY_DTYPES, SHAPE, draw, layout, run

# NumPy and the C kernels only, the same in every session: run in the numpy one.
pytestmark = pytest.mark.only_xp_backend("numpy")

# float32 math, then the output dtype's rounding, relative to the row's sum(|g|).
TOL = {"float32": 1e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1e-2}


@pytest.fixture(autouse=True)
def _kernels():
    require_cpu_kernels()


def log_vjp(lp, g, x, where, axis, threads=1, out=None):
    """The kernel on NumPy arrays (``x``, ``where`` optional; ``g`` and ``x`` in lp's layout)."""
    out = np.full_like(lp, 12345.0) if out is None else out
    mask_ptr, mask_strides = 0, (0,) * lp.ndim
    if where is not None:
        mask = np.broadcast_to(where, lp.shape)
        mask_ptr, mask_strides = mask.ctypes.data, mask.strides
    strides = tuple(s // lp.itemsize for s in lp.strides)
    assert g.strides == lp.strides and (x is None or x.strides == lp.strides)
    _ext.log_ev_softmax_vjp_strided(
        lp.ctypes.data,
        g.ctypes.data,
        0 if x is None else x.ctypes.data,
        mask_ptr,
        out.ctypes.data,
        shape=lp.shape,
        strides=strides,
        mask_strides=mask_strides,
        out_strides=tuple(s // out.itemsize for s in out.strides),
        axis=axis,
        dtype=np.dtype(lp.dtype).name,
        threads=threads,
    )
    assert not (out == 12345.0).any()  # an entry the kernel missed keeps this
    return out


def special_inputs(dtype, axis, seed):
    """Scores with -inf entries, a row of -inf only and a row whose range overflows."""
    x = draw(SHAPE, dtype, seed, axis).astype(np.float64)
    moved = np.moveaxis(x, axis, -1)  # a view: rows along the last axis
    flat = moved.reshape(-1, SHAPE[axis])
    big = float(np.finfo(NUMPY_DTYPES[dtype]).max)
    flat[0, :2] = -np.inf
    flat[1, :] = -np.inf
    flat[2, 0], flat[2, 1] = big, -big  # the shift of -big overflows: valid, lp = -inf
    flat[2, 2] = -np.inf
    moved[...] = flat.reshape(moved.shape)
    return x.astype(NUMPY_DTYPES[dtype])


def expected(lp, g, valid, axis):
    lp64, g64 = np.asarray(lp, np.float64), np.asarray(g, np.float64)
    with np.errstate(invalid="ignore"):
        return log_ev_softmax_vjp(np.exp(lp64), g64, valid, axis)


def assert_close(got, want, g, valid, axis, dtype):
    got = np.asarray(got, np.float64)
    np.testing.assert_array_equal(got[~valid], 0.0)  # exactly 0, not -0.0 or tiny
    scale = np.abs(np.where(valid, np.asarray(g, np.float64), 0.0)).sum(axis, keepdims=True)
    tol = TOL[dtype] * np.broadcast_to(np.maximum(scale, 1.0), got.shape)
    assert (np.abs(got - want) <= tol).all(), np.abs(got - want).max()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("mask", ["none", "full", "broadcast"])
@pytest.mark.parametrize("view", ["c", "sliced"])
@pytest.mark.parametrize("axis", [0, 2])
def test_log_vjp_matches_the_closed_form(dtype, mask, view, axis):
    if dtype not in _ext.strided_dtypes():
        pytest.skip(f"{dtype}: the compiler that built the kernel has no _Float16")
    rng = np.random.default_rng(axis)
    x = layout(special_inputs(dtype, axis, 3 + axis), view)
    where = None if MASKS[mask] is None else MASKS[mask](rng)
    g = layout(rng.normal(size=SHAPE).astype(x.dtype), view)
    valid = _valid(np.asarray(x, np.float64), where)
    for epsilon in (0.0, 1e-6):
        lp = layout(np.ascontiguousarray(run(x, axis, where, epsilon, log=True)), view)
        want = expected(lp, g, valid, axis)
        # The input and the mask tell the validity apart from lp's -inf entries.
        assert_close(log_vjp(lp, g, x, where, axis), want, g, valid, axis, dtype)
        if where is not None:  # the mask alone, when it holds every invalid entry
            full = np.broadcast_to(valid, SHAPE).copy()
            assert_close(log_vjp(lp, g, None, full, axis), want, g, valid, axis, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_without_minus_inf_need_no_validity(dtype):
    """With neither x nor a mask, the -inf entries of lp are the invalid ones."""
    rng = np.random.default_rng(5)
    x = draw(SHAPE, dtype, 5, 2)
    x[1, :4, 0] = -np.inf
    g = rng.normal(size=SHAPE).astype(x.dtype)
    lp = run(x, 2, None, 1e-6, log=True)
    valid = x != -np.inf
    got = log_vjp(lp, g, None, None, 2)
    assert_close(got, expected(lp, g, valid, 2), g, valid, 2, dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_rows_are_nan_on_valid_entries_and_zero_on_the_others():
    x = draw(SHAPE, "float64", 9, 2)
    x[0, 0, :2] = -np.inf
    x[0, 0, 3] = np.nan
    g = np.ones(SHAPE)
    lp = run(x, 2, None, 1e-6, log=True)
    got = log_vjp(lp, g, x, None, 2)
    assert np.isnan(got[0, 0, 2:]).all()
    np.testing.assert_array_equal(got[0, 0, :2], 0.0)
    assert np.isfinite(got[1:]).all()


@pytest.mark.parametrize("threads", [2, 5])
def test_threads_do_not_change_the_log_vjp(threads):
    x = special_inputs("float32", 1, 4)
    g = np.random.default_rng(4).normal(size=SHAPE).astype(np.float32)
    lp = run(x, 1, None, 0.0, log=True)
    one = log_vjp(lp, g, x, None, 1)
    np.testing.assert_array_equal(log_vjp(lp, g, x, None, 1, threads=threads), one)


def test_log_vjp_output_in_another_layout():
    x = special_inputs("float64", 2, 6)
    g = np.random.default_rng(6).normal(size=SHAPE)
    lp = run(x, 2, None, 1e-6, log=True)
    out = np.full(SHAPE, 12345.0, order="F")
    got = log_vjp(lp, g, x, None, 2, out=out)
    valid = x != -np.inf
    assert_close(got, expected(lp, g, valid, 2), g, valid, 2, "float64")


def test_log_vjp_bad_arguments_raise():
    a = np.zeros(3)
    call = _ext.cpu_kernels().log_ev_softmax_vjp_strided
    ptr = a.ctypes.data
    with pytest.raises(ValueError, match="axis"):
        call(ptr, ptr, 0, 0, ptr, (3,), (1,), (0,), (1,), 1, 1, 1, 0)
    with pytest.raises(ValueError, match="dtype"):
        call(ptr, ptr, 0, 0, ptr, (3,), (1,), (0,), (1,), 0, 7, 1, 0)
    with pytest.raises(ValueError, match="strides"):
        call(ptr, ptr, 0, 0, ptr, (3,), (1, 1), (0,), (1,), 0, 1, 1, 0)


def scanned(x, axis, where, epsilon, threads=1):
    """``(output, whether the kernel says it holds -inf)`` of the log form."""
    return run(x, axis, where, epsilon, log=True, threads=threads, scan=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("view", ["c", "fortran", "sliced"])
@pytest.mark.parametrize("axis", [0, 2])
def test_the_scan_tells_whether_the_output_holds_minus_inf(dtype, view, axis):
    if dtype not in _ext.strided_dtypes():
        pytest.skip(f"{dtype}: the compiler that built the kernel has no _Float16")
    plain = layout(draw(SHAPE, dtype, 8, axis), view)
    cases = [
        (plain, None, 1e-6),  # full support: no -inf
        (plain, None, 0.0),  # off the support
        (plain, np.random.default_rng(8).random(SHAPE) > 0.3, 1e-6),  # masked entries
        (layout(special_inputs(dtype, axis, 8), view), None, 1e-6),
    ]
    for threads in (1, 3):
        for x, where, epsilon in cases:
            out, found = scanned(x, axis, where, epsilon, threads)
            assert found == bool(np.isneginf(np.asarray(out, np.float64)).any())
    assert scanned(plain, axis, None, 1e-6)[1] is False
    assert scanned(plain, axis, None, 0.0)[1] is True
