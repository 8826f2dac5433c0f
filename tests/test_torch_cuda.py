"""ev-softmax on CUDA tensors (the Triton kernels), against the float64 CPU reference.

Skipped without a CUDA GPU; ``benchmarks/gpu_torch.py`` runs it on a GPU machine.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("triton", reason="the CUDA kernels need triton")

import evsoftmax.torch as evt  # noqa: E402
from evsoftmax.adapters.torch import triton as _torch_triton  # noqa: E402

from . import reference as ref  # noqa: E402
from .closed_forms import ev_softmax_vjp, log_ev_softmax_vjp, no_ties  # noqa: E402

CUDA = torch.device("cuda")
SHAPES = [(7, 37), (33, 1000), (4, 8192), (3, 20000)]  # the last one is chunked


_no_ties = functools.partial(no_ties, gap=1e-4)


@pytest.fixture
def calls(monkeypatch):
    seen = []
    for name in ("forward", "softmax_vjp", "log_softmax_vjp"):
        original = getattr(_torch_triton, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            seen.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(_torch_triton, name, spy)
    return seen


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_forward_backward_float64(calls, shape, log, epsilon):
    x = _no_ties(shape, seed=shape[1])
    x[0, 1] = -np.inf
    where = np.ones(shape, dtype=bool)
    where[:, 2::7] = False
    valid = np.isfinite(x) & where
    g = np.random.default_rng(1).normal(size=shape)
    xt = torch.tensor(x, device=CUDA, requires_grad=True)
    f = evt.log_ev_softmax if log else evt.ev_softmax
    out = f(xt, epsilon=epsilon, where=torch.tensor(where, device=CUDA))
    out.backward(torch.tensor(g, device=CUDA))
    assert calls == ["forward", "log_softmax_vjp" if log else "softmax_vjp"]
    expected = (ref.log_ev_softmax if log else ref.ev_softmax)(x, -1, epsilon, where)
    np.testing.assert_allclose(out.detach().cpu().numpy(), expected, rtol=1e-10, atol=1e-12)
    p = ref.ev_softmax(x, eps=epsilon, where=where)
    grad = log_ev_softmax_vjp(p, g, valid) if log else ev_softmax_vjp(p, g)
    np.testing.assert_allclose(xt.grad.cpu().numpy(), grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_reduced_precision_unmasked(calls, shape, dtype):
    torch_dtype = getattr(torch, dtype)
    xt = torch.tensor(_no_ties(shape, seed=2), dtype=torch_dtype, device=CUDA)
    out = evt.ev_softmax(xt, epsilon=1e-6)
    assert calls == ["forward"]
    assert out.dtype == torch_dtype
    expected = ref.ev_softmax(xt.double().cpu().numpy(), eps=1e-6)
    tol = 4 * torch.finfo(torch_dtype).eps
    np.testing.assert_allclose(out.double().cpu().numpy(), expected, rtol=tol, atol=tol)


def test_special_rows():
    x = torch.tensor(
        [[1.0, float("nan"), 0.0], [float("inf"), 1.0, 0.0], [-float("inf")] * 3, [0.4, 1.4, -0.8]],
        device=CUDA,
    )
    out = evt.ev_softmax(x).cpu()
    assert out[0].isnan().all()
    assert out[1].isnan().all()
    assert (out[2] == 0).all()
    np.testing.assert_allclose(
        out[3].numpy(), ref.ev_softmax(np.array([0.4, 1.4, -0.8])), rtol=1e-6
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_double_backward_and_compile_on_cuda():
    x = torch.tensor(_no_ties((3, 9), seed=3), device=CUDA, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: evt.ev_softmax(v, -1, 0.1), x)
    compiled = torch.compile(lambda v: evt.ev_softmax(v, -1, 0.1), fullgraph=True)
    torch.testing.assert_close(compiled(x), evt.ev_softmax(x, -1, 0.1))
