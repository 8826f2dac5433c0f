"""JAX transformations of ev-softmax: jit, vmap, grad, jvp, jacobians, hessians.

Expected derivatives are the closed forms of DESIGN §2, evaluated in NumPy
float64 from the reference probabilities, never from the code under test.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import evsoftmax as evs  # noqa: E402
import evsoftmax.jax as evj  # noqa: E402

from . import reference as ref  # noqa: E402
from .jax_helpers import (  # noqa: E402
    closed_form_jvp,
    closed_form_log_jvp,
    closed_form_log_vjp,
    hessian_of_entry,
    jacobian,
    masked_example,
    rows_away_from_ties,
    valid_entries,
)

EPSILONS = (0.0, 1e-6, 0.3)


# ---------------------------------------------------------------- jit and vmap


@pytest.mark.parametrize("name", ["ev_softmax", "log_ev_softmax"])
def test_jit_matches_eager(name):
    x, where = masked_example()
    fun = getattr(evj, name)
    jitted = jax.jit(functools.partial(fun, axis=-1, epsilon=1e-6))
    np.testing.assert_array_equal(
        jitted(jnp.asarray(x), where=jnp.asarray(where)),
        fun(jnp.asarray(x), where=jnp.asarray(where), epsilon=1e-6),
    )
    with_traced_mask = jax.jit(lambda x, w: fun(x, where=w, epsilon=1e-6))
    expected = getattr(ref, name)(x, eps=1e-6, where=where)
    np.testing.assert_allclose(with_traced_mask(jnp.asarray(x), jnp.asarray(where)), expected)


def _count_traces(fun):
    traces = []

    def traced(x):
        traces.append(None)
        return fun(x)

    return jax.jit(traced), traces


def test_jit_does_not_retrace_for_new_data():
    fun, traces = _count_traces(lambda x: evs.ev_softmax(x, epsilon=1e-6))
    grad, grad_traces = _count_traces(jax.grad(lambda x: jnp.sum(evs.log_ev_softmax(x) ** 2)))
    for seed in range(3):
        x = jnp.asarray(rows_away_from_ties((3, 8), seed=seed))
        fun(x).block_until_ready()
        grad(x).block_until_ready()
    assert len(traces) == 1
    assert len(grad_traces) == 1


def test_eager_calls_compile_once_per_shape(caplog):
    def compilations():
        return [r for r in caplog.records if r.getMessage().startswith("Compiling")]

    evs.ev_softmax(jnp.asarray(rows_away_from_ties((2, 9))), epsilon=0.25)  # warm up
    with caplog.at_level(logging.DEBUG), jax.log_compiles():
        for seed in range(1, 4):
            evs.ev_softmax(jnp.asarray(rows_away_from_ties((2, 9), seed=seed)), epsilon=0.25)
        assert compilations() == []
        evs.ev_softmax(jnp.asarray(rows_away_from_ties((2, 10))), epsilon=0.25)
        assert compilations()  # the detector works: a new shape does compile


@pytest.mark.parametrize("batch_axis", [0, 1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_vmap_over_any_batch_axis(batch_axis, axis):
    # Per example the input is 2-d (4, 5); the batch of 3 sits at batch_axis.
    x = rows_away_from_ties((3, 4, 5), axis=axis if axis < 0 else axis + 1)
    x = np.moveaxis(x, 0, batch_axis)
    for name in ("ev_softmax", "log_ev_softmax"):
        fun = functools.partial(getattr(evj, name), axis=axis, epsilon=1e-6)
        got = jax.vmap(fun, in_axes=batch_axis, out_axes=batch_axis)(jnp.asarray(x))
        per_example = np.stack(
            [
                getattr(ref, name)(np.take(x, b, axis=batch_axis), axis=axis, eps=1e-6)
                for b in range(3)
            ],
            axis=batch_axis,
        )
        np.testing.assert_allclose(got, per_example, rtol=1e-12, atol=1e-12)


def test_vmap_with_batched_mask_and_grad():
    x, where = masked_example()
    fun = jax.vmap(jax.grad(lambda r, w: evs.ev_softmax(r, where=w)[2]))
    got = np.asarray(fun(jnp.asarray(x), jnp.asarray(where)))
    p = ref.ev_softmax(x, where=where)
    expected = closed_form_jvp(p, np.broadcast_to(np.eye(6)[2], x.shape))
    np.testing.assert_allclose(got, expected, atol=1e-14)


# ------------------------------------------------------ first-order derivatives


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("axis", [0, -1])
def test_grad_and_jvp_are_the_closed_form(epsilon, axis):
    x = rows_away_from_ties((4, 6), axis=axis)
    rng = np.random.default_rng(1)
    c, t = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    p = ref.ev_softmax(x, axis=axis, eps=epsilon)
    fun = functools.partial(evs.ev_softmax, axis=axis, epsilon=epsilon)
    grad = jax.grad(lambda x: jnp.sum(fun(x) * c))(jnp.asarray(x))
    np.testing.assert_allclose(grad, closed_form_jvp(p, c, axis), atol=1e-14)
    out, tangent = jax.jvp(fun, (jnp.asarray(x),), (jnp.asarray(t),))
    np.testing.assert_allclose(out, p, atol=1e-15)
    np.testing.assert_allclose(tangent, closed_form_jvp(p, t, axis), atol=1e-14)
    log_fun = functools.partial(evs.log_ev_softmax, axis=axis, epsilon=epsilon)
    valid = np.ones(x.shape, bool)
    _, log_tangent = jax.jvp(log_fun, (jnp.asarray(x),), (jnp.asarray(t),))
    np.testing.assert_allclose(log_tangent, closed_form_log_jvp(p, t, valid, axis), atol=1e-13)


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_jacobians_are_the_closed_form(epsilon):
    x = rows_away_from_ties((7,))
    p = ref.ev_softmax(x, eps=epsilon)
    fun = functools.partial(evs.ev_softmax, epsilon=epsilon)
    for jac in (jax.jacfwd, jax.jacrev):
        np.testing.assert_allclose(jac(fun)(jnp.asarray(x)), jacobian(p), atol=1e-14)
    log_fun = functools.partial(evs.log_ev_softmax, epsilon=epsilon)
    log_jacobian = np.eye(7) - p[None, :]
    for jac in (jax.jacfwd, jax.jacrev):
        np.testing.assert_allclose(jac(log_fun)(jnp.asarray(x)), log_jacobian, atol=1e-13)


# ---------------------------------------------------------------- masks, -inf


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_invalid_entries_get_exactly_zero_tangents(epsilon):
    x, where = masked_example()
    valid = valid_entries(x, where)
    p = ref.ev_softmax(x, eps=epsilon, where=where)
    rng = np.random.default_rng(2)
    t, g = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    xj, wj = jnp.asarray(x), jnp.asarray(where)

    fun = functools.partial(evs.ev_softmax, where=wj, epsilon=epsilon)
    _, tangent = jax.jvp(fun, (xj,), (jnp.asarray(t),))
    _, vjp = jax.vjp(fun, xj)
    (cotangent,) = vjp(jnp.asarray(g))
    log_fun = functools.partial(evs.log_ev_softmax, where=wj, epsilon=epsilon)
    _, log_tangent = jax.jvp(log_fun, (xj,), (jnp.asarray(t),))
    _, log_vjp = jax.vjp(log_fun, xj)
    (log_cotangent,) = log_vjp(jnp.asarray(g))

    for got in (tangent, cotangent, log_tangent, log_cotangent):
        got = np.asarray(got)
        assert not np.any(np.isnan(got))
        assert np.all(got[~valid] == 0.0)
    np.testing.assert_allclose(tangent, closed_form_jvp(p, t), atol=1e-14)
    np.testing.assert_allclose(cotangent, closed_form_jvp(p, g), atol=1e-14)
    np.testing.assert_allclose(log_tangent, closed_form_log_jvp(p, t, valid), atol=1e-13)
    np.testing.assert_allclose(log_cotangent, closed_form_log_vjp(p, g, valid), atol=1e-13)


def test_fully_masked_rows_have_zero_gradient_without_nan():
    x = jnp.asarray([[-np.inf, -np.inf, -np.inf], [0.2, -0.4, 1.0]])
    where = jnp.asarray([[True, True, True], [False, False, False]])
    c = jnp.asarray([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]])
    for mask, epsilon in ((None, 0.0), (where, 0.3)):

        def loss(x, m=mask, e=epsilon):
            return jnp.sum(evs.ev_softmax(x, where=m, epsilon=e) * c)

        grad = np.asarray(jax.grad(loss)(x))
        assert not np.any(np.isnan(grad))
        empty = 0 if mask is None else 1
        assert np.all(grad[empty] == 0.0)
        hess = np.asarray(jax.hessian(loss)(x))
        assert not np.any(np.isnan(hess))
        assert np.all(hess[empty] == 0.0)
    # The log form of an empty row is -inf; its cotangent is still exactly 0.
    _, vjp = jax.vjp(lambda x: evs.log_ev_softmax(x, where=where), x)
    (cotangent,) = vjp(c)
    assert not np.any(np.isnan(np.asarray(cotangent)))
    assert np.all(np.asarray(cotangent)[1] == 0.0)


def test_where_gradient_trap_does_not_leak_nan():
    # The classic trap: a NaN/inf produced on masked entries leaks through
    # jnp.where into the gradient. Masked scores here are huge or -inf.
    x = jnp.asarray([[1e30, 0.5, -np.inf, 0.1], [0.3, -0.2, 0.9, -1e30]])
    where = jnp.asarray([[False, True, True, True], [True, True, True, False]])
    grad = jax.grad(lambda x: jnp.sum(evs.log_ev_softmax(x, where=where, epsilon=1e-6)[:, 1]))(x)
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad))
    assert grad[0, 0] == grad[0, 2] == grad[1, 3] == 0.0


# ---------------------------------------------------------- second order


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_hessian_is_the_closed_form(epsilon):
    x = rows_away_from_ties((6,))
    p = ref.ev_softmax(x, eps=epsilon)
    for k in (0, 3):
        hess = jax.hessian(lambda x, k=k: evs.ev_softmax(x, epsilon=epsilon)[k])(jnp.asarray(x))
        np.testing.assert_allclose(hess, hessian_of_entry(p, k), atol=1e-13)
    # log p_k = x_k - log Z, so its Hessian is minus the Jacobian of p.
    log_hess = jax.hessian(lambda x: evs.log_ev_softmax(x, epsilon=epsilon)[2])(jnp.asarray(x))
    if epsilon > 0.0 or p[2] > 0.0:
        np.testing.assert_allclose(log_hess, -jacobian(p), atol=1e-13)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("name", ["ev_softmax", "log_ev_softmax"])
def test_check_grads_second_order(name, epsilon):
    x = jnp.asarray(rows_away_from_ties((3, 5)))
    fun = getattr(evj, name)
    if name == "log_ev_softmax" and epsilon == 0.0:
        # Entries outside the support are -inf; check the finite ones.
        support = np.asarray(ref.support(np.asarray(x)))
        wrapped = lambda x: jnp.where(support, fun(x), 0.0)  # noqa: E731
    else:
        wrapped = functools.partial(fun, epsilon=epsilon)
    check_grads(wrapped, (x,), order=2, modes=("fwd", "rev"))


# ------------------------------------------------------------ half precision


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_gradients(dtype):
    x = rows_away_from_ties((3, 40))
    c = np.random.default_rng(3).standard_normal(x.shape)
    xh, ch = jnp.asarray(x, dtype=dtype), jnp.asarray(c, dtype=dtype)
    grad = jax.grad(lambda x: jnp.sum(evs.ev_softmax(x, epsilon=1e-3) * ch).astype(jnp.float32))(xh)
    assert grad.dtype == xh.dtype
    p = ref.ev_softmax(np.asarray(xh, np.float64), eps=1e-3)
    expected = closed_form_jvp(p, np.asarray(ch, np.float64))
    np.testing.assert_allclose(np.asarray(grad, np.float64), expected, atol=2e-2, rtol=0)
    _, tangent = jax.jvp(lambda x: evs.log_ev_softmax(x), (xh,), (ch,))
    assert tangent.dtype == xh.dtype


@pytest.mark.parametrize("name", ["ev_softmax", "log_ev_softmax"])
def test_derivatives_go_through_the_custom_jvp(name):
    x = jnp.asarray(rows_away_from_ties((2, 5)))
    jaxpr = str(jax.make_jaxpr(getattr(evs, name))(x))
    assert "custom_jvp_call" in jaxpr


def test_support_runs_as_one_jitted_program():
    # Eagerly, each of the core's array operations used to be dispatched (and
    # compiled for each new shape) on its own.
    x, where = masked_example()
    closed = jax.make_jaxpr(lambda v: evs.ev_softmax_support(v, where=jnp.asarray(where)))(
        jnp.asarray(x)
    )
    assert [e.params.get("name") for e in closed.jaxpr.eqns] == ["_ev_softmax_support_jit"]
    got = evs.ev_softmax_support(jnp.asarray(x), where=jnp.asarray(where))
    np.testing.assert_array_equal(got, ref.ev_softmax(x, where=where) > 0)


def test_vmap_of_a_mask_over_a_shared_input_and_nested_vmap():
    x, where = masked_example()
    row = x[2]
    got = jax.vmap(lambda w: evs.ev_softmax(jnp.asarray(row), where=w))(jnp.asarray(where))
    expected = ref.ev_softmax(np.broadcast_to(row, x.shape), where=where)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    stacked = np.stack([x, x[::-1]])
    nested = jax.vmap(jax.vmap(lambda r: evs.log_ev_softmax(r, epsilon=0.3)))(jnp.asarray(stacked))
    np.testing.assert_allclose(nested, ref.log_ev_softmax(stacked, eps=0.3), rtol=1e-12)
