"""The Triton kernels, run on CPU by Triton's interpreter (``TRITON_INTERPRET=1``).

Triton decides at import whether it interprets kernels, so without
``TRITON_INTERPRET=1`` in the environment this module holds a single test that
runs the module again in a subprocess with it set. Expected values come from
the float64 reference (``tests/reference.py``) and the closed-form derivatives
written out in NumPy. Shapes stay small: the interpreter runs kernels in NumPy,
one program at a time. The CUDA path itself is exercised by
``benchmarks/gpu_torch.py`` on a GPU machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton", reason="triton is not installed (the CUDA kernels need it)")

from . import reference as ref  # noqa: E402
from .closed_forms import ev_softmax_vjp, log_ev_softmax_vjp, no_ties  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if not INTERPRETED:

    @pytest.mark.slow
    def test_triton_kernels_in_the_interpreter():
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert " passed" in done.stdout, done.stdout
        assert "skipped" not in done.stdout, done.stdout

else:
    from evsoftmax.adapters.torch import triton as _torch_triton

    @pytest.fixture
    def kernels():
        return _torch_triton

    @pytest.fixture(params=["single-pass", "chunked"])
    def path(request, kernels, monkeypatch):
        """Run each test through the one-program-per-row kernel and the chunked kernels."""
        if request.param == "chunked":
            # Rows longer than 16 entries are split into 16-entry chunks (several per row).
            monkeypatch.setattr(kernels, "SINGLE_PASS_MAX", 16)
            monkeypatch.setattr(kernels, "CHUNK", 16)
        return request.param

    def _reference(x, epsilon, log, where=None, axis=-1):
        return (ref.log_ev_softmax if log else ref.ev_softmax)(x, axis, epsilon, where)

    @pytest.mark.parametrize("log", [False, True])
    @pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.5])
    def test_forward_matches_reference(kernels, path, epsilon, log):
        x = no_ties((3, 37), seed=1)  # not a power of two
        got = kernels.forward(torch.tensor(x), 1, epsilon, None, log).numpy()
        np.testing.assert_allclose(got, _reference(x, epsilon, log), rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("log", [False, True])
    def test_forward_with_masks_and_special_rows(kernels, path, log):
        x = no_ties((6, 41), seed=2)
        x[0, 3] = -np.inf
        x[1, 5] = np.nan  # masked out below: must not poison the row
        x[2, 7] = np.nan
        x[3, 1] = np.inf
        x[4, :] = -np.inf
        where = np.ones((6, 41), dtype=bool)
        where[:, ::4] = False
        where[1, 5] = False
        where[5, :] = False
        # (The interpreter computes in NumPy, which warns about inf - inf in poisoned rows.)
        with np.errstate(invalid="ignore"):
            expected = _reference(x, 0.1, log, where)
            got = kernels.forward(torch.tensor(x), 1, 0.1, torch.tensor(where), log).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        assert np.isnan(got[2]).all()
        assert np.isnan(got[3]).all()
        ok = ~np.isnan(expected)
        np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-12, atol=1e-12)

    def test_forward_broadcast_mask_and_other_axis(kernels, path):
        x = no_ties((4, 33), seed=3).T.copy()  # normalize along axis 0
        where = np.arange(33)[:, None] % 3 != 0  # (33, 1), broadcast over columns
        got = kernels.forward(torch.tensor(x), 0, 0.0, torch.tensor(where), False).numpy()
        expected = ref.ev_softmax(x, 0, 0.0, np.broadcast_to(where, x.shape))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
    @pytest.mark.parametrize("log", [False, True])
    def test_forward_reduced_precision(kernels, path, dtype, log):
        xt = torch.tensor(no_ties((3, 50), seed=4, gap=0.05), dtype=getattr(torch, dtype))
        got = kernels.forward(xt, 1, 0.1, None, log)
        assert got.dtype == xt.dtype
        expected = _reference(xt.double().numpy(), 0.1, log)  # the rounded inputs, in float64
        # accumulated in float32, rounded once to the output dtype
        out_eps = torch.finfo(xt.dtype).eps
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=2 * out_eps, atol=out_eps)

    def test_long_rows_use_several_chunks(kernels):
        # A real multi-chunk row with the default chunk size (slow in the interpreter: one row).
        x = no_ties((1, kernels.SINGLE_PASS_MAX + 300), seed=5)
        got = kernels.forward(torch.tensor(x), 1, 1e-6, None, False).numpy()
        np.testing.assert_allclose(got, ref.ev_softmax(x, eps=1e-6), rtol=1e-11, atol=1e-15)

    # --- backward ---------------------------------------------------------------------

    @pytest.mark.parametrize("epsilon", [0.0, 0.3])
    def test_softmax_vjp_is_closed_form(kernels, path, epsilon):
        x = no_ties((4, 45), seed=6)
        g = np.random.default_rng(1).normal(size=x.shape)
        p = ref.ev_softmax(x, eps=epsilon)
        got = kernels.softmax_vjp(torch.tensor(p), torch.tensor(g), 1).numpy()
        np.testing.assert_allclose(got, ev_softmax_vjp(p, g), rtol=1e-12, atol=1e-14)

    @pytest.mark.parametrize("epsilon", [0.0, 0.3])
    def test_log_softmax_vjp_is_closed_form_on_valid_entries(kernels, path, epsilon):
        x = no_ties((4, 45), seed=7)
        x[0, 2] = -np.inf
        where = np.ones(x.shape, dtype=bool)
        where[:, 1::5] = False
        valid = np.isfinite(x) & where
        g = np.random.default_rng(2).normal(size=x.shape)
        logp = ref.log_ev_softmax(x, eps=epsilon, where=where)
        p = np.exp(logp)
        # With epsilon = 0 the saved mask tells masked entries from those below the mean.
        mask = torch.tensor(valid) if epsilon == 0.0 else None
        got = kernels.log_softmax_vjp(torch.tensor(logp), torch.tensor(g), 1, mask).numpy()
        expected = log_ev_softmax_vjp(p, g, valid)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
        assert (got[~valid] == 0.0).all()

    @pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
    def test_vjp_half_precision(kernels, path, dtype):
        x = no_ties((3, 40), seed=8, gap=0.05)
        torch_dtype = getattr(torch, dtype)
        p = torch.tensor(ref.ev_softmax(x, eps=0.1), dtype=torch_dtype)
        g = torch.tensor(np.random.default_rng(3).normal(size=x.shape), dtype=torch_dtype)
        got = kernels.softmax_vjp(p, g, 1)
        assert got.dtype == torch_dtype
        pd, gd = p.double().numpy(), g.double().numpy()
        expected = ev_softmax_vjp(pd, gd)
        np.testing.assert_allclose(
            got.double().numpy(), expected, atol=4 * torch.finfo(torch_dtype).eps
        )

    # --- the kernels behind the public functions ------------------------------------

    @pytest.fixture
    def routed(kernels, monkeypatch):
        """Send CPU tensors through the (interpreted) kernels as CUDA tensors would go."""
        from evsoftmax.adapters.torch import autograd as _torch_autograd
        from evsoftmax.adapters.torch import ops as _torch_ops

        calls = []

        def spy(name):
            original = getattr(kernels, name)

            def wrapper(*args, **kwargs):
                calls.append(name)
                return original(*args, **kwargs)

            return wrapper

        for name in ("forward", "softmax_vjp", "log_softmax_vjp"):
            monkeypatch.setattr(kernels, name, spy(name))
        monkeypatch.setattr(kernels, "supports", lambda t: True)
        monkeypatch.setattr(_torch_autograd, "_TRITON_DEVICES", frozenset({"cuda", "cpu"}))
        monkeypatch.setattr(_torch_autograd, "_triton_module", lambda: kernels)
        monkeypatch.setattr(_torch_ops, "fast_path_applies", lambda x, where: False)
        return calls

    @pytest.mark.parametrize("log", [False, True])
    @pytest.mark.parametrize("epsilon", [0.0, 0.2])
    def test_public_functions_use_the_kernels(routed, epsilon, log):
        import evsoftmax.torch as evt

        x = no_ties((3, 21), seed=9)
        x[0, 4] = -np.inf
        where = np.ones(x.shape, dtype=bool)
        where[:, 2] = False
        valid = np.isfinite(x) & where
        g = np.random.default_rng(4).normal(size=x.shape)
        xt = torch.tensor(x, requires_grad=True)
        f = evt.log_ev_softmax if log else evt.ev_softmax
        out = f(xt, epsilon=epsilon, where=torch.tensor(where))
        out.backward(torch.tensor(g))
        assert routed == ["forward", "log_softmax_vjp" if log else "softmax_vjp"]
        expected = _reference(x, epsilon, log, where)
        np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
        p = ref.ev_softmax(x, eps=epsilon, where=where)
        grad = log_ev_softmax_vjp(p, g, valid) if log else ev_softmax_vjp(p, g)
        np.testing.assert_allclose(xt.grad.numpy(), grad, rtol=1e-12, atol=1e-14)

    def test_double_backward_through_the_routed_path(routed):
        import evsoftmax.torch as evt

        x = torch.tensor(no_ties((2, 9), seed=10), requires_grad=True)
        where = torch.ones(9, dtype=torch.bool)
        out = evt.ev_softmax(x, epsilon=0.1, where=where)
        torch.autograd.grad(out[:, 0].sum(), x, create_graph=True)
        # create_graph=True needs differentiable ops, so the backward kernel stays out
        assert routed == ["forward"]
        assert torch.autograd.gradgradcheck(lambda v: evt.ev_softmax(v, -1, 0.1, where), x)
