"""The closed-form Jacobian (paper Eq. 9) against finite differences, in float64."""

from __future__ import annotations

import numpy as np
import pytest

import evsoftmax as evs

from . import reference as ref
from .backends import to_numpy


def _finite_difference_jvp(x, t, eps, h=1e-6, axis=-1):
    return (ref.ev_softmax(x + h * t, axis, eps) - ref.ev_softmax(x - h * t, axis, eps)) / (2 * h)


@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.5])
@pytest.mark.parametrize("axis", [0, -1])
def test_jvp_matches_finite_differences(xp, epsilon, axis):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 7))
    assert ref.min_gap_to_mean(x, axis) > 1e-3  # h * |t| is far smaller: no support flips
    t = rng.normal(size=x.shape)
    p = evs.ev_softmax(xp.asarray(x), axis=axis, epsilon=epsilon)
    got = to_numpy(evs.ev_softmax_jvp(p, xp.asarray(t), axis=axis))
    np.testing.assert_allclose(got, _finite_difference_jvp(x, t, epsilon, axis=axis), atol=1e-8)


def test_jvp_is_also_the_vjp(xp):
    # J is symmetric: <u, J v> == <J u, v>.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 9))
    u, v = rng.normal(size=x.shape), rng.normal(size=x.shape)
    p = evs.ev_softmax(xp.asarray(x))
    ju = to_numpy(evs.ev_softmax_jvp(p, xp.asarray(u)))
    jv = to_numpy(evs.ev_softmax_jvp(p, xp.asarray(v)))
    np.testing.assert_allclose((u * jv).sum(-1), (ju * v).sum(-1), rtol=1e-12)


def test_jvp_is_zero_outside_support_and_on_masked_entries(xp):
    x = np.array([[0.4, 1.4, -0.8, 3.0]])
    where = np.array([True, True, True, False])
    p = evs.ev_softmax(xp.asarray(x), where=xp.asarray(where))
    out = to_numpy(evs.ev_softmax_jvp(p, xp.asarray(np.ones((1, 4)) * 5.0)))
    np.testing.assert_array_equal(out[0, 2:], [0.0, 0.0])
    np.testing.assert_allclose(out.sum(), 0.0, atol=1e-15)


def test_jvp_shape_mismatch_raises(xp):
    p = xp.asarray(np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="shape"):
        evs.ev_softmax_jvp(p, xp.asarray(np.ones((3, 2))))


def test_jvp_dtype_and_empty(xp):
    p = xp.asarray(np.ones((2, 4)) / 4, dtype=xp.float32)
    assert evs.ev_softmax_jvp(p, p).dtype == xp.float32
    e = xp.asarray(np.zeros((0, 4)), dtype=xp.float32)
    assert tuple(evs.ev_softmax_jvp(e, e).shape) == (0, 4)
