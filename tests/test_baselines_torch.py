"""PyTorch autodiff of the baselines: gradcheck, double backward, forward AD, torch.func."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import evsoftmax as evs  # noqa: E402

# torch's forward-mode AD loads decompositions through the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)

MAPS = {
    "softmax": evs.softmax,
    "log_softmax": evs.log_softmax,
    "sparsemax": evs.sparsemax,
    "entmax15": evs.entmax15,
    "bisect_1.25": partial(evs.entmax_bisect, alpha=1.25),
    "bisect_2": partial(evs.entmax_bisect, alpha=2.0),
    "bisect_3": partial(evs.entmax_bisect, alpha=3.0),
}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("dim", [0, -1])
def test_gradcheck(name, dim):
    fn = partial(MAPS[name], axis=dim)
    x = randn(3, 5)
    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("name", MAPS)
def test_gradcheck_with_mask(name):
    where = torch.tensor([[True, False, True, True, True], [False] * 5, [True] * 5])
    x = randn(3, 5, seed=1)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = MAPS[name](x, where=where)
        return torch.where(where, out, 0.0)  # drop log_softmax's constant -inf entries

    assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True)
    out = MAPS[name](x, where=where)
    out[torch.isfinite(out)].sum().backward()
    assert (x.grad[~where] == 0).all()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", MAPS)
def test_fully_masked_rows_have_zero_gradient(name):
    x = torch.full((2, 4), -torch.inf, dtype=torch.float64, requires_grad=True)
    out = MAPS[name](x)
    (torch.where(torch.isfinite(out), out, 0.0) * torch.arange(4.0)).sum().backward()
    assert (x.grad == 0).all()


def test_sparsemax_gradient_is_centred_on_the_support():
    x = randn(6, 9, seed=2)
    g = torch.randn(6, 9, dtype=torch.float64)
    p = evs.sparsemax(x)
    (grad,) = torch.autograd.grad(p, x, g)
    s = (p > 0).double()
    expected = s * (g - (g * s).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))
    torch.testing.assert_close(grad, expected)


def test_entmax15_gradient_closed_form():
    x = randn(6, 9, seed=3)
    g = torch.randn(6, 9, dtype=torch.float64)
    p = evs.entmax15(x)
    (grad,) = torch.autograd.grad(p, x, g)
    s = p.sqrt()
    expected = s * g - s * (s * g).sum(-1, keepdim=True) / s.sum(-1, keepdim=True)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "bisect_1.25", "log_softmax"])
def test_torch_func(name):
    fn = MAPS[name]
    x = randn(4, 6, seed=4).detach()
    torch.testing.assert_close(torch.func.vmap(fn)(x), fn(x))
    weights = torch.linspace(-1, 1, 6, dtype=torch.float64)
    grads = torch.func.vmap(torch.func.grad(lambda r: (fn(r) * weights).sum()))(x)
    jac = torch.func.jacrev(fn)(x[0])
    torch.testing.assert_close(grads[0], weights @ jac)
    _, tangent = torch.func.jvp(fn, (x[0],), (weights,))
    torch.testing.assert_close(tangent, jac @ weights)


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_backward(name, dtype):
    x = randn(3, 6, seed=5).detach().to(dtype).requires_grad_()
    out = MAPS[name](x)
    weights = torch.linspace(0, 1, 6, dtype=dtype)
    (torch.where(torch.isfinite(out), out, 0) * weights).sum().backward()
    assert out.dtype == dtype
    assert x.grad.dtype == dtype
    ref = randn(3, 6, seed=5).detach().to(dtype).double().requires_grad_()
    ref_out = MAPS[name](ref)
    (torch.where(torch.isfinite(ref_out), ref_out, 0) * weights.double()).sum().backward()
    np.testing.assert_allclose(x.grad.double().numpy(), ref.grad.numpy(), atol=5e-2)
