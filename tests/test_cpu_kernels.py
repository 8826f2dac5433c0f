"""The compiled CPU kernel (evsoftmax._ext) against the float64 reference, row by row."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from evsoftmax import _core, _ext
from evsoftmax._lib._compat import array_namespace

from . import reference as ref
from .cpu_kernels import require_cpu_kernels

# NumPy and the C kernels only, the same in every session: run in the numpy one.
pytestmark = pytest.mark.only_xp_backend("numpy")

# Lengths around the vector widths (8 and 16 lanes) and the 1024-entry summation blocks.
LENGTHS = [1, 2, 3, 15, 16, 17, 31, 1023, 1024, 1025, 3001]
TOL = {np.float32: 2e-6, np.float64: 1e-13}
XP = array_namespace(np.ones(1))


@pytest.fixture(autouse=True)
def _kernels():
    require_cpu_kernels()


def run(x, epsilon=0.0, log=False, threads=1):
    """The kernel on the rows of 2-d ``x``."""
    x = np.ascontiguousarray(x)
    out = np.full_like(x, 12345.0)  # an entry the kernel missed keeps this
    _ext.ev_softmax_rows(
        x.ctypes.data,
        out.ctypes.data,
        rows=x.shape[0],
        length=x.shape[1],
        itemsize=x.itemsize,
        epsilon=epsilon,
        log=log,
        threads=threads,
    )
    assert not (out == 12345.0).any()
    return out


def gap_to_mean(x):
    """Smallest distance to its row's mean of an entry that is not its row's maximum.

    Below rounding error, which side of the mean such an entry falls is a tie either
    way; the maximum is in the support whatever the rounding.
    """
    x = np.asarray(x, dtype=np.float64)
    gaps = np.abs(x - x.mean(axis=-1, keepdims=True))
    gaps[x == x.max(axis=-1, keepdims=True)] = np.inf
    return float(gaps.min()) if x.size else math.inf


def draw(shape, dtype, seed):
    """Normal rows times 3 with no entry but the maximum within 1e-4 of the mean."""
    rng = np.random.default_rng(seed)
    while True:
        x = (rng.normal(size=shape) * 3).astype(dtype)
        if gap_to_mean(x) > 1e-4:
            return x


def expected(x, epsilon, log):
    return (ref.log_ev_softmax if log else ref.ev_softmax)(x, -1, epsilon)


def assert_matches(got, want, dtype):
    tol = TOL[dtype]
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=tol)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("length", LENGTHS)
def test_rows_match_the_reference(length, dtype, epsilon, log):
    x = draw((7, length), dtype, seed=length)
    assert_matches(run(x, epsilon, log), expected(x, epsilon, log), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exponential_accuracy_over_its_whole_range(dtype):
    # Row [0, s] with epsilon: s is outside the support, so p1 / p0 = eps / (1 + eps) * exp(s),
    # which tests the kernel's own exponential against float64 math at every scale.
    info = np.finfo(dtype)
    lowest = math.log(info.smallest_normal)
    s = np.linspace(lowest + 0.01, -1e-3, 4001).astype(dtype)
    x = np.stack([np.zeros_like(s), s], axis=1)
    got = run(x, epsilon=1.0)
    want = 0.5 * np.exp(s.astype(np.float64))
    ratio = got[:, 1].astype(np.float64) / got[:, 0]
    np.testing.assert_allclose(ratio, want, rtol=8 * info.eps, atol=0)
    # Below the smallest normal result the weight is 0 (subnormals are dropped).
    tiny = run(np.array([[0.0, lowest - 1.0]], dtype=dtype), epsilon=1.0)
    assert tiny[0, 1] == 0.0


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_neg_inf_entries_and_empty_rows(dtype, log):
    x = draw((5, 40), dtype, seed=3)
    x[0, ::3] = -np.inf
    x[1] = -np.inf  # no valid entry: 0 (log: -inf) everywhere
    x[2, 1:] = -np.inf  # a single valid entry: probability 1
    x[3, :20] = -np.inf
    for epsilon in (0.0, 0.25):
        got = run(x, epsilon, log)
        assert_matches(got, expected(x, epsilon, log), dtype)
    assert (got[1] == (-np.inf if log else 0.0)).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's, in the core's overflow
@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
@pytest.mark.parametrize("log", [False, True])
def test_nan_inf_and_overflowing_rows_follow_the_core(log, epsilon):
    big = np.float32(3e38)
    x = draw((6, 9), np.float32, seed=4)
    x[1, 4] = np.nan  # a NaN row is NaN everywhere, -inf entries included
    x[1, 5] = -np.inf
    x[3, 0] = np.inf  # so is a row holding +inf
    x[4, :] = [big, -big, big, big, -big, big, big, big, big]  # x - max overflows to -inf
    got = run(x, epsilon, log, threads=2)
    assert np.isnan(got[[1, 3]]).all()
    rest = [0, 2, 4, 5]
    want = (_core.log_ev_softmax if log else _core.ev_softmax)(
        x[rest], axis=1, epsilon=epsilon, where=None, xp=XP
    )
    assert_matches(got[rest], want, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_rows_are_uniform(dtype):
    # The mean of shifted scores keeps the maximum in the support under any rounding.
    for value in (0.1, -7.3, 1e30):
        for length in (7, 1000, 4097):
            x = np.full((1, length), value, dtype=dtype)
            got = run(x)
            np.testing.assert_allclose(got, 1.0 / length, rtol=TOL[dtype])


@pytest.mark.parametrize("threads", [1, 2, 3, 8, 300])
def test_threads_split_rows_without_changing_results(threads):
    # Enough entries for 10 threads; values on a grid (plus small noise) stay far
    # from their row mean, which a draw of 40000 normals per row would not.
    rng = np.random.default_rng(6)
    grid = rng.choice([-3.0, -1.0, 1.0, 3.0], size=(10, 40000))
    x = (grid + rng.uniform(-0.1, 0.1, size=grid.shape)).astype(np.float32)
    one = run(x, threads=1)
    many = run(x, threads=threads)
    np.testing.assert_array_equal(many, one)
    assert_matches(one, expected(x, 0.0, False), np.float32)


def test_bad_arguments_raise():
    kernels = _ext.cpu_kernels()
    with pytest.raises(ValueError, match="itemsize"):
        kernels.ev_softmax_rows(0, 0, 1, 1, 2, 0.0, -math.inf, False, 1, 0)
    with pytest.raises(ValueError, match=">= 0"):
        kernels.ev_softmax_rows(0, 0, -1, 1, 4, 0.0, -math.inf, False, 1, 0)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("EVSOFTMAX_NO_CPU_KERNELS", "1")
    assert not _ext.available()
    with pytest.raises(RuntimeError, match="not available"):
        run(np.zeros((1, 3)))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=70),
        elements=st.floats(-60, 60, width=32),
    ),
    st.sampled_from([0.0, 1e-6, 0.5]),
    st.booleans(),
)
def test_random_rows_match_the_reference(x, epsilon, log):
    if gap_to_mean(x) < 1e-4:
        return  # a tie with the mean: either side is a correct answer
    assert_matches(run(x, epsilon, log, threads=2), expected(x, epsilon, log), x.dtype.type)
