"""The compiled baseline kernels (``evsoftmax._ext._baseline_kernels``) through the public API.

Forwards against the float64 references of ``reference_baselines`` (and the
``entmax`` package), gradients against the closed form written here from the
math and against ``torch.autograd.gradcheck``; every test checks that the
kernel ran (a spy on ``_ext.baseline_rows`` / ``_ext.baseline_vjp_rows``).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import evsoftmax as evs
from evsoftmax import _ext

from . import reference_baselines as ref
from .baseline_cases import (
    CASES,
    MAPS,
    TOLERANCE,
    assert_matches,
    closed_form_vjp,
    expected_of,
    expected_row,
    rng_rows,
)
from .cpu_kernels import require_baseline_kernels


class _Spy:
    """Counts the calls to the kernels' entry points (and forwards them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.forward = self.vjp = 0
        forward, vjp = _ext.baseline_rows, _ext.baseline_vjp_rows

        def counted_forward(*args, **kwargs):
            self.forward += 1
            return forward(*args, **kwargs)

        def counted_vjp(*args, **kwargs):
            self.vjp += 1
            return vjp(*args, **kwargs)

        monkeypatch.setattr(_ext, "baseline_rows", counted_forward)
        monkeypatch.setattr(_ext, "baseline_vjp_rows", counted_vjp)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    require_baseline_kernels()
    monkeypatch.delenv("EVSOFTMAX_NO_CPU_KERNELS", raising=False)
    return _Spy(monkeypatch)


@pytest.mark.only_xp_backend("numpy")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", MAPS)
def test_numpy_kernel_matches_reference(name, case, dtype, spy):
    fn = MAPS[name][0]
    x = CASES[case].astype(dtype)
    out = fn(x)
    assert spy.forward == 1
    assert out.dtype == x.dtype
    assert_matches(out, expected_of(case, name, dtype), dtype)


@pytest.mark.only_xp_backend("numpy")
@pytest.mark.parametrize("name", MAPS)
def test_numpy_kernel_other_axis_and_mask(name, spy):
    fn = MAPS[name][0]
    x = rng_rows(3, (5, 4), 1.0)
    where = np.random.default_rng(4).random((5, 4)) > 0.3
    out = fn(x, axis=0, where=where)
    assert spy.forward == 1
    expected = ref.by_rows(lambda v: expected_row(name, v), x, axis=0, where=where)
    assert_matches(out, expected, "float64")


# -- torch ------------------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.only_xp_backend("torch")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", MAPS)
def test_torch_kernel_forward_and_backward(name, case, dtype, spy):
    torch = _torch()
    fn, alpha = MAPS[name]
    x = torch.tensor(CASES[case], dtype=getattr(torch, dtype), requires_grad=True)
    g = torch.from_numpy(rng_rows(5, x.shape, 1.0)).to(x.dtype)
    out = fn(x)
    out.backward(g)
    assert (spy.forward, spy.vjp) == (1, 1)
    expected = expected_of(case, name, dtype)
    assert_matches(out.detach().numpy(), expected, dtype)
    finite = np.isfinite(expected).all(axis=-1)  # NaN rows: no gradient to compare
    grad = x.grad.numpy()[finite]
    expected_grad = closed_form_vjp(expected[finite], g.double().numpy()[finite], alpha)
    np.testing.assert_allclose(grad, expected_grad, atol=20 * TOLERANCE[dtype], rtol=0)


@pytest.mark.only_xp_backend("torch")
@pytest.mark.parametrize("name", MAPS)
def test_torch_kernel_gradcheck(name, spy):
    torch = _torch()
    fn = MAPS[name][0]
    x = torch.tensor(rng_rows(6, (4, 7), 1.0), requires_grad=True)
    where = torch.ones(4, 7, dtype=torch.bool)
    where[1, :3] = False

    def masked(x):
        return fn(x, where=where)

    assert torch.autograd.gradcheck(masked, (x,))
    assert spy.forward > 0 and spy.vjp > 0


@pytest.mark.only_xp_backend("torch")
@pytest.mark.parametrize("name", MAPS)
def test_torch_kernel_matches_entmax_package(name, spy):
    torch = _torch()
    entmax = pytest.importorskip("entmax")
    fn, alpha = MAPS[name]
    theirs = {"sparsemax": entmax.sparsemax, "entmax15": entmax.entmax15}.get(
        name, functools.partial(entmax.entmax_bisect, alpha=alpha)
    )
    x = torch.tensor(rng_rows(7, (5, 40), 2.0), dtype=torch.float32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = torch.from_numpy(rng_rows(8, (5, 40), 1.0)).float()
    out, out_ref = fn(x), theirs(x_ref, dim=-1)
    torch.testing.assert_close(out, out_ref, atol=2e-6, rtol=0)
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_ref,) = torch.autograd.grad(out_ref, x_ref, g)
    torch.testing.assert_close(grad, grad_ref, atol=2e-5, rtol=0)
    assert (spy.forward, spy.vjp) == (1, 1)


@pytest.mark.only_xp_backend("torch")
@pytest.mark.parametrize("name", MAPS)
def test_torch_kernel_layouts_and_half(name, spy):
    """Axis 0 of a non-contiguous tensor, and float16 (computed in float32)."""
    torch = _torch()
    fn = MAPS[name][0]
    base = torch.from_numpy(rng_rows(9, (6, 10), 1.0))
    x = base.t()[::2]  # (5, 6), non-contiguous
    out = fn(x, axis=0)
    assert_matches(out.numpy(), ref.by_rows(lambda v: expected_row(name, v), x, 0), "float64")
    half = fn(base.half())
    assert half.dtype == torch.float16
    expected = ref.by_rows(lambda v: expected_row(name, v), base.half().double())
    np.testing.assert_allclose(half.double().numpy(), expected, atol=2e-3, rtol=0)
    assert spy.forward == 2


@pytest.mark.only_xp_backend("torch")
def test_torch_double_backward_uses_the_formula(spy):
    """create_graph needs a differentiable backward: the kernel VJP is not used there."""
    torch = _torch()
    x = torch.tensor(rng_rows(10, (3, 6), 1.0), requires_grad=True)
    (grad,) = torch.autograd.grad(evs.entmax15(x).square().sum(), x, create_graph=True)
    assert (spy.forward, spy.vjp) == (1, 0)
    assert grad.requires_grad
    assert torch.autograd.gradgradcheck(evs.entmax15, (x,))


@pytest.mark.only_xp_backend("numpy")
def test_kernel_rejects_bad_arguments():
    require_baseline_kernels()
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="itemsize"):
        _ext.baseline_rows(
            "sparsemax", x.ctypes.data, x.ctypes.data, rows=2, length=3, itemsize=2, threads=1
        )
    with pytest.raises(ValueError, match="alpha"):
        _ext.baseline_rows(
            "entmax_bisect",
            x.ctypes.data,
            x.ctypes.data,
            rows=2,
            length=3,
            itemsize=8,
            threads=1,
            alpha=1.0,
        )


# The threading is the same for every map: one of each kernel (bisection with a general power).
@pytest.mark.only_xp_backend("torch")
@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "bisect_1.25"])
def test_torch_kernel_on_threads_matches_sort_based_ops(name, spy, monkeypatch):
    """A shape the kernels split over PyTorch's threads, against the sort-based torch ops.

    In float64: in float32 the ops' bisection is the less accurate of the two
    (its threshold is float32, the kernel's float64).
    """
    torch = _torch()
    fn = MAPS[name][0]
    x = torch.from_numpy(rng_rows(11, (16, 4096), 2.0)).requires_grad_()
    g = torch.from_numpy(rng_rows(12, (16, 4096), 1.0))
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x, g)
    assert (spy.forward, spy.vjp) == (1, 1)
    monkeypatch.setenv("EVSOFTMAX_NO_CPU_KERNELS", "1")
    out_ops = fn(x)
    (grad_ops,) = torch.autograd.grad(out_ops, x, g)
    assert (spy.forward, spy.vjp) == (1, 1)
    torch.testing.assert_close(out, out_ops, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad, grad_ops, atol=1e-9, rtol=0)


@pytest.mark.only_xp_backend("torch")
def test_torch_jit_trace_records_the_ops_not_the_kernel(spy):
    """A trace cannot see the kernel's writes: it records the torch ops, valid for new inputs."""
    torch = _torch()
    x = torch.tensor(rng_rows(13, (3, 5), 1.0))
    with warnings.catch_warnings():
        # Deprecated, and it warns about the Python-level shape checks it records as constants.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(evs.sparsemax, (x,), check_trace=False)
    assert spy.forward == 0
    other = torch.tensor(rng_rows(14, (3, 5), 1.0))
    assert_matches(traced(other).numpy(), ref.sparsemax(other.numpy()), "float64")
