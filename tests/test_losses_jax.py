"""JAX derivatives of the losses, jit behaviour of target checks, and paper Eq. 12."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import evsoftmax as evs  # noqa: E402

from . import reference  # noqa: E402
from .jax_helpers import jax_x64_enabled  # noqa: E402

RNG = np.random.default_rng(5)
with jax_x64_enabled():  # float64 arrays, made at import
    LOGITS = jnp.asarray(RNG.normal(scale=2.0, size=(4, 6)))
    TARGET = jnp.asarray([0, 5, 2, 2])
LOSSES = {
    "nll": evs.ev_softmax_nll_loss,
    "sparsemax": evs.sparsemax_loss,
    "entmax15": evs.entmax15_loss,
}


@pytest.mark.parametrize("name", LOSSES)
def test_check_grads(name):
    loss = LOSSES[name]
    # check_grads also feeds NumPy arrays; the target is JAX: convert to one namespace.
    check_grads(lambda x: loss(jnp.asarray(x), TARGET), (LOGITS,), order=1, modes=("fwd", "rev"))


def test_check_grads_kl():
    q = jax.nn.softmax(jnp.asarray(RNG.normal(size=(4, 6))), axis=-1)
    check_grads(
        lambda x: evs.ev_softmax_kl_div(jnp.asarray(x), q, epsilon=1e-3), (LOGITS,), order=1
    )


@pytest.mark.parametrize("name", LOSSES)
def test_jit_matches_eager_and_marks_bad_targets_nan(name):
    fn = LOSSES[name]
    np.testing.assert_allclose(jax.jit(fn)(LOGITS, TARGET), fn(LOGITS, TARGET), rtol=1e-12)
    bad = jnp.asarray([0, 6, 2, 2])
    with pytest.raises(ValueError, match="class indices"):
        fn(LOGITS, bad)
    per_position = np.asarray(jax.jit(partial(fn, reduction="none"))(LOGITS, bad))
    assert np.isnan(per_position[1])
    assert np.isfinite(per_position[[0, 2, 3]]).all()


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_fenchel_young_gradient(name):
    probs = {"sparsemax": evs.sparsemax, "entmax15": evs.entmax15}[name]
    grad = jax.grad(LOSSES[name])(LOGITS, TARGET)
    np.testing.assert_allclose(grad, (probs(LOGITS) - jax.nn.one_hot(TARGET, 6)) / 4, atol=1e-12)


def test_eq_12():
    """Paper Eq. 12: grad of -log p_eps[y] -> p - e_y (p = ev-softmax), monotonically in eps."""
    target = jnp.argmin(LOGITS, axis=-1)  # off the support: the hardest case
    expected = reference.ev_softmax(np.asarray(LOGITS)) - np.eye(6)[np.asarray(target)]
    errors = []
    for eps in (1e-2, 1e-4, 1e-6):
        grad = jax.grad(partial(evs.ev_softmax_nll_loss, epsilon=eps, reduction="sum"))(
            LOGITS, target
        )
        errors.append(float(np.abs(grad - expected).max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5
