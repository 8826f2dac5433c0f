"""The compiled kernel's strided entry point: masks, any axis and layout, half precision.

Expected values come from the float64 reference of ``tests/reference.py``; half
precision inputs are compared with the reference of their exact values, to the
rounding of the half precision output.
"""

from __future__ import annotations

import numpy as np
import pytest

from evsoftmax import _ext

from . import reference as ref
from .cpu_kernels import require_cpu_kernels
from .test_cpu_kernels import gap_to_mean

# NumPy and the C kernels only, the same in every session: run in the numpy one.
pytestmark = pytest.mark.only_xp_backend("numpy")

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")

SHAPE = (4, 33, 5)
# Output tolerances: float32 math, then the output dtype's rounding (half an ulp).
TOL = {"float32": 2e-6, "float64": 1e-13, "float16": 2.0**-11, "bfloat16": 2.0**-8}
NUMPY_DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}


@pytest.fixture(autouse=True)
def _kernels():
    require_cpu_kernels()


def run(x, axis, where=None, epsilon=0.0, log=False, out=None, threads=1, scan=False):
    """The strided kernel on NumPy array ``x`` (any layout) into ``out`` (default: x's layout).

    With ``scan``, ``(out, whether the kernel says out holds -inf)``.
    """
    out = np.full_like(x, 12345.0) if out is None else out
    mask_ptr, mask_strides = 0, (0,) * x.ndim
    if where is not None:
        mask = np.broadcast_to(where, x.shape)
        mask_ptr, mask_strides = mask.ctypes.data, mask.strides
    found = _ext.ev_softmax_strided(
        x.ctypes.data,
        mask_ptr,
        out.ctypes.data,
        shape=x.shape,
        strides=tuple(s // x.itemsize for s in x.strides),
        mask_strides=mask_strides,
        out_strides=tuple(s // out.itemsize for s in out.strides),
        axis=axis,
        dtype=np.dtype(x.dtype).name,
        epsilon=epsilon,
        log=log,
        threads=threads,
        scan=scan,
    )
    assert not (out == 12345.0).any()  # an entry the kernel missed keeps this
    return (out, found) if scan else out


def expected(x, axis, where, epsilon, log):
    fn = ref.log_ev_softmax if log else ref.ev_softmax
    return fn(np.asarray(x, dtype=np.float64), axis, epsilon, where)


def assert_matches(got, want, dtype):
    got = np.asarray(got, dtype=np.float64)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    tol = TOL[dtype]
    np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=tol)


def draw(shape, dtype, seed, axis):
    """Scores of ``dtype`` whose entries keep clear of their row mean along ``axis``."""
    rng = np.random.default_rng(seed)
    while True:
        x = (rng.normal(size=shape) * 3).astype(NUMPY_DTYPES[dtype])
        if gap_to_mean(np.moveaxis(x.astype(np.float64), axis, -1).reshape(-1, shape[axis])) > 1e-3:
            return x


def layout(x, name):
    """``x``'s values in another memory layout (same logical array)."""
    if name == "fortran":
        return np.asfortranarray(x)
    if name == "reversed":  # negative strides
        return np.ascontiguousarray(x[::-1, :, ::-1])[::-1, :, ::-1]
    if name == "sliced":  # a view with gaps between rows and entries
        wide = np.zeros((x.shape[0], x.shape[1], 2 * x.shape[2]), dtype=x.dtype)
        wide[:, :, ::2] = x
        return wide[:, :, ::2]
    return x


MASKS = {
    "none": None,
    "full": lambda rng: rng.random(SHAPE) > 0.3,
    "broadcast": lambda rng: rng.random((1, SHAPE[1], 1)) > 0.3,
    "rank-1": lambda rng: rng.random(SHAPE[2]) > 0.3,
}


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("view", ["c", "fortran", "reversed", "sliced"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_any_axis_layout_and_mask_match_the_reference(axis, view, mask, log):
    rng = np.random.default_rng(axis)
    x = layout(draw(SHAPE, "float64", axis, axis), view)
    where = None if MASKS[mask] is None else MASKS[mask](rng)
    for epsilon in (0.0, 0.5):
        got = run(x, axis, where, epsilon, log)
        assert_matches(got, expected(x, axis, where, epsilon, log), "float64")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("axis", [0, 2])
def test_half_precision_rows_are_computed_in_float32(dtype, axis):
    if dtype not in _ext.strided_dtypes():
        pytest.skip(f"{dtype}: the compiler that built the kernel has no _Float16")
    x = draw(SHAPE, dtype, 7, axis)
    where = np.random.default_rng(7).random((SHAPE[0], 1, SHAPE[2])) > 0.2
    for log in (False, True):
        got = run(x, axis, where, 0.25, log)
        assert got.dtype == x.dtype
        assert_matches(got, expected(x, axis, where, 0.25, log), dtype)


def test_output_in_another_layout_than_the_input():
    x = draw(SHAPE, "float32", 2, 1)
    out = np.full(SHAPE, 12345.0, dtype=np.float32, order="F")
    got = run(x, 1, out=out)
    assert got is out
    assert_matches(got, expected(x, 1, None, 0.0, False), "float32")


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
@pytest.mark.parametrize("log", [False, True])
def test_masked_entries_act_as_minus_inf_and_are_never_read(dtype, log):
    x = draw((6, 9), dtype, 5, 1)
    where = np.ones((6, 9), dtype=bool)
    where[0, ::2] = False
    x[0, ::2] = np.nan  # masked NaN: must not reach the result
    where[1] = False  # no valid entry: 0 (log: -inf) everywhere
    x[2, 3] = np.nan  # a valid NaN makes its row NaN
    x[3, 1] = np.inf  # so does a valid +inf
    x[4, 1:] = -np.inf  # one valid entry: probability 1
    got = run(x, 1, where, 0.0, log, threads=2)
    assert_matches(got, expected(x, 1, where, 0.0, log), dtype)
    assert (np.asarray(got[1], dtype=np.float64) == (-np.inf if log else 0.0)).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's overflow
def test_overflowing_rows_on_the_gathered_path():
    big = np.float32(3e38)
    x = np.array([[big, -big, big, big, -big, big, 0.5]], dtype=np.float32).T  # axis 0
    where = np.array([True] * 6 + [False])[:, None]
    for log in (False, True):
        got = run(x, 0, where, 1e-6, log)
        # The log of a weight beyond float32's range is -inf there (as in the core).
        want = expected(x, 0, where, 1e-6, log).astype(np.float32)
        assert_matches(got, want.astype(np.float64), "float32")


@pytest.mark.parametrize("threads", [2, 5])
def test_threads_split_strided_rows_without_changing_results(threads):
    x = draw((64, 40, 3), "float32", 9, 1)
    where = np.random.default_rng(9).random((1, 40, 3)) > 0.1
    one = run(x, 1, where)
    np.testing.assert_array_equal(run(x, 1, where, threads=threads), one)


def test_bad_arguments_raise():
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="not supported"):
        _ext.ev_softmax_strided(
            x.ctypes.data, 0, x.ctypes.data, shape=(2, 3), strides=(3, 1), mask_strides=(0, 0),
            out_strides=(3, 1), axis=1, dtype="int8", epsilon=0.0, log=False, threads=1,
        )  # fmt: skip
    kernels = _ext.cpu_kernels()
    with pytest.raises(ValueError, match="axis"):
        kernels.ev_softmax_strided(0, 0, 0, (2, 3), (3, 1), (0, 0), (3, 1), 2, 0, 0.0, 0.0, 0, 1, 0)
    with pytest.raises(ValueError, match="per dimension"):
        kernels.ev_softmax_strided(0, 0, 0, (2, 3), (3,), (0, 0), (3, 1), 1, 0, 0.0, 0.0, 0, 1, 0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's overflow
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("mask", ["none", "full", "broadcast"])
def test_rows_along_a_middle_axis_side_by_side(dtype, log, mask):
    # Rows along axis 1 of a C-contiguous array start next to each other: the kernel
    # takes them 16 at a time, vectorized across rows, and hands a tile with a special
    # row to the row-by-row path. Columns 16-31 hold special rows, 32-35 a partial tile.
    x = draw((2, 30, 36), dtype, 11, 1)
    x[0, 3, 17] = np.nan  # a NaN row
    x[1, :, 20] = -np.inf  # no valid entry
    x[0, 5:, 25] = -np.inf  # one valid entry
    rng = np.random.default_rng(12)
    where = {
        "none": None,
        "full": rng.random(x.shape) > 0.3,
        "broadcast": rng.random((30, 1)) > 0.3,
    }
    where = where[mask]
    if mask == "full":
        where[1, :, 3] = False  # a fully masked row inside a tile
    for epsilon in (0.0, 0.5):
        got = run(x, 1, where, epsilon, log)
        assert_matches(got, expected(x, 1, where, epsilon, log), dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's NaN row
@pytest.mark.parametrize("length", [1, 3, 15, 16, 17, 32, 33])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_short_rows_sixteen_at_a_time(length, dtype):
    # Rows of up to 15 entries run 16 side by side; a tile with a special row takes
    # the row path, and the rows after the last full tile too (40 = 2 * 16 + 8).
    x = draw((40, length), dtype, length, 1)
    x[20, 0] = np.nan
    x[35, :] = -np.inf
    for log in (False, True):
        got = run(x, 1, None, 0.5, log, threads=2)
        assert_matches(got, expected(x, 1, None, 0.5, log), dtype)


def two_sided(shape, dtype, seed):
    """Scores of ``dtype`` in [-3, -2] and [2, 3], equally likely: far from any mean of many."""
    rng = np.random.default_rng(seed)
    values = rng.choice([-1.0, 1.0], size=shape) * (2.0 + rng.random(shape))
    return values.astype(NUMPY_DTYPES[dtype])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's NaN and overflow rows
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("mask", ["none", "full", "per-row", "per-column"])
def test_column_tiles_along_axis_0(dtype, mask):
    # Rows along axis 0 start next to each other: the kernel takes up to 64 at a time
    # (columns of the matrix side by side), here two full tiles and a tail of 7; a
    # column that needs the special rules is redone on its own, in place.
    if dtype not in _ext.strided_dtypes():
        pytest.skip(f"{dtype}: the compiler that built the kernel has no _Float16")
    x = two_sided((40, 135), dtype, 13)
    x[5, 3] = np.nan  # a NaN column
    x[:, 70] = -np.inf  # no valid entry
    x[1:, 71] = -np.inf  # one valid entry
    x[9, 130] = np.inf  # a valid +inf
    big = {"float16": 6e4, "bfloat16": 3e38, "float32": 3e38, "float64": 1.7e308}[dtype]
    x[:, 90] = np.where(np.arange(40) % 2 == 0, big, -big).astype(x.dtype)  # sum overflows
    rng = np.random.default_rng(14)
    shapes = {"none": None, "full": x.shape, "per-row": (40, 1), "per-column": (1, 135)}
    where = None if shapes[mask] is None else rng.random(shapes[mask]) > 0.2
    if mask == "full":
        where[:, 100] = False  # a fully masked column
        where[:, 90] = True
    if mask == "per-column":
        where[0, 90] = True
    for log in (False, True):
        for epsilon in (0.0, 0.5):
            got = run(x, 0, where, epsilon, log, threads=2)
            want = expected(x, 0, where, epsilon, log)
            # The float64 reference's log of a weight beyond the dtype's range is
            # finite; the kernel's (as the core's) is -inf there: compare that column apart.
            keep = np.ones(x.shape[1], dtype=bool)
            keep[90] = False
            assert_matches(got[:, keep], want[:, keep], dtype)
            if not log:
                assert_matches(got[:, 90], want[:, 90], dtype)


@pytest.mark.parametrize("log", [False, True])
def test_column_tiles_narrow_for_long_columns(log):
    # Long rows make narrower tiles (64k entries of scratch: 32 columns of 2000), and
    # beyond 8192 entries the gathered row path takes them; both match the reference.
    for shape in [(2000, 40), (9000, 3)]:
        x = two_sided(shape, "float32", shape[0])
        where = np.random.default_rng(15).random(shape) > 0.1
        got = run(x, 0, where, 0.25, log)
        assert_matches(got, expected(x, 0, where, 0.25, log), "float32")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's NaN and overflow rows
@pytest.mark.parametrize("length", [17, 31, 1030])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_tails_follow_the_special_rules(length, dtype):
    # Contiguous rows run in chunks of 16 entries, the last partial chunk padded with
    # -inf: special entries placed in that tail (and a tail after a whole block of
    # 1024) must count exactly as anywhere else.
    x = two_sided((8, length), dtype, length)
    last = length - 1
    x[0, last] = 50.0  # the maximum in the tail
    x[1, last] = np.nan  # a valid NaN in the tail
    x[2, last] = np.inf  # a valid +inf in the tail
    x[3, last - 1 :] = -np.inf  # -inf entries in the tail
    x[4, :last] = -np.inf  # the one valid entry in the tail
    x[5, :] = -np.inf  # no valid entry
    big = {"float32": 3e38, "float64": 1.7e308}[dtype]
    x[6, last] = -big  # the shift of the tail entry overflows
    x[6, 0] = big
    for log in (False, True):
        for epsilon in (0.0, 0.5):
            got = run(x, 1, None, epsilon, log)
            want = expected(x, 1, None, epsilon, log)
            rows = slice(None) if not log else slice(0, 6)  # log of an underflowed weight: -inf
            assert_matches(got[rows], want[rows], dtype)


# Row lengths at each width of the short-row kernel (16, 32, 48, 64 entries) and one
# either side, and at the lane tiles' limit (15): the thresholds of the short paths.
SHORT_LENGTHS = [15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's NaN and overflow rows
@pytest.mark.parametrize("length", SHORT_LENGTHS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_short_rows_at_every_width_threshold(length, dtype):
    # Contiguous rows of up to 64 entries take one vector pass per row at a width known
    # when compiled (float32 and float64 in place, half precision and masked rows
    # gathered in tiles of many rows): each row's special rules hold, whatever its
    # place in a tile; so do rows with gaps between them ("sliced") and masks.
    if dtype not in _ext.strided_dtypes():
        pytest.skip(f"{dtype}: the compiler that built the kernel has no _Float16")
    x = two_sided((150, length), dtype, length)
    last = length - 1
    x[3, last] = 50.0  # the maximum in the padded tail
    x[10, last // 2] = np.nan  # a valid NaN
    x[11, last] = np.inf  # a valid +inf
    x[12, :] = -np.inf  # no valid entry
    x[13, 1:] = -np.inf  # one valid entry
    x[14, : last // 2] = -np.inf  # -inf entries
    x[15, :] = 1.5  # a constant row: uniform
    big = {"float16": 6e4, "bfloat16": 3e38, "float32": 3e38, "float64": 1.7e308}[dtype]
    x[16, 0], x[16, last] = big, -big  # the shift overflows: the exact mean's support
    wide = np.zeros((150, length + 7), dtype=x.dtype)
    wide[:, :length] = x
    rng = np.random.default_rng(length)
    masks = [None, rng.random(x.shape) > 0.2, rng.random((150, 1)) > 0.1]
    masks[1][20] = False  # a fully masked row
    masks[1][16] = True
    for view in (x, wide[:, :length]):
        for where in masks:
            for log, epsilon in [(False, 0.0), (True, 0.5)]:
                got = run(view, 1, where, epsilon, log, threads=2)
                want = expected(x, 1, where, epsilon, log)
                # The float64 reference's log of a weight beyond the dtype's range is
                # finite; the kernel's (as the core's) is -inf there: that row apart.
                rows = np.arange(150) != 16 if log else slice(None)
                assert_matches(got[rows], want[rows], dtype)
