"""JAX ev-attention: ``jit``, ``vmap`` and the custom VJP against finite differences.

Values are checked against the dense float64 reference of
``tests/attention_reference.py``; inputs keep every score clear of its row's
threshold, so finite differences never move a key across it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import evsoftmax as evs  # noqa: E402
import evsoftmax._attention as attention_module  # noqa: E402

from . import attention_reference as ref  # noqa: E402
from .test_attention import _tie_gap  # noqa: E402


def _inputs(mask_kind, is_causal, seed=0, gap=0.02):
    for attempt in range(200):
        rng = np.random.default_rng(seed + attempt)
        q = rng.normal(size=(2, 4, 3))
        k = rng.normal(size=(2, 6, 3))
        v = rng.normal(size=(2, 6, 2))
        mask = None
        if mask_kind == "bool":
            mask = rng.random((4, 6)) > 0.3
            mask[1] = False  # a fully masked query
        elif mask_kind == "float":
            mask = np.where(rng.random((2, 1, 6)) > 0.2, rng.normal(size=(2, 1, 6)), -np.inf)
        if _tie_gap(q, k, mask, is_causal) > gap:
            return q, k, v, mask
    raise AssertionError("no input clear of ties")


CASES = [("none", False), ("none", True), ("bool", False), ("bool", True), ("float", True)]


@pytest.mark.parametrize(("mask_kind", "is_causal"), CASES)
@pytest.mark.parametrize("epsilon", [0.0, 0.25])
@pytest.mark.parametrize("elements", [None, 5])
def test_jit_matches_reference(mask_kind, is_causal, epsilon, elements, monkeypatch):
    if elements is not None:
        monkeypatch.setattr(attention_module, "_BLOCK_ELEMENTS", elements)
    q, k, v, mask = _inputs(mask_kind, is_causal)
    m = None if mask is None else jnp.asarray(mask)

    @jax.jit
    def fn(q, k, v, m):
        return evs.ev_attention(
            q, k, v, mask=m, is_causal=is_causal, epsilon=epsilon, return_support=True
        )

    out, size = fn(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), m)
    want, want_size = ref.ev_attention(q, k, v, mask, is_causal, eps=epsilon)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(size), want_size)


@pytest.mark.parametrize(("mask_kind", "is_causal"), CASES)
@pytest.mark.parametrize("epsilon", [0.0, 0.25])
def test_vjp_matches_finite_differences(mask_kind, is_causal, epsilon, monkeypatch):
    monkeypatch.setattr(attention_module, "_BLOCK_ELEMENTS", 6)  # several query blocks
    q, k, v, mask = _inputs(mask_kind, is_causal, seed=7)
    m = None if mask is None else jnp.asarray(mask)

    def fn(q, k, v):
        return evs.ev_attention(q, k, v, mask=m, is_causal=is_causal, epsilon=epsilon)

    check_grads(
        fn, (jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)), order=1, modes=["rev"], eps=1e-6
    )


def test_fully_masked_query_has_zero_gradient():
    q, k, v, mask = (jnp.asarray(a) for a in _inputs("bool", False, seed=3))
    grads = jax.grad(lambda q: evs.ev_attention(q, k, v, mask=mask).sum())(q)
    assert np.all(np.asarray(grads)[:, 1] == 0.0)
    out = evs.ev_attention(q, k, v, mask=mask)
    assert np.all(np.asarray(out)[:, 1] == 0.0)


def test_vmap_over_heads():
    q, k, v, _ = _inputs("none", True, seed=5)
    fn = jax.vmap(lambda q, k, v: evs.ev_attention(q, k, v, is_causal=True))
    out = fn(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    want, _ = ref.ev_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_half_precision(dtype):
    q, k, v, _ = _inputs("none", True, seed=9, gap=0.1)
    args = [jnp.asarray(a, dtype=dtype) for a in (q, k, v)]
    out = jax.jit(lambda q, k, v: evs.ev_attention(q, k, v, is_causal=True))(*args)
    assert out.dtype == jnp.dtype(dtype)
    want, _ = ref.ev_attention(*(np.asarray(a, np.float64) for a in args), is_causal=True)
    tol = 1e-5 if dtype == "float32" else 3e-2
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=tol, atol=tol)
    assert math.isfinite(
        float(
            jax.grad(lambda q: evs.ev_attention(q, *args[1:]).sum().astype(jnp.float32))(args[0])
            .astype(jnp.float32)
            .sum()
        )
    )
