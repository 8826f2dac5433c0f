"""JAX derivatives of the baselines: check_grads (forward and reverse, second order), jit, vmap."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import evsoftmax as evs  # noqa: E402

from .jax_helpers import jax_x64_enabled  # noqa: E402

MAPS = {
    "softmax": evs.softmax,
    "log_softmax": evs.log_softmax,
    "sparsemax": evs.sparsemax,
    "entmax15": evs.entmax15,
    "bisect_1.25": partial(evs.entmax_bisect, alpha=1.25),
    "bisect_3": partial(evs.entmax_bisect, alpha=3.0),
}
with jax_x64_enabled():  # float64 arrays, made at import
    X = jnp.asarray(np.random.default_rng(7).normal(size=(3, 5)))
    WHERE = jnp.asarray([[True, False, True, True, True], [False] * 5, [True] * 5])


@pytest.mark.parametrize("name", MAPS)
def test_check_grads(name):
    check_grads(MAPS[name], (X,), order=2, modes=("fwd", "rev"))
    check_grads(partial(MAPS[name], axis=0), (X,), order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", MAPS)
def test_masked_gradients(name):
    fn = partial(MAPS[name], where=WHERE)
    weights = jnp.linspace(-1.0, 1.0, 5)
    grad = jax.grad(lambda x: jnp.sum(jnp.where(jnp.isfinite(fn(x)), fn(x), 0.0) * weights))(X)
    assert bool(jnp.all(grad[~WHERE] == 0))
    assert bool(jnp.all(jnp.isfinite(grad)))
    masked_rows_dropped = jnp.where(WHERE.any(axis=1, keepdims=True), X, 0.0)
    check_grads(lambda x: fn(x)[jnp.asarray([0, 2])], (masked_rows_dropped,), order=1)


@pytest.mark.parametrize("name", MAPS)
def test_jit_and_vmap_agree(name):
    fn = MAPS[name]
    np.testing.assert_allclose(jax.jit(fn)(X), fn(X), atol=1e-12)
    np.testing.assert_allclose(jax.vmap(fn)(X), fn(X), atol=1e-12)


def test_sparsemax_gradient_is_centred_on_the_support():
    g = jnp.asarray(np.random.default_rng(8).normal(size=(3, 5)))
    p, vjp = jax.vjp(evs.sparsemax, X)
    s = (p > 0).astype(X.dtype)
    expected = s * (g - (g * s).sum(-1, keepdims=True) / s.sum(-1, keepdims=True))
    np.testing.assert_allclose(vjp(g)[0], expected, atol=1e-12)


def test_entmax15_gradient_closed_form():
    g = jnp.asarray(np.random.default_rng(9).normal(size=(3, 5)))
    p, vjp = jax.vjp(evs.entmax15, X)
    s = jnp.sqrt(p)
    expected = s * g - s * (s * g).sum(-1, keepdims=True) / s.sum(-1, keepdims=True)
    np.testing.assert_allclose(vjp(g)[0], expected, atol=1e-12)


def test_bisect_under_jit_is_a_loop():
    """The bisection stays a loop under jit (not 50 unrolled steps)."""
    text = jax.jit(partial(evs.entmax_bisect, alpha=1.25)).lower(X).as_text()
    assert "while" in text
