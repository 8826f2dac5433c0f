"""``evsoftmax.integrations.equinox``: Equinox layers with the inference-mode ε convention."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from . import attention_reference
from .backends import selected
from .jax_helpers import rows_away_from_ties
from .reference import ev_softmax as ref_ev_softmax
from .reference import log_ev_softmax as ref_log_ev_softmax

if "jax" not in selected():
    pytest.skip("runs in the JAX test session", allow_module_level=True)
eqx = pytest.importorskip("equinox")
jax = pytest.importorskip("jax")
jnp = jax.numpy

from evsoftmax.integrations import equinox as evs_eqx  # noqa: E402

X = rows_away_from_ties((4, 7), seed=5)
EPS = 0.1


class _Head(eqx.Module):
    linear: eqx.nn.Linear
    norm: evs_eqx.LogEvSoftmax

    def __init__(self, key):
        self.linear = eqx.nn.Linear(7, 5, key=key)
        self.norm = evs_eqx.LogEvSoftmax(epsilon=EPS)

    def __call__(self, x):
        return self.norm(self.linear(x))


def test_layer_trains_with_epsilon_and_evaluates_sparse():
    layer = evs_eqx.EvSoftmax(epsilon=EPS)
    x = jnp.asarray(X, jnp.float32)
    np.testing.assert_allclose(layer(x), ref_ev_softmax(X, eps=EPS), rtol=1e-5, atol=1e-7)
    evaluating = eqx.nn.inference_mode(layer)
    assert evaluating.inference and not layer.inference
    np.testing.assert_allclose(evaluating(x), ref_ev_softmax(X), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        evaluating(x, inference=False), ref_ev_softmax(X, eps=EPS), rtol=1e-5, atol=1e-7
    )


def test_inference_mode_reaches_nested_layers_under_filter_jit():
    model = _Head(jax.random.key(0))
    x = jnp.asarray(X, jnp.float32)
    scores = np.asarray(jax.vmap(model.linear)(x), np.float64)
    forward = eqx.filter_jit(lambda m, v: jax.vmap(m)(v))
    np.testing.assert_allclose(
        forward(model, x), ref_log_ev_softmax(scores, eps=EPS), rtol=1e-5, atol=1e-5
    )
    out = np.asarray(forward(eqx.nn.inference_mode(model), x))
    expected = ref_log_ev_softmax(scores)
    assert np.array_equal(np.isneginf(out), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-5, atol=1e-5)


def test_gradient_is_the_closed_form_jacobian():
    layer = evs_eqx.EvSoftmax(axis=0, epsilon=EPS)
    c = np.random.default_rng(2).standard_normal(X.T.shape)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(layer(v) * c)))(jnp.asarray(X.T))
    p = ref_ev_softmax(X.T, axis=0, eps=EPS)
    expected = p * (c - (p * c).sum(axis=0, keepdims=True))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_training_step_gradients_are_finite():
    model = _Head(jax.random.key(1))
    x, y = jnp.asarray(X, jnp.float32), jnp.array([0, 1, 2, 3])

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def loss(m):
        return -jnp.mean(jax.vmap(m)(x)[jnp.arange(4), y])

    value, grads = loss(model)
    assert np.isfinite(value)
    assert (
        np.all(np.isfinite(grads.linear.weight)) and float(jnp.abs(grads.linear.weight).sum()) > 0
    )


def test_where_mask_and_epsilon_validation():
    layer = evs_eqx.EvSoftmax(inference=True)
    mask = np.array([True, False, True, True, False, True, True])
    out = layer(jnp.asarray(X), where=jnp.asarray(mask))
    np.testing.assert_allclose(out, ref_ev_softmax(X, where=mask), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="epsilon"):
        evs_eqx.EvSoftmax(epsilon=float("nan"))


def test_docstring_examples_run():
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(evs_eqx, globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def _attention_reference(layer, query, kv, mask=None, eps=0.0):
    """The layer's projections, dense float64 ev-attention per head, then its output."""
    heads = [
        np.asarray(jax.vmap(p)(x), np.float64).reshape(x.shape[0], layer.num_heads, -1)
        for p, x in ((layer.query_proj, query), (layer.key_proj, kv), (layer.value_proj, kv))
    ]
    q, k, v = (np.swapaxes(h, 0, 1) for h in heads)
    out, _ = attention_reference.ev_attention(q, k, v, mask, eps=eps)
    out = np.swapaxes(out, 0, 1).reshape(query.shape[0], -1)
    return np.asarray(jax.vmap(layer.output_proj)(jnp.asarray(out, jnp.float32)))


def test_multihead_attention_matches_the_reference_in_both_modes_and_with_masks():
    inner = eqx.nn.MultiheadAttention(2, 8, key=jax.random.key(4))
    layer = evs_eqx.EvMultiheadAttention(inner, epsilon=EPS)
    rng = np.random.default_rng(6)
    query = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
    kv = jnp.asarray(rng.standard_normal((7, 8)), jnp.float32)
    mask = rng.random((5, 7)) > 0.3
    mask[2] = False  # a query with no valid key: zeros before the output projection
    per_head = np.stack([mask, ~mask])
    per_head[:, :, 0] = True
    forward = eqx.filter_jit(lambda m, q, kv, mask: m(q, kv, kv, mask))
    for m in (None, mask, per_head):
        jm = None if m is None else jnp.asarray(m)
        np.testing.assert_allclose(
            forward(layer, query, kv, jm),
            _attention_reference(inner, query, kv, m, eps=EPS),
            rtol=1e-4,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            forward(eqx.nn.inference_mode(layer), query, kv, jm),
            _attention_reference(inner, query, kv, m),
            rtol=1e-4,
            atol=1e-5,
        )


def test_multihead_attention_validates_its_arguments():
    with pytest.raises(TypeError, match="attention"):
        evs_eqx.EvMultiheadAttention(eqx.nn.Linear(2, 2, key=jax.random.key(0)))
    with pytest.raises(ValueError, match="dropout"):
        evs_eqx.EvMultiheadAttention(
            eqx.nn.MultiheadAttention(2, 8, dropout_p=0.1, key=jax.random.key(0))
        )
    with pytest.raises(ValueError, match="epsilon"):
        evs_eqx.EvMultiheadAttention(eqx.nn.MultiheadAttention(2, 8, key=jax.random.key(0)), -1.0)
    layer = evs_eqx.EvMultiheadAttention(eqx.nn.MultiheadAttention(2, 8, key=jax.random.key(0)))
    with pytest.raises(ValueError, match="equal length"):
        layer(jnp.ones((3, 8)), jnp.ones((4, 8)), jnp.ones((5, 8)))
