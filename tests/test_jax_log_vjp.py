"""The log form's tangent-map primitive of the JAX adapter: both directions, batching, lowering.

Expected values are the closed forms of ``tests/closed_forms.py`` in float64 on
the validity of ``tests/reference.py``: forward mode ``1_V * (t - <p, t>)``,
reverse mode ``1_V * (g - p * sum(1_V * g))``, at ``p`` of the reference's log
ev-softmax of ``x`` (the kernel recomputes it from ``x``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from evsoftmax.adapters.jax.vjp import log_ev_softmax_tangent  # noqa: E402
from evsoftmax.jax import log_ev_softmax  # noqa: E402

from . import reference as ref  # noqa: E402
from .closed_forms import log_ev_softmax_vjp, no_ties  # noqa: E402
from .cpu_kernels import PATHS, use_path  # noqa: E402

SHAPE = (3, 40, 5)


@pytest.fixture(autouse=True, params=PATHS)
def each_path(request, monkeypatch):
    """On the compiled kernel (an XLA FFI call on the CPU), then on the XLA expression."""
    use_path(request.param, monkeypatch)
    jax.clear_caches()
    yield request.param
    jax.clear_caches()


def inputs(axis, seed=0, masked=True):
    """``(x, where, log p)``: scores with -inf entries, a mask, and a row whose shift overflows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=SHAPE) * 3
    moved = np.moveaxis(x, axis, -1)
    moved[0, 0, :2] = -np.inf
    moved[0, 1, 0], moved[0, 1, 1] = 1e308, -1e308  # valid, with log p = -inf
    where = rng.random(SHAPE) > 0.3 if masked else None
    with np.errstate(all="ignore"):
        lp = ref.log_ev_softmax(x, axis, 0.0, where)  # epsilon = 0: -inf off the support too
    return x, where, lp


def forward_mode(lp, t, valid, axis):
    p = np.exp(lp)
    inner = np.where(valid, p * t, 0.0).sum(axis=axis, keepdims=True)
    return np.where(valid, t - inner, 0.0)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_both_directions_match_the_closed_forms(axis, masked):
    x, where, lp = inputs(axis, axis, masked)
    t = np.random.default_rng(1).normal(size=SHAPE)
    valid = ref._valid(x, where)
    w = None if where is None else jnp.asarray(where)
    args = (jnp.asarray(lp), jnp.asarray(t), jnp.asarray(x), w)
    call = jax.jit(log_ev_softmax_tangent, static_argnums=(4, 5, 6))
    with np.errstate(all="ignore"):
        want_rev = log_ev_softmax_vjp(np.exp(lp), t, valid, axis)
    np.testing.assert_allclose(call(*args, axis, True, 0.0), want_rev, rtol=1e-13, atol=1e-13)
    want_fwd = forward_mode(lp, t, valid, axis)
    np.testing.assert_allclose(call(*args, axis, False, 0.0), want_fwd, rtol=1e-13, atol=1e-13)
    eager = log_ev_softmax_tangent(*args, axis, True, 0.0)  # outside any trace
    np.testing.assert_allclose(eager, want_rev, rtol=1e-13, atol=1e-13)
    assert (np.asarray(call(*args, axis, True, 0.0))[~valid] == 0.0).all()


def test_each_direction_transposes_into_the_other():
    x, where, lp = (jnp.asarray(a) for a in inputs(2, 3))
    t = jnp.asarray(np.random.default_rng(2).normal(size=SHAPE))
    g = jnp.asarray(np.random.default_rng(3).normal(size=SHAPE))
    for transpose in (False, True):
        (got,) = jax.linear_transpose(
            lambda t, s=transpose: log_ev_softmax_tangent(lp, t, x, where, 2, s, 0.0), t
        )(g)
        want = log_ev_softmax_tangent(lp, g, x, where, 2, not transpose, 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("in_axes", [(0, 0, 0, 0), (None, 0, None, None), (0, 0, 0, None)])
def test_vmap(in_axes):
    x, where, _ = inputs(2, 4)
    t = np.random.default_rng(4).normal(size=SHAPE)
    x_in = x if in_axes[2] is not None else x[0]
    where_in = where if in_axes[3] is not None else where[0]
    x_full, where_full = np.broadcast_to(x_in, SHAPE), np.broadcast_to(where_in, SHAPE)
    with np.errstate(all="ignore"):
        lp = ref.log_ev_softmax(x_full, 2, 0.0, where_full)  # log p of the x and mask it sees
    lp_in = lp if in_axes[0] is not None else lp[0]
    got = jax.vmap(
        lambda lp, t, x, w: log_ev_softmax_tangent(lp, t, x, w, 1, True, 0.0), in_axes=in_axes
    )(*(jnp.asarray(a) for a in (lp_in, t, x_in, where_in)))
    with np.errstate(all="ignore"):
        want = log_ev_softmax_vjp(np.exp(lp), t, ref._valid(x_full, where_full), 2)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_derivatives_through_log_p_and_t():
    """In ``x`` (through ``log p = log_ev_softmax(x)``, as the adapter calls it) and ``t``."""
    x = jnp.asarray(no_ties((3, 7), seed=5, gap=0.05))
    t = jnp.asarray(np.random.default_rng(5).normal(size=(3, 7)))
    for transpose in (False, True):

        def f(x, t, s=transpose):
            lp = log_ev_softmax(x, epsilon=0.5)
            return log_ev_softmax_tangent(lp, t, x, None, 1, s, 0.5)

        check_grads(f, (x, t), order=2, modes=("fwd", "rev"))


def test_lowering_calls_the_kernel_for_the_reverse_map_only_on_its_path(each_path):
    z = jnp.zeros((2, 8))
    for transpose in (False, True):
        lowered = jax.jit(log_ev_softmax_tangent, static_argnums=(4, 5, 6)).lower(
            z, z, z, None, 1, transpose, 0.0
        )
        calls = "custom_call @" in lowered.as_text()
        assert calls == (each_path == "kernel" and transpose)


@pytest.mark.parametrize(("shape", "axis"), [((3, 9000), 1), ((70, 33), 1), ((40, 6, 3), 0)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reverse_mode_of_the_public_function(shape, axis, dtype):
    """jax.vjp of log_ev_softmax (long rows, many rows, a non-last axis; masked)."""
    rng = np.random.default_rng(7)
    x = (rng.normal(size=shape) * 3).astype(dtype)
    where = rng.random(shape) > 0.2
    g = rng.normal(size=shape).astype(dtype)
    _, pull = jax.vjp(
        lambda v: log_ev_softmax(v, axis=axis, epsilon=1e-6, where=jnp.asarray(where)),
        jnp.asarray(x),
    )
    (got,) = pull(jnp.asarray(g))
    x64 = x.astype(np.float64)
    p = ref.ev_softmax(x64, axis, 1e-6, where)
    want = log_ev_softmax_vjp(p, g.astype(np.float64), ref._valid(x64, where), axis)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert (np.asarray(got)[~where] == 0.0).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_gradient_is_the_one_fused_kernel_call(each_path, dtype):
    """jit(vjp) of log_ev_softmax with epsilon: one call of the fused kernel and no other op.

    The forward pass the gradient needs runs inside that call (XLA drops the
    forward call, whose output reverse mode discards): no transpose, copy or
    fusion of XLA streams the arrays through memory beside it.
    """
    if each_path != "kernel":
        pytest.skip("the XLA form is a fusion of XLA ops")
    x = jnp.zeros((16, 24), dtype=dtype)

    def grad(v, g):
        return jax.vjp(lambda u: log_ev_softmax(u, epsilon=1e-6), v)[1](g)[0]

    hlo = jax.jit(grad).lower(x, x).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    # The instructions' opcodes ("%name = type opcode(operands), ..."), metadata left out.
    ops = re.findall(r"^\s*(?:ROOT )?%\S+ = \S+ ([\w-]+)\(", entry, flags=re.MULTILINE)
    assert sorted(ops) == ["constant", "custom-call", "parameter", "parameter"], ops
    assert 'custom_call_target="evsoftmax.log_ev_softmax_grad"' in entry
