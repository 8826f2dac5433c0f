"""DESIGN §4, rule by rule, on every backend, through the public API.

Expected values come from ``tests/reference.py`` (float64, written from the
formulas) or from hand-computed closed forms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import evsoftmax as evs

from . import reference as ref
from .backends import to_numpy

NORMALIZERS = [evs.ev_softmax, evs.log_ev_softmax]
ALL_FUNCS = [evs.ev_softmax, evs.log_ev_softmax, evs.ev_softmax_support]
RNG = np.random.default_rng(0)


def _asarray(xp, a, dtype=None):
    return xp.asarray(np.asarray(a), dtype=xp.float64 if dtype is None else dtype)


def _random_no_ties(shape, seed=0, gap=1e-3):
    rng = np.random.default_rng(seed)
    while True:
        x = rng.normal(size=shape) * 2
        if ref.min_gap_to_mean(x, axis=-1) > gap:
            return x


# --- threshold and support -------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.3])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_matches_float64_reference(xp, axis, epsilon):
    x = _random_no_ties((5, 6, 7), seed=axis + 3)
    x = np.moveaxis(x, -1, axis)
    got = to_numpy(evs.ev_softmax(_asarray(xp, x), axis=axis, epsilon=epsilon))
    np.testing.assert_allclose(got, ref.ev_softmax(x, axis, epsilon), rtol=1e-12, atol=1e-15)
    got = to_numpy(evs.log_ev_softmax(_asarray(xp, x), axis=axis, epsilon=epsilon))
    np.testing.assert_allclose(got, ref.log_ev_softmax(x, axis, epsilon), rtol=1e-12, atol=1e-12)


def test_support_is_valid_entries_at_or_above_mean(xp):
    x = _random_no_ties((8, 9), seed=1)
    got = to_numpy(evs.ev_softmax_support(_asarray(xp, x)))
    np.testing.assert_array_equal(got, x >= x.mean(axis=-1, keepdims=True))
    p = to_numpy(evs.ev_softmax(_asarray(xp, x)))
    np.testing.assert_array_equal(p > 0, got)


def test_entry_equal_to_mean_is_in_support(xp):
    # 0 equals the mean of (-1, 0, 1) exactly in binary floating point.
    p = to_numpy(evs.ev_softmax(_asarray(xp, [-1.0, 0.0, 1.0])))
    np.testing.assert_allclose(p, [0.0, 1 / (1 + math.e), math.e / (1 + math.e)], rtol=1e-12)


@pytest.mark.parametrize("length", [1, 2, 7, 10, 1000, 4097])
@pytest.mark.parametrize("value", [0.1, -3.3, 1e4, 1e30, -1e30])
def test_constant_row_is_uniform(xp, length, value):
    # x >= mean(x) alone fails this in float32 (seven entries of 0.1 have a mean above 0.1).
    for dtype in (xp.float32, xp.float64):
        x = xp.asarray(np.full((2, length), value), dtype=dtype)
        p = to_numpy(evs.ev_softmax(x))
        np.testing.assert_allclose(p, np.full((2, length), 1 / length), rtol=1e-6)
        assert to_numpy(evs.ev_softmax_support(x)).all()


def test_row_maximum_always_in_support(xp):
    rng = np.random.default_rng(5)
    # Rows clustered within float32 rounding of their mean.
    x = 0.1 + rng.integers(0, 3, size=(200, 11)) * np.float32(1e-8)
    p = to_numpy(evs.ev_softmax(xp.asarray(x, dtype=xp.float32)))
    rows = np.arange(x.shape[0])
    assert (p[rows, np.argmax(x.astype(np.float32), axis=-1)] > 0).all()
    assert not np.isnan(p).any()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


# --- epsilon ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1e-3, math.inf, -math.inf, math.nan, "0.1", None, True])
@pytest.mark.parametrize("func", NORMALIZERS)
def test_invalid_epsilon_raises_value_error(xp, func, bad):
    with pytest.raises(ValueError, match="epsilon"):
        func(_asarray(xp, [1.0, 2.0]), epsilon=bad)


def test_epsilon_family_gives_full_support_on_valid_entries(xp):
    x = _asarray(xp, [[0.4, 1.4, -0.8, -math.inf], [0.0, 5.0, 1.0, 2.0]])
    where = xp.asarray(np.array([[True, True, True, True], [True, True, False, True]]))
    p = to_numpy(evs.ev_softmax(x, epsilon=1e-3, where=where))
    np.testing.assert_array_equal(p > 0, [[True, True, True, False], [True, True, False, True]])
    assert p[0, 3] == 0.0 and p[1, 2] == 0.0
    np.testing.assert_allclose(
        p, ref.ev_softmax(to_numpy(x), eps=1e-3, where=to_numpy(where)), rtol=1e-12
    )


def test_epsilon_integer_is_accepted(xp):
    p = to_numpy(evs.ev_softmax(_asarray(xp, [0.4, 1.4, -0.8]), epsilon=1))
    np.testing.assert_allclose(p, ref.ev_softmax(np.array([0.4, 1.4, -0.8]), eps=1.0))


def test_log_form_is_finite_for_extreme_logits_with_epsilon(xp):
    x = _asarray(xp, [1000.0, -1000.0, 0.0])
    out = to_numpy(evs.log_ev_softmax(x, epsilon=1e-6))
    assert np.isfinite(out).all()
    expected = ref.log_ev_softmax(np.array([1000.0, -1000.0, 0.0]), eps=1e-6)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # Without epsilon: -inf outside the support; 0 equals the mean, so it stays in.
    out0 = to_numpy(evs.log_ev_softmax(x))
    np.testing.assert_allclose(out0, [0.0, -np.inf, -1000.0], rtol=1e-12, atol=1e-12)


# --- masks -----------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_where_mask_excludes_entries_from_mean_and_output(xp, epsilon):
    x = np.array([[3.0, 1.0, 2.0, -4.0, 0.5], [1.0, 2.0, 3.0, 4.0, 5.0]])
    where = np.array([[True, False, True, True, True], [False, False, True, True, False]])
    got = to_numpy(evs.ev_softmax(_asarray(xp, x), where=xp.asarray(where), epsilon=epsilon))
    np.testing.assert_allclose(got, ref.ev_softmax(x, eps=epsilon, where=where), rtol=1e-12)
    assert (got[~where] == 0.0).all()
    log = to_numpy(evs.log_ev_softmax(_asarray(xp, x), where=xp.asarray(where), epsilon=epsilon))
    assert (log[~where] == -np.inf).all()


def test_where_broadcasts(xp):
    x = _random_no_ties((3, 4, 5), seed=7)
    where = np.array([True, True, False, True, True])
    got = to_numpy(evs.ev_softmax(_asarray(xp, x), where=xp.asarray(where)))
    np.testing.assert_allclose(got, ref.ev_softmax(x, where=where), rtol=1e-12)


def test_minus_inf_behaves_like_masked(xp):
    x = np.array([[3.0, -np.inf, 2.0, -4.0], [-np.inf, 1.0, -np.inf, 0.0]])
    mask = np.isfinite(x)
    via_inf = to_numpy(evs.ev_softmax(_asarray(xp, x)))
    via_where = to_numpy(
        evs.ev_softmax(_asarray(xp, np.where(mask, x, 7.0)), where=xp.asarray(mask))
    )
    np.testing.assert_array_equal(via_inf, via_where)
    np.testing.assert_allclose(via_inf, ref.ev_softmax(x), rtol=1e-12)


def test_masked_values_are_never_read(xp):
    # NaN, +inf and huge values behind where=False do not affect the row.
    x = np.array([[np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0], [1e300, 1.0, 2.0]])
    where = np.array([False, True, True])
    got = to_numpy(evs.ev_softmax(_asarray(xp, x), where=xp.asarray(where)))
    np.testing.assert_allclose(
        got, np.tile(ref.ev_softmax(np.array([0.0, 1.0, 2.0]), where=where), (3, 1))
    )


@pytest.mark.parametrize("how", ["where", "-inf"])
def test_fully_masked_row_is_zero_not_nan(xp, how):
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    if how == "where":
        kwargs = {"where": xp.asarray(np.array([[False] * 3, [True, True, True]]))}
    else:
        x[0] = -np.inf
        kwargs = {}
    for epsilon in (0.0, 1e-6):
        p = to_numpy(evs.ev_softmax(_asarray(xp, x), epsilon=epsilon, **kwargs))
        assert (p[0] == 0.0).all()
        np.testing.assert_allclose(p[1].sum(), 1.0)
        lp = to_numpy(evs.log_ev_softmax(_asarray(xp, x), epsilon=epsilon, **kwargs))
        assert (lp[0] == -np.inf).all()
        assert np.isfinite(lp[1]).any()
    assert not to_numpy(evs.ev_softmax_support(_asarray(xp, x), **kwargs))[0].any()


def test_large_negative_fill_is_an_ordinary_number(xp):
    # -1e9 drags the mean down (documented): all the other entries enter the support.
    x = np.array([0.0, 1.0, 2.0, -1e9])
    p = to_numpy(evs.ev_softmax(_asarray(xp, x)))
    np.testing.assert_allclose(p, ref.ev_softmax(x), rtol=1e-12)
    assert (p[:3] > 0).all() and p[3] == 0.0


def test_where_must_be_boolean(xp):
    with pytest.raises(TypeError, match="where"):
        evs.ev_softmax(_asarray(xp, [1.0, 2.0]), where=xp.asarray([1, 0]))


@pytest.mark.parametrize("shape", [(2,), (2, 2), (4, 2, 3), (1, 2, 3)])
@pytest.mark.parametrize("func", ALL_FUNCS)
def test_where_that_does_not_broadcast_raises(xp, func, shape):
    x = _asarray(xp, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="where"):
        func(x, where=xp.asarray(np.ones(shape, dtype=bool)))


# --- NaN and +inf ------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_nan_or_posinf_poisons_only_its_row(xp, bad, epsilon):
    x = np.array([[1.0, bad, 0.0, -np.inf], [0.4, 1.4, -0.8, 0.0]])
    for func, reffunc in (
        (evs.ev_softmax, ref.ev_softmax),
        (evs.log_ev_softmax, ref.log_ev_softmax),
    ):
        got = to_numpy(func(_asarray(xp, x), epsilon=epsilon))
        assert np.isnan(got[0]).all()
        np.testing.assert_allclose(got[1], reffunc(x[1], eps=epsilon), rtol=1e-12)
    support = to_numpy(evs.ev_softmax_support(_asarray(xp, x)))
    assert not support[0].any() and support[1].tolist() == [True, True, False, False]


# --- dtypes ------------------------------------------------------------------


def _half_dtypes(xp, backend):
    """The half-precision dtypes a backend has (the array API standard has none)."""
    if backend in ("numpy", "dask"):
        return [np.float16]
    return [getattr(xp, n) for n in ("float16", "bfloat16") if hasattr(xp, n)]


@pytest.mark.parametrize("func", NORMALIZERS)
def test_float_dtypes_preserved(xp, backend, func):
    x = _random_no_ties((4, 8), seed=2)
    for dtype in [xp.float32, xp.float64, *_half_dtypes(xp, backend)]:
        out = func(xp.asarray(x, dtype=dtype))
        assert out.dtype == dtype


def test_half_precision_accumulates_in_float32(xp, backend):
    # A long constant row: summing 4096 copies of 1/4096 in float16 drifts far from 1;
    # accumulated in float32 and rounded once, each entry is exactly 1/4096.
    for dtype in _half_dtypes(xp, backend):
        x = xp.asarray(np.full((4096,), 3.0), dtype=dtype)
        p = to_numpy(evs.ev_softmax(x))
        np.testing.assert_array_equal(p, np.full(4096, 1 / 4096, dtype=np.float32))
        x = _random_no_ties((3, 50), seed=4)
        xh = xp.asarray(x, dtype=dtype)
        xr = to_numpy(xh).astype(np.float64)  # the rounded inputs, in float64
        p = to_numpy(evs.ev_softmax(xh))
        np.testing.assert_allclose(p, ref.ev_softmax(xr), atol=4e-3)


def test_integer_input_promoted_to_default_float(xp):
    x = xp.asarray(np.array([[1, 3, 2], [0, 0, 5]]))
    info = xp.__array_namespace_info__()
    default = info.default_dtypes()["real floating"]
    out = evs.ev_softmax(x)
    assert out.dtype == default
    np.testing.assert_allclose(
        to_numpy(out), ref.ev_softmax(np.array([[1, 3, 2], [0, 0, 5]])), rtol=1e-6
    )
    assert evs.log_ev_softmax(x).dtype == default
    assert evs.ev_softmax_support(x).dtype == xp.bool


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_bool_input_raises_type_error_naming_dtype(xp, func):
    with pytest.raises(TypeError, match="bool"):
        func(xp.asarray(np.array([True, False])))


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_complex_input_raises_type_error_naming_dtype(xp, backend, func):
    if not hasattr(xp, "complex64"):
        pytest.skip(f"{backend} has no complex dtype")
    with pytest.raises(TypeError, match="complex"):
        func(xp.asarray(np.array([1 + 1j, 2.0]), dtype=xp.complex64))


# --- shapes ------------------------------------------------------------------


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_out_of_range_axis_raises(xp, func):
    x = _asarray(xp, np.zeros((2, 3)))
    for axis in (2, -3, 10):
        with pytest.raises(ValueError, match="axis"):
            func(x, axis=axis)
    with pytest.raises(np.exceptions.AxisError):
        func(x, axis=2)


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_zero_dimensional_input_raises(xp, func):
    with pytest.raises(ValueError, match="0-d"):
        func(xp.asarray(1.5, dtype=xp.float64))


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4), (2, 0, 3)])
@pytest.mark.parametrize("func", ALL_FUNCS)
def test_empty_input_gives_empty_output(xp, func, shape):
    x = xp.asarray(np.zeros(shape), dtype=xp.float32)
    out = func(x, axis=-1)
    assert tuple(out.shape) == shape
    assert out.dtype == (xp.bool if func is evs.ev_softmax_support else xp.float32)


def test_negative_axis_equals_positive(xp):
    x = _random_no_ties((3, 4, 5), seed=9)
    for func in ALL_FUNCS:
        a = to_numpy(func(_asarray(xp, x), axis=-2))
        b = to_numpy(func(_asarray(xp, np.swapaxes(x, 1, 2)), axis=-1))
        np.testing.assert_array_equal(a, np.swapaxes(b, 1, 2))


def test_axis_must_be_an_integer(xp):
    with pytest.raises(TypeError, match="axis"):
        evs.ev_softmax(_asarray(xp, [1.0, 2.0]), axis=0.5)


def test_non_array_input_raises(xp):
    with pytest.raises(TypeError):
        evs.ev_softmax([1.0, 2.0], xp=xp)


# --- purity ------------------------------------------------------------------


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_inputs_are_not_modified_and_output_is_new(xp, func):
    x_np = np.array([[1.0, -np.inf, 2.0, 0.5]])
    x = _asarray(xp, x_np)
    where = xp.asarray(np.array([True, True, True, False]))
    out = func(x, where=where)
    np.testing.assert_array_equal(to_numpy(x), x_np)
    np.testing.assert_array_equal(to_numpy(where), [True, True, True, False])
    assert out is not x


def test_result_on_input_device(xp):
    from array_api_compat import device

    x = _asarray(xp, [0.4, 1.4, -0.8])
    for func in ALL_FUNCS:
        assert device(func(x)) == device(x)


def test_explicit_namespace_argument(xp):
    x = _asarray(xp, [0.4, 1.4, -0.8])
    np.testing.assert_array_equal(to_numpy(evs.ev_softmax(x, xp=xp)), to_numpy(evs.ev_softmax(x)))


def test_thread_safety(xp):
    from concurrent.futures import ThreadPoolExecutor

    xs = [_random_no_ties((4, 16), seed=s) for s in range(8)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda a: to_numpy(evs.ev_softmax(_asarray(xp, a))), xs * 3))
    for a, out in zip(xs * 3, outs, strict=False):
        np.testing.assert_allclose(out, ref.ev_softmax(a), rtol=1e-12)


@pytest.mark.parametrize("value", [0.0, 1e30, -1e30])
def test_constant_row_log_form_is_minus_log_length(xp, value):
    x = xp.asarray(np.full((3, 10), value), dtype=xp.float64)
    np.testing.assert_allclose(to_numpy(evs.log_ev_softmax(x)), np.full((3, 10), -math.log(10)))
