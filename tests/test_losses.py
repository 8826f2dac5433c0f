"""ev_softmax_nll_loss, ev_softmax_kl_div, sparsemax_loss and entmax15_loss on every backend."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

import evsoftmax as evs

from . import reference
from . import reference_losses as ref
from .backends import to_numpy

RNG = np.random.default_rng(12)
REDUCTIONS = ["mean", "sum", "none"]

# name -> (library loss, float64 reference), both taking (logits, target, **kwargs)
CLASS_LOSSES = {
    "nll": (evs.ev_softmax_nll_loss, ref.nll),
    "nll_eps0.1": (
        partial(evs.ev_softmax_nll_loss, epsilon=0.1),
        partial(ref.nll, eps=0.1),
    ),
    "sparsemax": (evs.sparsemax_loss, partial(ref.fenchel_young, alpha=2.0)),
    "entmax15": (evs.entmax15_loss, partial(ref.fenchel_young, alpha=1.5)),
}


def problem(n: int = 4, c: int = 5, extra: int = 3):
    """Logits (n, c, extra) with the classes on axis 1 and targets (n, extra)."""
    logits = RNG.normal(scale=2.0, size=(n, c, extra))
    target = RNG.integers(0, c, size=(n, extra))
    return logits, target


def arrays(xp, logits, target):
    return xp.asarray(logits), xp.asarray(target)


@pytest.mark.parametrize("name", CLASS_LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_losses_match_reference(xp, name, reduction):
    loss, reference_loss = CLASS_LOSSES[name]
    logits, target = problem()
    got = loss(*arrays(xp, logits, target), axis=1, reduction=reduction)
    expected = reference_loss(logits, target, axis=1, reduction=reduction)
    assert tuple(got.shape) == np.shape(expected)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_last_axis_and_ignore_index(xp, name):
    loss, reference_loss = CLASS_LOSSES[name]
    logits, target = problem(6, 4, 1)
    logits, target = logits[..., 0], target[..., 0]
    target[[1, 4]] = -100
    for reduction in REDUCTIONS:
        got = loss(*arrays(xp, logits, target), ignore_index=-100, reduction=reduction)
        expected = reference_loss(logits, target, ignore_index=-100, reduction=reduction)
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-9, atol=1e-12)
    none = to_numpy(loss(*arrays(xp, logits, target), ignore_index=-100, reduction="none"))
    assert (none[[1, 4]] == 0).all()
    mean = to_numpy(loss(*arrays(xp, logits, target), ignore_index=-100))
    np.testing.assert_allclose(mean, none.sum() / 4, rtol=1e-12)


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_all_ignored(xp, name):
    loss = CLASS_LOSSES[name][0]
    logits, target = xp.asarray(RNG.normal(size=(2, 3))), xp.asarray([7, 7])
    assert np.isnan(to_numpy(loss(logits, target, ignore_index=7)))
    assert to_numpy(loss(logits, target, ignore_index=7, reduction="sum")) == 0.0


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_where_mask(xp, name):
    loss, reference_loss = CLASS_LOSSES[name]
    logits = RNG.normal(size=(4, 5))
    where = np.array([True, True, False, True, True])
    target = np.array([0, 1, 3, 4])
    got = loss(*arrays(xp, logits, target), where=xp.asarray(where), reduction="none")
    expected = reference_loss(logits, target, where=where, reduction="none")
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-9, atol=1e-12)
    # A target on an excluded class cannot be predicted: infinite loss.
    masked = loss(*arrays(xp, logits, np.array([2, 0, 0, 0])), where=xp.asarray(where))
    assert to_numpy(masked) == np.inf


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_fenchel_young_and_nll_vanish_on_confident_targets(xp, name):
    loss = CLASS_LOSSES[name][0]
    logits = xp.asarray([[0.0, 50.0, -3.0], [40.0, 0.0, 1.0]])
    got = to_numpy(loss(logits, xp.asarray([1, 0]), reduction="none"))
    np.testing.assert_allclose(got, 0.0, atol=1e-5)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_fenchel_young_is_nonnegative(xp, name):
    logits, target = problem(8, 6, 2)
    got = to_numpy(CLASS_LOSSES[name][0](*arrays(xp, logits, target), axis=1, reduction="none"))
    assert (got >= -1e-12).all()


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_float32(xp, name):
    logits, target = problem()
    got = CLASS_LOSSES[name][0](xp.asarray(logits, dtype=xp.float32), xp.asarray(target), axis=1)
    assert got.dtype == xp.float32
    expected = CLASS_LOSSES[name][1](logits.astype(np.float32), target, axis=1)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-5)


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_empty_batch(xp, name):
    loss = CLASS_LOSSES[name][0]
    logits, target = xp.zeros((0, 3), dtype=xp.float64), xp.zeros((0,), dtype=xp.int64)
    assert tuple(loss(logits, target, reduction="none").shape) == (0,)
    assert to_numpy(loss(logits, target, reduction="sum")) == 0.0
    assert np.isnan(to_numpy(loss(logits, target)))


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_invalid_targets(xp, name):
    loss = CLASS_LOSSES[name][0]
    logits = xp.asarray(RNG.normal(size=(3, 4)))
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\)"):
        loss(logits, xp.asarray([0, 4, 1]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\)"):
        loss(logits, xp.asarray([0, -1, 1]))
    with pytest.raises(TypeError, match="integer class indices"):
        loss(logits, xp.asarray([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="integer class indices"):
        loss(logits, xp.asarray([True, False, True]))
    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        loss(logits, xp.asarray([0, 1]))
    with pytest.raises(ValueError, match="reduction"):
        loss(logits, xp.asarray([0, 1, 2]), reduction="batchmean")
    with pytest.raises(TypeError, match="ignore_index"):
        loss(logits, xp.asarray([0, 1, 2]), ignore_index=True)
    with pytest.raises(TypeError, match="target must be an array"):
        loss(logits, [0, 1, 2])


def test_nll_rejects_bad_epsilon(xp):
    logits, target = xp.asarray([[0.0, 1.0]]), xp.asarray([0])
    for eps in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="epsilon"):
            evs.ev_softmax_nll_loss(logits, target, epsilon=eps)


def test_nll_with_epsilon_zero_is_infinite_off_support(xp):
    logits = xp.asarray([[0.4, 1.4, -0.8]], dtype=xp.float64)
    assert to_numpy(evs.ev_softmax_nll_loss(logits, xp.asarray([2]), epsilon=0.0)) == np.inf
    got = to_numpy(evs.ev_softmax_nll_loss(logits, xp.asarray([1]), epsilon=0.0))
    np.testing.assert_allclose(got, np.log1p(np.exp(-1.0)), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("axis", [0, -1])
def test_kl_matches_reference(xp, reduction, axis):
    logits = RNG.normal(scale=2.0, size=(4, 6))
    q = RNG.dirichlet(np.ones(4 if axis == 0 else 6), size=6 if axis == 0 else 4)
    q = q.T if axis == 0 else q
    q[0, 0] = 0.0  # 0 log 0 = 0
    got = evs.ev_softmax_kl_div(xp.asarray(logits), xp.asarray(q), axis=axis, reduction=reduction)
    expected = ref.kl(logits, q, axis=axis, reduction=reduction)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-9, atol=1e-12)


def test_kl_properties_and_errors(xp):
    logits = np.array([[0.4, 1.4, -0.8], [1.0, 2.0, 3.0]])
    p0 = reference.ev_softmax(logits)
    # KL(p || p) = 0 for epsilon = 0; masked mass is infinite.
    zero = evs.ev_softmax_kl_div(xp.asarray(logits), xp.asarray(p0), epsilon=0.0, reduction="none")
    np.testing.assert_allclose(to_numpy(zero), 0.0, atol=1e-12)
    where = xp.asarray([True, True, False])
    q = xp.asarray([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]])
    both = to_numpy(evs.ev_softmax_kl_div(xp.asarray(logits), q, where=where, reduction="none"))
    assert both[0] == np.inf
    assert np.isfinite(both[1])
    with pytest.raises(ValueError, match="target_probs must have the logits' shape"):
        evs.ev_softmax_kl_div(xp.asarray(logits), xp.asarray([0.5, 0.5, 0.0]))
    with pytest.raises(TypeError, match="target_probs"):
        evs.ev_softmax_kl_div(xp.asarray(logits), xp.asarray([[True] * 3] * 2))
    with pytest.raises(TypeError, match="target_probs must be an array"):
        evs.ev_softmax_kl_div(xp.asarray(logits), [[0.5, 0.5, 0.0]] * 2)
    with pytest.raises(ValueError, match="reduction"):
        evs.ev_softmax_kl_div(xp.asarray(logits), q, reduction="batchmean")


def test_eq_12_by_finite_differences(xp):
    """Paper Eq. 12: d(-log p_eps[y])/dv = p_eps - e_y -> p - e_y as eps -> 0, monotonically."""
    v = np.array([0.4, 1.4, -0.8, 0.9, -0.1])
    target, h = 3, 1e-6
    p = reference.ev_softmax(v)  # eps = 0
    expected = p - np.eye(5)[target]
    steps = np.vstack([v + h * np.eye(5), v - h * np.eye(5)])  # one batched call per epsilon
    errors = []
    for eps in (1e-2, 1e-4, 1e-6):
        losses = to_numpy(
            evs.ev_softmax_nll_loss(
                xp.asarray(steps), xp.asarray([target] * 10), epsilon=eps, reduction="none"
            )
        )
        grad = (losses[:5] - losses[5:]) / (2 * h)
        np.testing.assert_allclose(
            grad, reference.ev_softmax(v, eps=eps) - np.eye(5)[target], atol=1e-7
        )
        errors.append(np.abs(grad - expected).max())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5
