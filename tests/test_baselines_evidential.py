"""Post-hoc evidential sparsification (Chen et al. Eqs. 4-6) and Theorem 3.1 on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import evsoftmax as evs

from . import reference
from . import reference_baselines as ref
from .backends import to_numpy

RNG = np.random.default_rng(31)


def layer(batch: tuple[int, ...], n_features: int, n_classes: int, min_gap: float = 1e-9):
    """Random features, weight and bias whose scores keep ``min_gap`` from their row mean."""
    while True:
        features = RNG.normal(size=(*batch, n_features))
        weight = RNG.normal(size=(n_features, n_classes))
        bias = RNG.normal(size=n_classes)
        if reference.min_gap_to_mean(bias + features @ weight) > min_gap:
            return features, weight, bias


def test_matches_literal_reference(xp):
    features, weight, bias = layer((3, 2), 4, 6)
    got = evs.evidential_sparsification(*(xp.asarray(a) for a in (features, weight, bias)))
    assert tuple(got.shape) == (3, 2, 6)
    expected = ref.evidential_sparsification(features, weight, bias)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("n_features", "n_classes"), [(1, 2), (5, 3), (8, 16)])
def test_theorem_3_1_equals_ev_softmax(xp, n_features, n_classes):
    """Theorem 3.1: with no score tied to its mean, the post-hoc method is ev-softmax."""
    features, weight, bias = layer((7,), n_features, n_classes)
    f, w, b = (xp.asarray(a) for a in (features, weight, bias))
    got = to_numpy(evs.evidential_sparsification(f, w, b))
    np.testing.assert_allclose(got, to_numpy(evs.ev_softmax(b + xp.matmul(f, w))), atol=1e-14)
    np.testing.assert_allclose(got, reference.ev_softmax(bias + features @ weight), atol=1e-14)
    assert ((got == 0) == ~reference.support(bias + features @ weight)).all()


def test_tie_with_the_mean_is_where_they_differ(xp):
    """A score equal to the mean has no evidential mass but is in ev-softmax's support."""
    f, w, b = xp.asarray([[0.0]]), xp.asarray([[0.0, 0.0, 0.0]]), xp.asarray([1.0, 0.0, -1.0])
    got = to_numpy(evs.evidential_sparsification(f, w, b))
    np.testing.assert_allclose(got, [[1.0, 0.0, 0.0]])
    assert to_numpy(evs.ev_softmax(b))[1] > 0


def test_vacuous_evidence_is_uniform(xp):
    f, w, b = xp.asarray([[1.0, 2.0]]), xp.ones((2, 4), dtype=xp.float64), xp.full((4,), 3.0)
    np.testing.assert_allclose(to_numpy(evs.evidential_sparsification(f, w, b)), 0.25)


def test_single_class_and_no_features(xp):
    one = evs.evidential_sparsification(xp.ones((2, 3)), xp.ones((3, 1)), xp.zeros(1))
    np.testing.assert_allclose(to_numpy(one), 1.0)
    bias = np.array([0.5, -0.2, 1.0])
    none = evs.evidential_sparsification(xp.zeros((2, 0)), xp.zeros((0, 3)), xp.asarray(bias))
    np.testing.assert_allclose(to_numpy(none), reference.ev_softmax(np.stack([bias, bias])))


def test_float32_and_empty(xp):
    features, weight, bias = layer((2,), 3, 4, min_gap=1e-3)
    f32 = [xp.asarray(a, dtype=xp.float32) for a in (features, weight, bias)]
    out = evs.evidential_sparsification(*f32)
    assert out.dtype == xp.float32
    np.testing.assert_allclose(
        to_numpy(out), ref.evidential_sparsification(features, weight, bias), atol=1e-6
    )
    empty = evs.evidential_sparsification(xp.zeros((0, 3)), xp.asarray(weight), xp.asarray(bias))
    assert tuple(empty.shape) == (0, 4)


def test_shape_and_dtype_errors(xp):
    f, w, b = xp.ones((2, 3)), xp.ones((3, 4)), xp.ones(4)
    with pytest.raises(ValueError, match="weight must be 2-d"):
        evs.evidential_sparsification(f, xp.ones(4), b)
    with pytest.raises(ValueError, match="bias must be 1-d"):
        evs.evidential_sparsification(f, w, xp.ones((1, 4)))
    with pytest.raises(ValueError, match="features must have J = 3"):
        evs.evidential_sparsification(xp.ones((2, 2)), w, b)
    with pytest.raises(ValueError, match="bias must have K = 4"):
        evs.evidential_sparsification(f, w, xp.ones(3))
    with pytest.raises(ValueError, match="0-d"):
        evs.evidential_sparsification(xp.asarray(1.0), w, b)
    with pytest.raises(TypeError, match="bool"):
        evs.evidential_sparsification(f, w, xp.asarray([True] * 4))
