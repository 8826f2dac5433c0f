"""The CUDA path of torch ev-attention (``adapters/torch/attention_cuda.py``).

On CPU the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``):
Triton decides at import whether it interprets, so without it in the
environment this module holds one test that runs the module again in a
subprocess with it set (as ``tests/test_torch_triton.py`` does). Expected
values come from the dense float64 reference (``tests/attention_reference.py``)
and, for gradients, from torch autograd through a dense float64 softmax whose
support is the reference's. The kernels' tiles are 16 x 16 here, so the small
shapes below span several query and key blocks. The tests at the end need a
CUDA device and are skipped, visibly, without one.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton", reason="triton is not installed (the CUDA path needs it)")
tl = triton.language

from . import attention_reference as ref  # noqa: E402
from . import reference  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available()


def _inputs(batch, length, keys, feats, values, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(*batch, n, e, generator=g, dtype=torch.float64, device="cpu").to(dtype)
        for n, e in ((length, feats), (keys, feats), (keys, values))
    )


def _masks(kind, shape, seed=1):
    """A boolean mask (True takes part) or an additive one (-inf and finite offsets)."""
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(shape, generator=g, device="cpu") > 0.35
    if kind == "bool":
        return keep
    offsets = torch.randn(shape, generator=g, dtype=torch.float64, device="cpu")
    return torch.where(keep, offsets, -math.inf)


def _np(x):
    return (
        None
        if x is None
        else x.detach().cpu().double().numpy()
        if x.dtype != torch.bool
        else x.cpu().numpy()
    )


def _dense(q, k, v, mask, is_causal, scale, eps):
    """Differentiable float64 ev-attention with the reference's support held fixed."""
    scores, valid = ref.scores_and_valid(_np(q), _np(k), _np(mask), is_causal, scale)
    rows, vrows = scores.reshape(-1, scores.shape[-1]), valid.reshape(-1, valid.shape[-1])
    support = np.stack([reference.support_row(r, m) for r, m in zip(rows, vrows, strict=True)])
    support = torch.from_numpy(support.reshape(scores.shape))
    valid = torch.from_numpy(valid.copy())
    s = scale * q @ k.transpose(-1, -2)
    if mask is not None and mask.dtype != torch.bool:
        s = s + torch.where(valid, mask, 0.0)
    log_off = math.log(eps / (1 + eps)) if eps > 0 else -math.inf
    s = torch.where(support, s, s + log_off).masked_fill(~valid, -math.inf)
    probs = torch.softmax(s, -1).nan_to_num(0.0)  # a row without valid keys: 0/0
    return probs @ v


if not INTERPRETED:

    @pytest.mark.slow
    def test_cuda_path_in_the_interpreter():
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert " passed" in done.stdout, done.stdout
        assert "skipped" not in done.stdout, done.stdout

    def test_kernels_compile_for_sm90():
        """Triton compiles the three kernels for an H100/H200 (sm_90) without a GPU (ptxas only)."""
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from evsoftmax.adapters.torch import attention_cuda as kernels

        if importlib.util.find_spec("triton.backends.nvidia") is None:
            pytest.skip("triton has no NVIDIA backend here")
        consts = {"HAS_MASK": True, "MASK_BOOL": True, "CAUSAL": True, "IEEE": 0, "KSUM": None}
        consts.update({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_E": 64, "BLOCK_EV": 64})
        types = {"MASK": "*u8", "MOFF": "*i64", "SIZE": "*i32", "msl": "i64", "mss": "i64"}
        for fn in (
            kernels._forward_kernel,
            kernels._backward_kv_kernel,
            kernels._backward_q_kernel,
        ):
            names = fn.arg_names
            signature, constexprs = {}, {(names.index("ACC"),): tl.float32}
            for n in names:
                if n in consts or n == "ACC":
                    signature[n] = "constexpr"
                    if n != "ACC":
                        constexprs[(names.index(n),)] = consts[n]
                elif n in types:
                    signature[n] = types[n]
                elif n in ("LSE", "CUT", "DELTA"):
                    signature[n] = "*fp32"
                elif n.isupper() and n not in ("L", "S", "E", "EV"):
                    signature[n] = "*fp16"
                else:
                    signature[n] = "fp32" if n.endswith(("_hi", "_lo")) else "i32"
            source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
            with warnings.catch_warnings():  # Triton 3.9's note on its FP-fusion default
                warnings.filterwarnings("ignore", "TRITON_DEFAULT_FP_FUSION", UserWarning)
                compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
            assert compiled.asm["cubin"], fn.__name__

    @pytest.mark.skipif(
        not CUDA, reason="needs a CUDA device (the real kernels; run by the GPU checks)"
    )
    @pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
    @pytest.mark.parametrize("causal", [False, True])
    def test_cuda_device_matches_the_blocked_torch_path(dtype, causal):
        from evsoftmax.adapters.torch import attention as blocked
        from evsoftmax.adapters.torch import attention_cuda as kernels

        dt = getattr(torch, dtype)
        q, k, v = (x.cuda().requires_grad_() for x in _inputs((2, 3), 300, 200, 64, 64, dt, seed=8))
        mask = (torch.rand(2, 1, 300, 200, device="cuda") > 0.2) if not causal else None
        out, sizes = kernels.attention(q, k, v, mask, causal, 0.125, 0.0)
        want, want_sizes = blocked.attention(q, k, v, mask, causal, 0.125, 0.0)
        tol = {"float32": 1e-5, "float16": 3e-3, "bfloat16": 2e-2}[dtype]
        torch.testing.assert_close(out.float(), want.float(), rtol=tol, atol=tol)
        assert (sizes - want_sizes).abs().max() <= 1
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), g)
        ref_grads = torch.autograd.grad(want, (q, k, v), g)
        for a, b in zip(got, ref_grads, strict=True):
            torch.testing.assert_close(
                a.float(), b.float(), rtol=10 * tol, atol=10 * tol * b.abs().max().item()
            )

else:
    from evsoftmax.adapters.torch import attention_cuda as kernels

    # (batch, L, S, E, Ev, mask kind, mask shape, is_causal, epsilon)
    CASES = [
        ((), 21, 35, 8, 5, None, None, False, 0.0),
        ((), 37, 19, 12, 12, None, None, True, 0.5),
        ((2, 1), 18, 33, 8, 6, "bool", (1, 18, 33), False, 0.0),
        ((1, 2), 34, 20, 16, 4, "bool", (2, 34, 1), True, 1e-3),
        ((2,), 17, 40, 6, 9, "additive", (17, 40), False, 0.0),
        ((2,), 33, 33, 8, 8, "additive", (2, 33, 33), True, 0.0),
    ]

    def _case_args(case, dtype=torch.float64):
        batch, length, keys, feats, values, kind, mshape, causal, eps = case
        q, k, v = _inputs(batch, length, keys, feats, values, dtype)
        if batch == (1, 2):  # keys and values broadcast over the query batch
            k, v = k[:, :1], v[:, :1]
        return q, k, v, _masks(kind, mshape), causal, 0.9 / math.sqrt(feats), eps

    @pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[5]}-causal{c[7]}-eps{c[8]}")
    def test_forward_and_support_match_the_reference(case):
        q, k, v, mask, causal, scale, eps = _case_args(case)
        out, sizes = kernels.attention(q, k, v, mask, causal, scale, eps)
        expected, expected_sizes = ref.ev_attention(
            _np(q), _np(k), _np(v), _np(mask), causal, scale, eps
        )
        assert out.dtype == torch.float64 and sizes.dtype == torch.int64
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-11, atol=1e-12)
        np.testing.assert_array_equal(sizes.numpy(), np.broadcast_to(expected_sizes, sizes.shape))

    @pytest.mark.parametrize("case", CASES[1::2], ids=lambda c: f"{c[5]}-causal{c[7]}-eps{c[8]}")
    def test_gradients_match_dense_autograd(case):
        q, k, v, mask, causal, scale, eps = _case_args(case)
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = kernels.attention(*leaves, mask, causal, scale, eps)[0]
        g = torch.Generator().manual_seed(3)
        d_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
        got = torch.autograd.grad(out, leaves, d_out)
        expected = torch.autograd.grad(_dense(*leaves, mask, causal, scale, eps), leaves, d_out)
        for name, a, b in zip("qkv", got, expected, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-11, err_msg=name)

    def test_fully_masked_queries_give_zeros_and_zero_gradient():
        q, k, v = (x.requires_grad_() for x in _inputs((2,), 20, 18, 8, 8, seed=4))
        mask = torch.ones(2, 20, 18, dtype=torch.bool)
        mask[0, 3] = False
        mask[1, 17:] = False  # a whole query block's tail
        out, sizes = kernels.attention(q, k, v, mask, False, 0.4, 0.1)
        expected, expected_sizes = ref.ev_attention(
            _np(q), _np(k), _np(v), _np(mask), False, 0.4, 0.1
        )
        np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-11, atol=1e-12)
        np.testing.assert_array_equal(sizes.numpy(), expected_sizes)
        assert (out[0, 3] == 0).all() and (out[1, 17:] == 0).all() and (sizes[0, 3] == 0)
        out.sum().backward()
        assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
        assert (q.grad[0, 3] == 0).all() and (q.grad[1, 17:] == 0).all()

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("magnitude", [1e-3, 1.0, 30.0])
    def test_identical_keys_keep_the_row_maximum(dtype, magnitude):
        """Equal scores in a row: uniform weights (the mean may round above them)."""
        q, _, v = _inputs((), 32, 23, 8, 4, dtype, seed=5)
        k = (magnitude * torch.linspace(-1, 1, 8, dtype=torch.float64)).to(dtype).expand(23, 8)
        out, sizes = kernels.attention(q * magnitude, k, v, None, False, 1.0 / 3.0, 0.0)
        assert (sizes == 23).all()
        expected = v.double().mean(0).expand(32, 4)
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        np.testing.assert_allclose(out.double().numpy(), expected.numpy(), rtol=tol, atol=tol)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("causal", [False, True])
    def test_half_precision_matches_the_reference(dtype, causal):
        q, k, v = _inputs((2,), 24, 31, 16, 8, dtype, seed=6)
        mask = _masks("additive", (24, 31)).to(dtype) if causal else None
        out, sizes = kernels.attention(q, k, v, mask, causal, 0.25, 0.0)
        assert out.dtype == dtype
        expected, expected_sizes = ref.ev_attention(_np(q), _np(k), _np(v), _np(mask), causal, 0.25)
        tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
        np.testing.assert_allclose(out.double().numpy(), expected, rtol=tol, atol=tol)
        # Scores within rounding of the mean may land either side in half precision.
        assert np.abs(sizes.numpy() - expected_sizes).max() <= 1
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        grads = torch.autograd.grad(
            kernels.attention(*leaves, mask, causal, 0.25, 0.0)[0].sum(), leaves
        )
        wide = [x.double().requires_grad_() for x in (q, k, v)]
        wide_mask = None if mask is None else mask.double()
        expected = torch.autograd.grad(_dense(*wide, wide_mask, causal, 0.25, 0.0).sum(), wide)
        for name, a, b in zip("qkv", grads, expected, strict=True):
            assert a.dtype == dtype
            scale = b.abs().max().item()
            np.testing.assert_allclose(
                a.double().numpy(), b.numpy(), atol=8 * tol * scale, err_msg=name
            )

    def test_front_door_routes_kernel_devices_here(monkeypatch):
        import evsoftmax._torch_attention as front
        import evsoftmax.torch as evt

        calls = []
        real = kernels.attention
        monkeypatch.setattr(front, "_KERNEL_DEVICES", frozenset({"cuda", "cpu"}))
        monkeypatch.setattr(kernels, "attention", lambda *a: calls.append(a) or real(*a))
        q, k, v = _inputs((2, 2), 9, 12, 8, 8, torch.float32, seed=7)
        out, sizes = evt.ev_attention(q, k, v, is_causal=True, epsilon=0.2, return_support=True)
        assert len(calls) == 1
        expected, expected_sizes = ref.ev_attention(_np(q), _np(k), _np(v), None, True, None, 0.2)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(sizes.numpy(), expected_sizes)
        evt.ev_attention(q.double(), k.double(), v.double())  # float64 stays on the torch algorithm
        assert len(calls) == 1
        # torch.func transforms, whose backward a Triton launch cannot serve, too.
        grad_q = torch.func.grad(lambda x: evt.ev_attention(x, k, v, is_causal=True).sum())(q)
        assert len(calls) == 1
        leaf = q.double().requires_grad_()
        dense = _dense(leaf, k.double(), v.double(), None, True, 1 / math.sqrt(8), 0.0)
        (expected_grad,) = torch.autograd.grad(dense.sum(), leaf)
        np.testing.assert_allclose(grad_q.numpy(), expected_grad.numpy(), rtol=1e-4, atol=1e-5)
