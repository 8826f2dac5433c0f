"""``evsoftmax.integrations.flax``: nnx modules with the train/eval ε convention (JAX session)."""

from __future__ import annotations

import doctest
import functools
import subprocess
import sys

import numpy as np
import pytest

from . import attention_reference
from .backends import selected
from .jax_helpers import rows_away_from_ties
from .reference import ev_softmax as ref_ev_softmax
from .reference import log_ev_softmax as ref_log_ev_softmax

if "jax" not in selected():
    pytest.skip("runs in the JAX test session", allow_module_level=True)
nnx = pytest.importorskip("flax.nnx")
jax = pytest.importorskip("jax")
jnp = jax.numpy

from evsoftmax.integrations import flax as evs_flax  # noqa: E402

X = rows_away_from_ties((4, 7), seed=3)
EPS = 0.1


class _Head(nnx.Module):
    """A linear layer followed by ev-softmax: the shape of a classifier head."""

    def __init__(self, rngs: nnx.Rngs, log: bool = False):
        self.linear = nnx.Linear(7, 5, rngs=rngs)
        self.norm = (evs_flax.LogEvSoftmax if log else evs_flax.EvSoftmax)(epsilon=EPS)

    def __call__(self, x):
        return self.norm(self.linear(x))


def test_module_trains_with_epsilon_and_evaluates_sparse():
    layer = evs_flax.EvSoftmax(epsilon=EPS)
    x = jnp.asarray(X, jnp.float32)
    np.testing.assert_allclose(layer(x), ref_ev_softmax(X, eps=EPS), rtol=1e-5, atol=1e-7)
    layer.eval()
    assert layer.deterministic
    np.testing.assert_allclose(layer(x), ref_ev_softmax(X), rtol=1e-5, atol=1e-7)
    # The call argument overrides the attribute for one call.
    np.testing.assert_allclose(
        layer(x, deterministic=False), ref_ev_softmax(X, eps=EPS), rtol=1e-5, atol=1e-7
    )
    layer.train()
    assert not layer.deterministic


def test_train_eval_switch_reaches_nested_modules_under_nnx_jit():
    model = _Head(nnx.Rngs(0), log=True)
    x = jnp.asarray(X, jnp.float32)
    scores = np.asarray(model.linear(x), np.float64)
    forward = nnx.jit(lambda m, v: m(v))
    np.testing.assert_allclose(
        forward(model, x), ref_log_ev_softmax(scores, eps=EPS), rtol=1e-5, atol=1e-5
    )
    model.eval()
    out = np.asarray(forward(model, x))
    expected = ref_log_ev_softmax(scores)
    assert np.array_equal(np.isneginf(out), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-5, atol=1e-5)


def test_gradient_is_the_closed_form_jacobian():
    # d/dx sum(c * p) = p * (c - <p, c>) for every epsilon (paper Eq. 9).
    layer = evs_flax.EvSoftmax(axis=0, epsilon=EPS)
    c = np.random.default_rng(1).standard_normal(X.T.shape)
    grad = nnx.grad(lambda m, v: jnp.sum(m(v) * c), argnums=1)(layer, jnp.asarray(X.T))
    p = ref_ev_softmax(X.T, axis=0, eps=EPS)
    expected = p * (c - (p * c).sum(axis=0, keepdims=True))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_training_step_updates_parameters():
    model = _Head(nnx.Rngs(0), log=True)
    x, y = jnp.asarray(X, jnp.float32), jnp.array([0, 1, 2, 3])

    @nnx.jit
    def loss_and_grad(m):
        return nnx.value_and_grad(lambda m: -jnp.mean(m(x)[jnp.arange(4), y]))(m)

    loss, grads = loss_and_grad(model)
    assert np.isfinite(loss)  # epsilon > 0 while training: a finite log-likelihood
    assert np.all(np.isfinite(grads["linear"]["kernel"].get_value()))
    assert float(jnp.abs(grads["linear"]["kernel"].get_value()).sum()) > 0


def test_where_mask_and_epsilon_validation():
    layer = evs_flax.EvSoftmax(deterministic=True)
    mask = np.array([True, True, False, True, True, False, True])
    out = layer(jnp.asarray(X), where=jnp.asarray(mask))
    np.testing.assert_allclose(out, ref_ev_softmax(X, where=mask), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="epsilon"):
        evs_flax.EvSoftmax(epsilon=-1.0)


def test_docstring_examples_run():
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(evs_flax, globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_integrations_package_imports_no_framework():
    code = (
        "import sys, evsoftmax.integrations; "
        "print(sorted({'jax', 'flax', 'equinox'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _heads_reference(q, k, v, mask=None, is_causal=False, eps=0.0):
    """Dense float64 ev-attention of ``[batch, length, heads, depth]`` arrays, and its weights."""
    q, k, v = (np.swapaxes(np.asarray(a, np.float64), -3, -2) for a in (q, k, v))
    probs = attention_reference.probabilities(q, k, mask, is_causal, eps=eps)
    return np.swapaxes(probs @ v, -3, -2), probs


def test_attention_fn_matches_the_dense_reference_with_bias_mask_and_causal():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    k = rng.standard_normal((2, 6, 3, 4)).astype(np.float32)
    v = rng.standard_normal((2, 6, 3, 2)).astype(np.float32)
    mask = rng.random((2, 1, 5, 6)) > 0.3
    mask[0, 0, 1] = False  # a query with no valid key: zeros
    bias = rng.standard_normal((1, 3, 5, 6)).astype(np.float32)
    expected_bias = np.where(mask, bias, -np.inf)
    for kwargs, ref_mask in (
        ({}, None),
        ({"mask": jnp.asarray(mask)}, mask),
        ({"bias": jnp.asarray(bias), "mask": jnp.asarray(mask)}, expected_bias),
        ({"is_causal": True}, None),
    ):
        causal = kwargs.get("is_causal", False)
        out = evs_flax.ev_dot_product_attention(
            jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), **kwargs
        )
        expected, _ = _heads_reference(q, k, v, ref_mask, causal)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5, err_msg=str(kwargs))
    assert out.shape == (2, 5, 3, 2)


def test_multi_head_attention_layer_uses_ev_attention_under_jit_with_epsilon():
    layer = nnx.MultiHeadAttention(
        num_heads=2,
        in_features=8,
        decode=False,
        rngs=nnx.Rngs(0),
        attention_fn=functools.partial(evs_flax.ev_dot_product_attention, epsilon=EPS),
    )
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 5, 8)), jnp.float32)
    heads = [np.asarray(p(x)) for p in (layer.query, layer.key, layer.value)]
    expected, _ = _heads_reference(*heads, eps=EPS)
    expected = np.asarray(layer.out(jnp.asarray(expected, jnp.float32)))
    np.testing.assert_allclose(nnx.jit(lambda m, v: m(v))(layer, x), expected, rtol=1e-4, atol=1e-5)


def test_attention_fn_gradient_with_respect_to_values_is_the_weights():
    # o = P v, so d/dv sum(c * o) = P^T c with P the float64 reference weights.
    rng = np.random.default_rng(11)
    q, k = rng.standard_normal((2, 1, 4, 2, 3)).astype(np.float32)
    v = rng.standard_normal((1, 4, 2, 2)).astype(np.float32)
    c = rng.standard_normal((1, 4, 2, 2))
    grad = jax.jit(
        jax.grad(
            lambda v: jnp.sum(
                evs_flax.ev_dot_product_attention(jnp.asarray(q), jnp.asarray(k), v) * c
            )
        )
    )(jnp.asarray(v))
    _, probs = _heads_reference(q, k, v)
    expected = np.swapaxes(np.swapaxes(probs, -1, -2) @ np.swapaxes(c, -3, -2), -3, -2)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_attention_fn_rejects_dropout_sown_weights_and_flat_inputs():
    x = jnp.ones((1, 4, 2, 3))
    with pytest.raises(ValueError, match="dropout_rate"):
        evs_flax.ev_dot_product_attention(x, x, x, dropout_rate=0.1)
    # Deterministic dropout is no dropout: accepted.
    evs_flax.ev_dot_product_attention(x, x, x, dropout_rate=0.1, deterministic=True)
    with pytest.raises(ValueError, match="sow_weights"):
        evs_flax.ev_dot_product_attention(x, x, x, module=object())
    with pytest.raises(ValueError, match="query"):
        evs_flax.ev_dot_product_attention(jnp.ones((4, 3)), x, x)
