"""The tangent-map primitive of the JAX adapter: values, transpose, batching, JVP, lowering."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from evsoftmax.adapters.jax.vjp import ev_softmax_vjp  # noqa: E402

from .cpu_kernels import PATHS  # noqa: E402
from .jax_helpers import jax_path  # noqa: E402


@pytest.fixture(autouse=True, scope="module", params=PATHS)
def each_path(request):
    """On the compiled kernel (an XLA FFI call on the CPU), then on the XLA expression
    (module scope: path by path; ``tests/conftest.py`` drops JAX's caches between)."""
    with jax_path(request.param) as path:
        yield path


def closed_form(p, t, axis):
    p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
    return p * (t - (p * t).sum(axis=axis, keepdims=True))


def probabilities(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    e = np.exp(rng.normal(size=shape))
    e[rng.random(shape) < 0.3] = 0.0  # sparse, as ev-softmax outputs are
    return e / np.maximum(e.sum(axis=axis, keepdims=True), 1e-300)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_values_match_the_closed_form(axis, dtype):
    p = probabilities((3, 40, 5), axis)
    t = np.random.default_rng(1).normal(size=p.shape)
    got = jax.jit(ev_softmax_vjp, static_argnums=2)(
        jnp.asarray(p, dtype), jnp.asarray(t, dtype), axis
    )
    assert got.dtype == dtype
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(got, closed_form(p, t, axis), rtol=tol, atol=tol)
    eager = ev_softmax_vjp(jnp.asarray(p), jnp.asarray(t), axis)  # outside any trace
    np.testing.assert_allclose(eager, closed_form(p, t, axis), rtol=1e-14, atol=1e-14)


def test_transpose_is_the_map_itself():
    p = jnp.asarray(probabilities((4, 9), 1))
    t = jnp.asarray(np.random.default_rng(2).normal(size=(4, 9)))
    g = jnp.asarray(np.random.default_rng(3).normal(size=(4, 9)))
    (transposed,) = jax.linear_transpose(lambda t: ev_softmax_vjp(p, t, 1), t)(g)
    np.testing.assert_allclose(transposed, closed_form(p, g, 1), rtol=1e-13, atol=1e-14)
    _, pull = jax.vjp(lambda t: ev_softmax_vjp(p, t, 1), t)
    np.testing.assert_allclose(pull(g)[0], closed_form(p, g, 1), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("in_axes", [(0, 0), (0, None), (None, 1), (1, 0)])
def test_vmap_over_either_argument(in_axes):
    p = probabilities((3, 4, 9), 2)
    t = np.random.default_rng(4).normal(size=(3, 4, 9))
    p_in = p if in_axes[0] is not None else p[0]
    t_in = t if in_axes[1] is not None else t[0]
    if in_axes[0] == 1:
        p_in = np.moveaxis(p, 0, 1)
    if in_axes[1] == 1:
        t_in = np.moveaxis(t, 0, 1)
    got = jax.vmap(lambda p, t: ev_softmax_vjp(p, t, 1), in_axes=in_axes)(
        jnp.asarray(p_in), jnp.asarray(t_in)
    )
    p_b = np.broadcast_to(p if in_axes[0] is not None else p[0], t.shape)
    t_b = np.broadcast_to(t if in_axes[1] is not None else t[0], p.shape)
    np.testing.assert_allclose(got, closed_form(p_b, t_b, 2), rtol=1e-13, atol=1e-14)


def test_derivatives_in_both_arguments():
    p = jnp.asarray(probabilities((3, 7), 1))
    t = jnp.asarray(np.random.default_rng(5).normal(size=(3, 7)))
    check_grads(lambda p, t: ev_softmax_vjp(p, t, 1), (p, t), order=2, modes=("fwd", "rev"))


def test_lowering_calls_the_kernel_only_on_its_path(each_path):
    p = jnp.zeros((2, 8))
    text = jax.jit(ev_softmax_vjp, static_argnums=2).lower(p, p, 1).as_text()
    assert ("custom_call @" in text) == (each_path == "kernel")
