"""Closed-form derivatives of ev-softmax on torch tensors: autograd, forward AD, torch.func.

Expected derivatives are computed in the tests from the paper's formulas in
float64 NumPy (``p * (g - <p, g>)``, and ``g - p * sum(g)`` on valid entries
for the log form), or checked numerically with ``gradcheck``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.func as tf  # noqa: E402
from torch.autograd import forward_ad  # noqa: E402

import evsoftmax as evs  # noqa: E402
import evsoftmax.torch as evt  # noqa: E402

from . import reference as ref  # noqa: E402
from .closed_forms import ev_softmax_vjp, log_ev_softmax_vjp, no_ties  # noqa: E402

# torch's own forward-AD machinery calls the deprecated torch.jit.script once.
JIT_DEPRECATION = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


_no_ties = functools.partial(no_ties, gap=1e-2, scale=2.0)


def _t(a, requires_grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=requires_grad)


FUNCS = {"top-level": evs.ev_softmax, "evsoftmax.torch": evt.ev_softmax}


def _call(func, x, dim, epsilon, where=None, log=False):
    if func == "top-level":
        f = evs.log_ev_softmax if log else evs.ev_softmax
        return f(x, axis=dim, epsilon=epsilon, where=where)
    f = evt.log_ev_softmax if log else evt.ev_softmax
    return f(x, dim=dim, epsilon=epsilon, where=where)


# --- gradcheck ---------------------------------------------------------------------


@pytest.mark.parametrize("func", list(FUNCS))
@pytest.mark.parametrize("epsilon", [0.0, 1e-3, 0.5])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gradcheck_and_gradgradcheck(func, epsilon, dim):
    x = np.moveaxis(_no_ties((2, 3, 5), seed=dim + 2), -1, dim)
    xt = _t(x, requires_grad=True)

    def f(v):
        return _call(func, v, dim, epsilon)

    assert torch.autograd.gradcheck(f, (xt,))
    assert torch.autograd.gradgradcheck(f, (xt,))


@pytest.mark.parametrize("epsilon", [1e-3, 0.5])
@pytest.mark.parametrize("dim", [0, -1])
def test_gradcheck_log_form(epsilon, dim):
    x = np.moveaxis(_no_ties((2, 3, 5), seed=7), -1, dim)
    xt = _t(x, requires_grad=True)

    def f(v):
        return evt.log_ev_softmax(v, dim=dim, epsilon=epsilon)

    assert torch.autograd.gradcheck(f, (xt,))
    assert torch.autograd.gradgradcheck(f, (xt,))


@pytest.mark.parametrize("epsilon", [0.0, 0.2])
def test_gradcheck_with_mask(epsilon):
    x = _no_ties((4, 6), seed=3)
    where = torch.tensor([True, False, True, True, False, True])
    xt = _t(x, requires_grad=True)
    # (The log form is -inf on masked entries, which finite differences cannot handle;
    # its masked gradient is checked against the closed form below.)
    assert torch.autograd.gradcheck(lambda v: evt.ev_softmax(v, epsilon=epsilon, where=where), xt)


@pytest.mark.filterwarnings(JIT_DEPRECATION)
@pytest.mark.parametrize("log", [False, True])
def test_gradcheck_forward_mode_and_batched(log):
    x = _t(_no_ties((3, 5), seed=4), requires_grad=True)
    f = evt.log_ev_softmax if log else evt.ev_softmax
    assert torch.autograd.gradcheck(
        lambda v: f(v, epsilon=0.1),
        (x,),
        check_forward_ad=True,
        check_batched_grad=True,
        check_batched_forward_grad=True,
    )


# --- the backward pass is the closed form ----------------------------------------


@pytest.mark.parametrize("func", list(FUNCS))
@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.3])
def test_backward_is_closed_form(func, epsilon):
    x = _no_ties((5, 7), seed=11)
    g = np.random.default_rng(1).normal(size=x.shape)
    xt = _t(x, requires_grad=True)
    out = _call(func, xt, -1, epsilon)
    out.backward(_t(g))
    p = ref.ev_softmax(x, eps=epsilon)
    np.testing.assert_allclose(xt.grad.numpy(), ev_softmax_vjp(p, g), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("epsilon", [0.0, 0.3])
def test_masked_entries_get_exactly_zero_gradient(epsilon):
    x = np.array([[0.5, -np.inf, 1.5, -0.3, 2.0], [1.0, 0.2, -np.inf, 0.7, -1.0]])
    where = np.array([True, True, True, False, True])
    valid = np.isfinite(x) & where
    g = np.random.default_rng(2).normal(size=x.shape)
    xt = _t(x, requires_grad=True)
    out = evt.ev_softmax(xt, epsilon=epsilon, where=torch.tensor(where))
    out.backward(_t(g))
    grad = xt.grad.numpy()
    assert (grad[~valid] == 0.0).all()
    p = ref.ev_softmax(x, eps=epsilon, where=where)
    np.testing.assert_allclose(grad, ev_softmax_vjp(p, g), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.3])
def test_log_backward_is_closed_form_on_valid_entries(epsilon):
    # Row 0 holds a masked entry and a -inf; with epsilon = 0 the entries below the
    # mean are -inf too but valid, and get g - p * sum(g) (the epsilon -> 0 limit).
    x = np.array([[0.5, -np.inf, 1.5, -0.3, 2.0, 0.1], [1.0, 0.2, 3.0, 0.7, -1.0, 0.4]])
    where = np.array([True, True, True, True, False, True])
    valid = np.isfinite(x) & where
    g = np.random.default_rng(3).normal(size=x.shape)
    xt = _t(x, requires_grad=True)
    out = evt.log_ev_softmax(xt, epsilon=epsilon, where=torch.tensor(where))
    out.backward(_t(g))
    p = ref.ev_softmax(x, eps=epsilon, where=where)
    expected = log_ev_softmax_vjp(p, g, valid)
    np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=1e-10, atol=1e-14)
    assert (xt.grad.numpy()[~valid] == 0.0).all()


@pytest.mark.parametrize("log", [False, True])
def test_fully_masked_row_has_zero_gradient_and_no_nan(log):
    x = _t([[1.0, 2.0, 3.0], [-np.inf, -np.inf, -np.inf]], requires_grad=True)
    f = evt.log_ev_softmax if log else evt.ev_softmax
    out = f(x, epsilon=0.1)
    out.backward(torch.ones_like(out))
    assert (x.grad[1] == 0.0).all()
    assert torch.isfinite(x.grad).all()


def test_nan_row_does_not_leak_into_other_rows_gradient():
    x = _t([[1.0, np.nan, 0.0], [0.4, 1.4, -0.8]], requires_grad=True)
    out = evt.ev_softmax(x)
    out[1].sum().backward()
    assert torch.isfinite(x.grad[1]).all()


def test_loss_gradient_tends_to_p_minus_onehot():
    # The paper's Eq. 12: grad of log p_eps[i] -> delta_i - p as epsilon -> 0.
    x = _no_ties((1, 6), seed=5)[0]
    target = int(np.argmin(x))  # outside the support
    xt = _t(x, requires_grad=True)
    evt.log_ev_softmax(xt, epsilon=1e-9)[target].backward()
    expected = np.eye(6)[target] - ref.ev_softmax(x)
    np.testing.assert_allclose(xt.grad.numpy(), expected, atol=1e-6)


# --- what is saved ------------------------------------------------------------------


@pytest.mark.parametrize("log", [False, True])
def test_only_the_output_is_saved(log):
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    f = evt.log_ev_softmax if log else evt.ev_softmax
    out = f(x, epsilon=0.1)
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    assert len(saved) == 1
    assert saved[0].data_ptr() == out.data_ptr()


# --- forward mode ----------------------------------------------------------------


@pytest.mark.filterwarnings(JIT_DEPRECATION)
@pytest.mark.parametrize("epsilon", [0.0, 0.3])
def test_forward_ad_is_closed_form(epsilon):
    x = _no_ties((4, 6), seed=8)
    t = np.random.default_rng(4).normal(size=x.shape)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(_t(x), _t(t))
        tangent = forward_ad.unpack_dual(evt.ev_softmax(dual, epsilon=epsilon)).tangent
    p = ref.ev_softmax(x, eps=epsilon)
    np.testing.assert_allclose(tangent.numpy(), ev_softmax_vjp(p, t), rtol=1e-10, atol=1e-14)


@pytest.mark.filterwarnings(JIT_DEPRECATION)
@pytest.mark.parametrize("epsilon", [0.0, 0.2])
def test_forward_ad_log_form_with_mask(epsilon):
    # With epsilon = 0 the entries below the mean are -inf yet valid: tangent t - <p, t>.
    x = np.array([[0.5, -np.inf, 1.5, -0.3, 2.0]])
    where = np.array([True, True, True, True, False])
    valid = np.isfinite(x) & where
    t = np.random.default_rng(6).normal(size=x.shape)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(_t(x), _t(t))
        out = evt.log_ev_softmax(dual, epsilon=epsilon, where=torch.tensor(where))
        tangent = forward_ad.unpack_dual(out).tangent.numpy()
    p = ref.ev_softmax(x, eps=epsilon, where=where)
    tm = np.where(valid, t, 0.0)
    expected = np.where(valid, tm - (p * tm).sum(-1, keepdims=True), 0.0)
    np.testing.assert_allclose(tangent, expected, rtol=1e-10, atol=1e-14)


# --- torch.func ------------------------------------------------------------------


def _jacobian(p):
    return np.diag(p) - np.outer(p, p)


@pytest.mark.parametrize("epsilon", [0.0, 0.3])
def test_func_jacrev_and_jacfwd_are_the_closed_form_jacobian(epsilon):
    x = _no_ties((7,), seed=9)
    p = ref.ev_softmax(x, eps=epsilon)
    for transform in (tf.jacrev, tf.jacfwd):
        jac = transform(lambda v: evt.ev_softmax(v, epsilon=epsilon))(_t(x))
        np.testing.assert_allclose(jac.numpy(), _jacobian(p), rtol=1e-10, atol=1e-14)


def test_func_jvp_grad_vjp():
    x = _no_ties((3, 6), seed=10)
    t = np.random.default_rng(7).normal(size=x.shape)
    p = ref.ev_softmax(x, eps=0.1)
    _, tangent = tf.jvp(lambda v: evt.ev_softmax(v, epsilon=0.1), (_t(x),), (_t(t),))
    np.testing.assert_allclose(tangent.numpy(), ev_softmax_vjp(p, t), rtol=1e-10, atol=1e-14)
    _, vjp_fn = tf.vjp(lambda v: evt.ev_softmax(v, epsilon=0.1), _t(x))
    (cot,) = vjp_fn(_t(t))
    np.testing.assert_allclose(cot.numpy(), ev_softmax_vjp(p, t), rtol=1e-10, atol=1e-14)
    grad = tf.grad(lambda v: evt.ev_softmax(v, epsilon=0.1)[:, 0].sum())(_t(x))
    g = np.zeros_like(x)
    g[:, 0] = 1.0
    np.testing.assert_allclose(grad.numpy(), ev_softmax_vjp(p, g), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("in_dim", [0, 1])
def test_func_vmap_matches_loop(in_dim):
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    batched = tf.vmap(lambda v: evt.ev_softmax(v, dim=0, epsilon=0.1), in_dims=in_dim)(x)
    loop = torch.stack([evt.ev_softmax(xi, dim=0, epsilon=0.1) for xi in x.unbind(in_dim)])
    torch.testing.assert_close(batched, loop)


def test_func_vmap_with_batched_and_unbatched_mask():
    x = torch.randn(3, 5, dtype=torch.float64)
    masks = torch.tensor([[True] * 5, [True, False, True, False, True], [False, True] * 2 + [True]])
    got = tf.vmap(lambda v, m: evt.ev_softmax(v, where=m))(x, masks)
    loop = torch.stack([evt.ev_softmax(v, where=m) for v, m in zip(x, masks, strict=True)])
    torch.testing.assert_close(got, loop)
    one = masks[1]
    got = tf.vmap(lambda v: evt.ev_softmax(v, where=one))(x)
    torch.testing.assert_close(got, evt.ev_softmax(x, where=one))
    # A batched mask of lower rank than the per-example input.
    x3 = torch.randn(3, 2, 5, dtype=torch.float64)
    got = tf.vmap(lambda v, m: evt.ev_softmax(v, where=m))(x3, masks)
    loop = torch.stack([evt.ev_softmax(v, where=m) for v, m in zip(x3, masks, strict=True)])
    torch.testing.assert_close(got, loop)


def test_func_vmap_of_grad_and_hessian():
    x = torch.randn(3, 5, dtype=torch.float64)
    per_row = tf.vmap(tf.grad(lambda v: evt.log_ev_softmax(v, epsilon=0.1)[0]))(x)
    loop = torch.stack([tf.grad(lambda v: evt.log_ev_softmax(v, epsilon=0.1)[0])(v) for v in x])
    torch.testing.assert_close(per_row, loop)
    hess = tf.hessian(lambda v: evt.log_ev_softmax(v, epsilon=0.1)[0])(x[0])
    # d2 log p_0 / dx2 = -(diag(p) - p p^T): the Jacobian of -p.
    p = evt.ev_softmax(x[0], epsilon=0.1).numpy()
    np.testing.assert_allclose(hess.numpy(), -_jacobian(p), rtol=1e-9, atol=1e-12)


# --- precision ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_backward(dtype):
    dtype = getattr(torch, dtype)
    x = _no_ties((4, 64), seed=12, gap=0.05)
    g = np.random.default_rng(8).normal(size=x.shape)
    xh = torch.tensor(x, dtype=dtype, requires_grad=True)
    out = evt.ev_softmax(xh, epsilon=0.1)
    out.backward(torch.tensor(g, dtype=dtype))
    assert out.dtype == dtype
    assert xh.grad.dtype == dtype
    xr = xh.detach().double().numpy()
    gr = torch.tensor(g, dtype=dtype).double().numpy()
    p = ref.ev_softmax(xr, eps=0.1)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    np.testing.assert_allclose(out.double().detach().numpy(), p, atol=tol)
    np.testing.assert_allclose(xh.grad.double().numpy(), ev_softmax_vjp(p, gr), atol=tol)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_autocast(dtype):
    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 32)
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=dtype):
        logits = layer(x)
        p = evt.ev_softmax(logits, epsilon=1e-6)
        lp = evt.log_ev_softmax(logits, epsilon=1e-6)
    assert logits.dtype == dtype
    assert p.dtype == dtype
    assert lp.dtype == dtype
    expected = ref.ev_softmax(logits.detach().double().numpy(), eps=1e-6)
    np.testing.assert_allclose(p.detach().double().numpy(), expected, atol=1e-2)
    (-lp[:, 0].sum()).backward()
    assert layer.weight.grad is not None
    assert torch.isfinite(layer.weight.grad).all()
