"""PyTorch gradients of the losses, paper Eq. 12, and the ``entmax`` package's losses."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import evsoftmax as evs  # noqa: E402

from . import reference  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script[_a-z]*` is deprecated:DeprecationWarning"
)

CLASS_LOSSES = {
    "nll": (evs.ev_softmax_nll_loss, partial(evs.ev_softmax, epsilon=1e-6)),
    "sparsemax": (evs.sparsemax_loss, evs.sparsemax),
    "entmax15": (evs.entmax15_loss, evs.entmax15),
}


def problem(seed: int = 0, n: int = 4, c: int = 6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64).mul(2).requires_grad_()
    return logits, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("name", CLASS_LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(name, reduction):
    logits, target = problem()
    loss = CLASS_LOSSES[name][0]
    fn = lambda x: loss(x, target, reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,), check_forward_ad=True)


def test_gradcheck_kl_and_class_axis():
    logits, _ = problem(1)
    q = torch.softmax(torch.randn(4, 6, dtype=torch.float64), dim=0)
    assert torch.autograd.gradcheck(
        lambda x: evs.ev_softmax_kl_div(x, q, axis=0, epsilon=1e-3), (logits,)
    )
    x3 = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    t3 = torch.randint(0, 5, (2, 3))
    for fn, _ in CLASS_LOSSES.values():
        assert torch.autograd.gradcheck(lambda x, fn=fn: fn(x, t3, axis=1), (x3,))


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_gradient_is_p_minus_onehot(name):
    """d loss / d logits = (p - e_y) / n for the mean (NLL: p_eps; Fenchel-Young: p*)."""
    loss, probs = CLASS_LOSSES[name]
    logits, target = problem(2)
    (grad,) = torch.autograd.grad(loss(logits, target), logits)
    expected = (probs(logits) - torch.nn.functional.one_hot(target, 6)) / 4
    torch.testing.assert_close(grad, expected.detach(), atol=1e-12, rtol=0)


def test_kl_gradient():
    logits, _ = problem(3)
    q = torch.softmax(torch.randn(4, 6, dtype=torch.float64), dim=-1)
    (grad,) = torch.autograd.grad(evs.ev_softmax_kl_div(logits, q, reduction="sum"), logits)
    torch.testing.assert_close(grad, (evs.ev_softmax(logits, epsilon=1e-6) - q).detach())


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_ignored_positions_and_masked_classes_get_zero_gradient(name):
    logits, target = problem(4)
    target[1] = -100
    where = torch.tensor([True, False, True, True, True, True])
    target[target == 1] = 0
    loss = CLASS_LOSSES[name][0](logits, target, where=where, ignore_index=-100)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all()
    assert (grad[1] == 0).all()
    assert (grad[:, 1] == 0).all()


def test_eq_12_nll_gradient_tends_to_softmax_cross_entropy_form():
    """Paper Eq. 12: grad of -log p_eps[y] -> p - e_y (p = ev-softmax), monotonically in eps."""
    logits, target = problem(5, n=8, c=10)
    target = torch.where(torch.arange(8) % 2 == 0, target, logits.argmin(-1))  # some off support
    p = torch.as_tensor(reference.ev_softmax(logits.detach().numpy()))
    expected = p - torch.nn.functional.one_hot(target, 10)
    errors = []
    for eps in (1e-2, 1e-4, 1e-6):
        loss = evs.ev_softmax_nll_loss(logits, target, epsilon=eps, reduction="sum")
        (grad,) = torch.autograd.grad(loss, logits)
        errors.append((grad - expected).abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


def test_loss_decreases_under_gradient_descent():
    logits, target = problem(6)
    logits = logits.detach().requires_grad_()
    opt = torch.optim.SGD([logits], lr=1.0)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = evs.ev_softmax_nll_loss(logits, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert (evs.ev_softmax(logits).argmax(-1) == target).all()


# -- cross-check against the entmax package --------------------------------------------------


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fenchel_young_losses_match_entmax(name, dtype):
    entmax = pytest.importorskip("entmax")
    theirs = {"sparsemax": entmax.sparsemax_loss, "entmax15": entmax.entmax15_loss}[name]
    g = torch.Generator().manual_seed(7)
    logits = (3 * torch.randn(16, 9, generator=g, dtype=dtype)).requires_grad_()
    target = torch.randint(0, 9, (16,), generator=g)
    ours = CLASS_LOSSES[name][0](logits, target, reduction="none")
    ref_logits = logits.detach().clone().requires_grad_()
    ref = theirs(ref_logits, target)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    (grad_ref,) = torch.autograd.grad(ref.sum(), ref_logits)
    torch.testing.assert_close(grad, grad_ref, atol=tol, rtol=tol)
    mean = CLASS_LOSSES[name][0](logits, target, ignore_index=3)
    keep = target != 3
    np.testing.assert_allclose(mean.item(), ref[keep].sum().item() / keep.sum().item(), rtol=tol)
