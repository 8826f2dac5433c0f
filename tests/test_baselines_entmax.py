"""Cross-check against the ``entmax`` package (Peters et al.'s reference implementation).

Test-only dependency of the torch backend (``backends/torch.txt``).
"""

from __future__ import annotations

import zlib

import pytest

torch = pytest.importorskip("torch")
entmax = pytest.importorskip("entmax")

import evsoftmax as evs  # noqa: E402

# (ours, theirs) for each map; the bisection ones at several alphas.
PAIRS = {
    "sparsemax": (evs.sparsemax, entmax.sparsemax),
    "entmax15": (evs.entmax15, entmax.entmax15),
    **{
        f"entmax_bisect_{a}": (
            lambda x, dim, a=a: evs.entmax_bisect(x, alpha=a, axis=dim),
            lambda x, dim, a=a: entmax.entmax_bisect(x, alpha=a, dim=dim),
        )
        for a in (1.25, 1.5, 2.0, 3.0)
    },
}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-6}


def _ours(fn, x, dim):
    return fn(x, axis=dim) if fn in (evs.sparsemax, evs.entmax15) else fn(x, dim)


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("shape", "dim", "scale"), [((8, 12), -1, 1.0), ((3, 40, 2), 1, 4.0)])
def test_forward_and_gradient_match_entmax(name, dtype, shape, dim, scale):
    ours, theirs = PAIRS[name]
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}{shape}".encode()))
    x = (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()
    cot = torch.randn(*shape, generator=g, dtype=dtype)
    x_ref = x.detach().clone().requires_grad_()
    p, p_ref = _ours(ours, x, dim), theirs(x_ref, dim)
    torch.testing.assert_close(p, p_ref, atol=TOLERANCE[dtype], rtol=0)
    (grad,) = torch.autograd.grad(p, x, cot)
    (grad_ref,) = torch.autograd.grad(p_ref, x_ref, cot)
    torch.testing.assert_close(grad, grad_ref, atol=10 * TOLERANCE[dtype], rtol=0)
