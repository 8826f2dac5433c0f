"""Hypothesis properties of ev-softmax (paper Table 1 / Appendix C) on every backend."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import evsoftmax as evs

from . import reference as ref
from .backends import to_numpy

finite = st.floats(-30, 30, allow_nan=False, allow_infinity=False, width=64)
rows = arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 12)), elements=finite)
GAP = 1e-6  # keep entries away from their row mean so rounding cannot flip the support


def _p(xp, x, **kwargs):
    return to_numpy(evs.ev_softmax(xp.asarray(x), **kwargs))


@given(rows)
def test_sums_to_one_and_nonnegative(xp, x):
    p = _p(xp, x)
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)


@given(rows)
def test_support_is_valid_entries_at_or_above_mean(xp, x):
    assume(ref.min_gap_to_mean(x) > GAP)
    s = to_numpy(evs.ev_softmax_support(xp.asarray(x)))
    np.testing.assert_array_equal(s, x >= x.mean(-1, keepdims=True))
    np.testing.assert_array_equal(_p(xp, x) > 0, s)


@given(rows, st.floats(-100, 100))
def test_translation_invariance(xp, x, c):
    assume(ref.min_gap_to_mean(x) > GAP)
    np.testing.assert_allclose(_p(xp, x + c), _p(xp, x), rtol=1e-9, atol=1e-12)


@given(rows, st.randoms(use_true_random=False))
def test_permutation_equivariance(xp, x, rnd):
    perm = list(range(x.shape[-1]))
    rnd.shuffle(perm)
    np.testing.assert_allclose(_p(xp, x[:, perm]), _p(xp, x)[:, perm], rtol=1e-12, atol=0)


@given(rows)
def test_monotonic(xp, x):
    # Larger scores never get smaller probabilities within a row.
    p = _p(xp, x)
    order = np.argsort(x, axis=-1, kind="stable")
    assert (np.diff(np.take_along_axis(p, order, -1), axis=-1) >= -1e-15).all()


@given(rows)
def test_matches_reference(xp, x):
    assume(ref.min_gap_to_mean(x) > GAP)
    for eps in (0.0, 1e-3):
        np.testing.assert_allclose(_p(xp, x, epsilon=eps), ref.ev_softmax(x, eps=eps), rtol=1e-10)


@given(rows)
def test_epsilon_to_zero_converges(xp, x):
    assume(ref.min_gap_to_mean(x) > GAP)
    p0 = _p(xp, x)
    errors = [np.abs(_p(xp, x, epsilon=e) - p0).max() for e in (1e-1, 1e-3, 1e-5, 1e-7)]
    assert all(b <= a + 1e-15 for a, b in itertools.pairwise(errors))
    assert errors[-1] <= 1e-6


@given(rows)
def test_log_form_consistent(xp, x):
    assume(ref.min_gap_to_mean(x) > GAP)
    for eps in (0.0, 1e-6):
        with np.errstate(divide="ignore"):
            expected = np.log(ref.ev_softmax(x, eps=eps))
        got = to_numpy(evs.log_ev_softmax(xp.asarray(x), epsilon=eps))
        finite_ = np.isfinite(expected)
        np.testing.assert_array_equal(np.isfinite(got), finite_)
        np.testing.assert_allclose(got[finite_], expected[finite_], rtol=1e-9, atol=1e-9)
