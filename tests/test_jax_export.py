"""``jax.export`` of ev-softmax: a serialized program that computes the function.

A custom call has no compatibility guarantee, so exports never carry the FFI
kernel: the adapter lowers its XLA form (and the backward's expression) when
exporting, on the kernel path too (issue 12, D7). The round trip is checked on
new inputs against the float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402
from jax import export  # noqa: E402

import evsoftmax as evs  # noqa: E402

from . import reference as ref  # noqa: E402
from .cpu_kernels import PATHS  # noqa: E402
from .jax_helpers import closed_form_jvp, jax_path, rows_away_from_ties  # noqa: E402

EPSILON = 1e-3


@pytest.fixture(autouse=True, scope="module", params=PATHS)
def each_path(request):
    """Exported with the kernel available (it must stay out), then without it."""
    with jax_path(request.param) as path:
        yield path


def _round_trip(fun, *specs):
    """``fun`` jitted, exported, serialized and deserialized."""
    exported = export.export(jax.jit(fun))(*specs)
    assert "custom_call @" not in exported.mlir_module()  # no FFI target (kernel) inside
    return export.deserialize(exported.serialize())


def _inputs(shape, dtype, seed):
    x = rows_away_from_ties(shape, seed=seed).astype(dtype)
    x[0, 1] = -np.inf
    where = np.ones(shape, bool)
    where[1, ::2] = False
    where[2] = False  # a fully masked row
    return x, where


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_round_trip_on_new_inputs(dtype):
    shape = (5, 40)
    spec = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    mask_spec = jax.ShapeDtypeStruct(shape, jnp.bool_)

    def forward(x, where):
        return (
            evs.ev_softmax(x, where=where, epsilon=EPSILON),
            evs.log_ev_softmax(x, where=where),
        )

    restored = _round_trip(forward, spec, mask_spec)
    x, where = _inputs(shape, dtype, seed=7)  # not the inputs of any earlier trace
    p, logp = restored.call(jnp.asarray(x), jnp.asarray(where))
    rtol = 1e-12 if dtype == "float64" else 2e-6
    expected = ref.ev_softmax(x, eps=EPSILON, where=where)
    np.testing.assert_allclose(p, expected, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(logp, ref.log_ev_softmax(x, where=where), rtol=rtol)


def test_gradient_round_trip():
    shape = (4, 24)
    spec = jax.ShapeDtypeStruct(shape, jnp.float64)
    c = np.random.default_rng(2).standard_normal(shape)

    def grad(x, c):
        return jax.grad(lambda x: jnp.sum(evs.ev_softmax(x, epsilon=EPSILON) * c))(x)

    restored = _round_trip(grad, spec, spec)
    x, _ = _inputs(shape, "float64", seed=9)
    got = restored.call(jnp.asarray(x), jnp.asarray(c))
    expected = closed_form_jvp(ref.ev_softmax(x, eps=EPSILON), c)
    np.testing.assert_allclose(got, expected, atol=1e-14)


def test_exported_with_a_vjp_is_differentiable():
    shape = (3, 20)
    spec = jax.ShapeDtypeStruct(shape, jnp.float64)
    exported = export.export(jax.jit(lambda x: evs.ev_softmax(x)))(spec)
    restored = export.deserialize(exported.serialize(vjp_order=1))
    x, _ = _inputs(shape, "float64", seed=11)
    c = np.random.default_rng(3).standard_normal(shape)
    got = jax.grad(lambda x: jnp.sum(restored.call(x) * c))(jnp.asarray(x))
    np.testing.assert_allclose(got, closed_form_jvp(ref.ev_softmax(x), c), atol=1e-14)
