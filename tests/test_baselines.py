"""softmax, log_softmax, sparsemax, entmax15 and entmax_bisect on every backend.

Expected values come from the float64 references in ``reference_baselines``
(written from each map's definition) or from optimality conditions.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

import evsoftmax as evs

from . import reference_baselines as ref
from .backends import to_numpy

RNG = np.random.default_rng(20211206)

# name -> (library function, float64 reference, value of an excluded entry)
NORMALIZERS = {
    "softmax": (evs.softmax, ref.softmax, 0.0),
    "log_softmax": (evs.log_softmax, ref.log_softmax, -np.inf),
    "sparsemax": (evs.sparsemax, ref.sparsemax, 0.0),
    "entmax15": (evs.entmax15, partial(ref.entmax, alpha=1.5), 0.0),
    "entmax_bisect": (
        partial(evs.entmax_bisect, alpha=1.25),
        partial(ref.entmax, alpha=1.25),
        0.0,
    ),
}
PROBABILITY_MAPS = [n for n in NORMALIZERS if n != "log_softmax"]
SHAPE = (4, 7)  # one shape for most tests: JAX compiles each function once per shape


def scores(*shape: int, scale: float = 1.5) -> np.ndarray:
    return RNG.normal(scale=scale, size=shape or SHAPE)


def run(name: str, xp, x: np.ndarray, **kwargs) -> np.ndarray:
    fn = NORMALIZERS[name][0]
    return to_numpy(fn(xp.asarray(x), **kwargs))


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("axis", [-3, 1, -1])
def test_matches_reference(xp, name, axis):
    x = scores(3, 4, 5)
    arr = xp.asarray(x)
    got = to_numpy(NORMALIZERS[name][0](arr, axis=axis))
    np.testing.assert_allclose(got, NORMALIZERS[name][1](x, axis=axis), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(to_numpy(arr), x)  # the input is untouched
    if name in PROBABILITY_MAPS:
        assert (got >= 0).all()
        np.testing.assert_allclose(got.sum(axis=axis), 1.0, rtol=1e-12)


def test_third_alpha_matches_reference(xp):
    x = scores(scale=3.0)
    got = to_numpy(evs.entmax_bisect(xp.asarray(x), alpha=3.0))
    np.testing.assert_allclose(got, ref.entmax(x, alpha=3.0), atol=1e-12)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_where_mask_and_neg_inf(xp, name):
    x = scores()
    where = RNG.random(SHAPE) < 0.6
    where[:, 0] = True
    where[3] = False  # a fully masked row
    expected = NORMALIZERS[name][1](x, where=where)
    got = run(name, xp, x, where=xp.asarray(where))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert (got[~where] == NORMALIZERS[name][2]).all()
    # -inf entries behave exactly like where=False entries.
    np.testing.assert_array_equal(run(name, xp, np.where(where, x, -np.inf)), got)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_broadcast_where(xp, name):
    x = scores()
    where = np.array([True, True, False, True, False, True, True])
    expected = NORMALIZERS[name][1](x, where=where)
    np.testing.assert_allclose(run(name, xp, x, where=xp.asarray(where)), expected, atol=1e-12)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_special_rows(xp, name):
    """NaN and +inf rows are NaN, a row of -inf is excluded; other rows are unaffected."""
    x = scores()
    x[0, 2] = np.nan
    x[1, 4] = np.inf
    x[1, 5] = -np.inf
    x[2] = -np.inf
    got = run(name, xp, x)
    assert np.isnan(got[:2]).all()
    assert (got[2] == NORMALIZERS[name][2]).all()
    np.testing.assert_allclose(got[3], NORMALIZERS[name][1](x[3]), atol=1e-12)


def test_nan_under_mask_is_ignored(xp):
    x = np.array([[np.nan, 1.0, 0.0]])
    got = to_numpy(evs.sparsemax(xp.asarray(x), where=xp.asarray([False, True, True])))
    np.testing.assert_allclose(got, [[0.0, 1.0, 0.0]])


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_low_precision_dtypes(xp, name, dtype):
    if not hasattr(xp, dtype):
        pytest.skip(f"{xp.__name__} has no {dtype}")
    arr = xp.asarray(scores(), dtype=getattr(xp, dtype))
    out = NORMALIZERS[name][0](arr)
    assert out.dtype == getattr(xp, dtype)
    tol = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 6e-2}[dtype]
    expected = NORMALIZERS[name][1](to_numpy(arr))
    np.testing.assert_allclose(to_numpy(out), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_integer_input_is_promoted(xp, name):
    out = NORMALIZERS[name][0](xp.asarray([[0, 1, 3]]))
    assert xp.isdtype(out.dtype, "real floating")
    expected = NORMALIZERS[name][1](np.array([[0.0, 1.0, 3.0]]))
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-6)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_bool_and_complex_rejected(xp, name):
    fn = NORMALIZERS[name][0]
    with pytest.raises(TypeError, match="bool"):
        fn(xp.asarray([True, False]))
    with pytest.raises(TypeError, match="complex"):
        fn(xp.asarray([1.0 + 0j, 2.0], dtype=xp.complex128))


@pytest.mark.parametrize("name", NORMALIZERS)
def test_shape_errors(xp, name):
    fn = NORMALIZERS[name][0]
    with pytest.raises(ValueError, match="0-d"):
        fn(xp.asarray(1.0))
    with pytest.raises(ValueError, match="axis"):
        fn(xp.asarray([[1.0, 2.0]]), axis=2)
    with pytest.raises(ValueError, match="does not broadcast"):
        fn(xp.asarray([[1.0, 2.0]]), where=xp.asarray([True, False, True]))


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("shape", [(3, 0), (0, 4)])
def test_empty(xp, name, shape):
    out = NORMALIZERS[name][0](xp.zeros(shape, dtype=xp.float64))
    assert tuple(out.shape) == shape
    assert out.dtype == xp.float64


@pytest.mark.parametrize("name", PROBABILITY_MAPS)
def test_constant_rows_are_uniform(xp, name):
    x = np.repeat(np.array([[0.0], [-1e300], [1e300], [7.25]]), SHAPE[1], axis=1)
    np.testing.assert_allclose(run(name, xp, x), 1 / SHAPE[1], rtol=1e-12)


@pytest.mark.parametrize("name", PROBABILITY_MAPS)
def test_translation_invariant_and_permutation_equivariant(xp, name):
    x = scores()
    perm = RNG.permutation(SHAPE[1])
    base = run(name, xp, x)
    np.testing.assert_allclose(run(name, xp, x + 123.5), base, atol=1e-10)
    np.testing.assert_allclose(run(name, xp, x[:, perm]), base[:, perm], atol=1e-12)


def test_sparsemax_kkt(xp):
    """KKT of min ||p - z||^2 on the simplex: p = z - tau on the support, z <= tau off it."""
    x = scores()
    p = run("sparsemax", xp, x)
    for z, q in zip(x, p, strict=True):
        support = q > 0
        tau = (z[support] - q[support]).mean()
        np.testing.assert_allclose(z[support] - q[support], tau, atol=1e-12)
        assert (z[~support] <= tau + 1e-12).all()
        assert abs(q.sum() - 1) < 1e-12


def test_entmax15_optimality(xp):
    """1.5-entmax: sqrt(p) = z/2 - tau on the support, z/2 <= tau off it."""
    x = scores()
    p = run("entmax15", xp, x)
    for z, q in zip(x, p, strict=True):
        support = q > 0
        tau = (z[support] / 2 - np.sqrt(q[support])).mean()
        np.testing.assert_allclose(z[support] / 2 - np.sqrt(q[support]), tau, atol=1e-12)
        assert (z[~support] / 2 <= tau + 1e-12).all()


def test_worked_example(xp):
    v = xp.asarray([0.4, 1.4, -0.8])
    # Fig. 1 of Chen et al.: softmax ~ (0.25, 0.67, 0.07), sparsemax = (0, 1, 0).
    np.testing.assert_allclose(to_numpy(evs.softmax(v)), [0.25, 0.67, 0.07], atol=1e-2)
    np.testing.assert_allclose(to_numpy(evs.sparsemax(v)), [0.0, 1.0, 0.0], atol=1e-12)


def test_bisect_alpha_2_is_sparsemax(xp):
    x = scores()
    got = to_numpy(evs.entmax_bisect(xp.asarray(x), alpha=2.0))
    np.testing.assert_allclose(got, run("sparsemax", xp, x), atol=1e-12)


def test_bisect_alpha_15_is_entmax15(xp):
    x = scores()
    got = to_numpy(evs.entmax_bisect(xp.asarray(x), alpha=1.5))
    np.testing.assert_allclose(got, run("entmax15", xp, x), atol=1e-5)


def test_bisect_alpha_to_one_tends_to_softmax(xp):
    x = scores()
    target = ref.softmax(x)
    errors = [
        np.abs(to_numpy(evs.entmax_bisect(xp.asarray(x), alpha=a)) - target).max()
        for a in (1.1, 1.01, 1.001)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-3


def test_bisect_n_iter_controls_accuracy(xp):
    x = scores()
    exact = ref.entmax(x, alpha=1.25)
    coarse, fine = (
        np.abs(to_numpy(evs.entmax_bisect(xp.asarray(x), alpha=1.25, n_iter=n)) - exact).max()
        for n in (5, 40)
    )
    assert fine < coarse
    assert fine < 1e-9


@pytest.mark.parametrize("alpha", [1.0, 0.5, float("nan"), float("inf"), True, "2"])
def test_bisect_rejects_bad_alpha(xp, alpha):
    with pytest.raises(ValueError, match="alpha"):
        evs.entmax_bisect(xp.asarray([1.0, 2.0]), alpha=alpha)


def test_bisect_rejects_bad_n_iter(xp):
    x = xp.asarray([1.0, 2.0])
    with pytest.raises(ValueError, match="n_iter"):
        evs.entmax_bisect(x, n_iter=0)
    with pytest.raises(TypeError, match="n_iter"):
        evs.entmax_bisect(x, n_iter=2.5)
    with pytest.raises(TypeError, match="n_iter"):
        evs.entmax_bisect(x, n_iter=True)


def test_sparsity_levels_on_a_bimodal_row(xp):
    """ev-softmax keeps both modes and drops the rest; sparsemax drops the weaker mode."""
    v = xp.asarray([2.4, 0.1, 0.0, 1.2, -0.3, 0.05])
    assert (to_numpy(evs.ev_softmax(v)) > 0).tolist() == [True, False, False, True, False, False]
    assert (to_numpy(evs.sparsemax(v)) > 0).tolist() == [True, False, False, False, False, False]
    assert (to_numpy(evs.softmax(v)) > 0).all()
