"""PyTorch autodiff of the baselines: gradcheck, double backward, forward AD, torch.func."""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import evsoftmax as evs  # noqa: E402

# torch loads forward-mode AD decompositions and compiles through the deprecated torch.jit.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script[_a-z]*` is deprecated:DeprecationWarning"
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


# Warnings raised inside torch.compile by code that is not ours: array_api_compat's
# functools-cached array_namespace (public layer), and torch 2.13's own handling of
# autograd.Function (it instantiates the class).
compile_warnings = [
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools"),
    pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
]


@pytest.mark.parametrize(
    "name", ["softmax", "log_softmax", "sparsemax", "entmax15", "entmax_bisect"]
)
def test_adapters_trace_without_graph_breaks(name):
    """The torch paths are plain torch operations: one graph, no break, under torch.compile."""
    import array_api_compat.torch as xpt

    from evsoftmax.adapters.torch import baselines as _torch_baselines

    fn = getattr(_torch_baselines, name)
    kwargs = {"alpha": 1.25, "n_iter": 8} if name == "entmax_bisect" else {}
    where = torch.rand(4, 7, generator=torch.Generator().manual_seed(6)) > 0.3
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*should not be instantiated", DeprecationWarning)
        explanation = torch._dynamo.explain(lambda x: fn(x, axis=1, where=where, xp=xpt, **kwargs))(
            randn(4, 7, seed=6)
        )
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
@compile_warnings[0]
@compile_warnings[1]
def test_torch_compile_forward_and_backward():
    x = randn(4, 7, seed=7)
    compiled = torch.compile(evs.sparsemax)
    out = compiled(x)
    torch.testing.assert_close(out, evs.sparsemax(x))
    weights = torch.linspace(-1, 1, 7, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    (expected,) = torch.autograd.grad((evs.sparsemax(x) * weights).sum(), x)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_torch_paths_agree_with_the_array_api_core(dtype):
    """The adapters' torch-native forwards and the array-API core, on the same tensors."""
    from array_api_compat import array_namespace

    from evsoftmax import _entmax, _softmax, _sparsemax

    x = (3 * randn(5, 8, seed=8).detach()).to(dtype)
    x[1, 2], x[2] = float("nan"), -torch.inf
    where = torch.rand(5, 8, generator=torch.Generator().manual_seed(8)) > 0.3
    xp = array_namespace(x)
    pairs = [
        (evs.softmax, _softmax.softmax, {}),
        (evs.log_softmax, _softmax.log_softmax, {}),
        (evs.sparsemax, _sparsemax.sparsemax, {}),
        (evs.entmax15, _entmax.entmax15, {}),
        (evs.entmax_bisect, _entmax.entmax_bisect, {"alpha": 1.25, "n_iter": 50}),
    ]
    for public, core, kwargs in pairs:
        expected = core(x, axis=1, where=where, xp=xp, **kwargs)
        got = public(x, where=where, **kwargs)
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, equal_nan=True, atol=1e-6, rtol=1e-6)
