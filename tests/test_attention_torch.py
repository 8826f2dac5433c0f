"""torch ev-attention: closed-form gradients, the front door, compile, EvMultiheadAttention.

Gradients are checked by finite differences (``gradcheck``) and values against
the dense float64 reference of ``tests/attention_reference.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import evsoftmax as evs  # noqa: E402
import evsoftmax._attention as attention_module  # noqa: E402
import evsoftmax.torch as evt  # noqa: E402

from . import attention_reference as ref  # noqa: E402
from . import reference  # noqa: E402


def _qkv(shape_q, shape_k, values, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_q, generator=gen, dtype=dtype)
    k = torch.randn(*shape_k, generator=gen, dtype=dtype)
    v = torch.randn(*shape_k[:-1], values, generator=gen, dtype=dtype)
    return q, k, v


def _masks():
    gen = torch.Generator().manual_seed(1)
    bool_mask = torch.rand(5, 7, generator=gen) > 0.35
    bool_mask[2] = False  # a fully masked query
    float_mask = torch.where(torch.rand(2, 1, 5, 7, generator=gen) > 0.3, 0.5, -math.inf)
    return {
        "none": (None, False),
        "causal": (None, True),
        "bool": (bool_mask, False),
        "bool+causal": (bool_mask, True),
        "float-inf": (float_mask, False),
        "float+causal": (float_mask, True),
    }


@pytest.mark.parametrize("kind", sorted(_masks()))
@pytest.mark.parametrize("epsilon", [0.0, 0.3])
@pytest.mark.parametrize("elements", [None, 7])
def test_gradcheck(kind, epsilon, elements, monkeypatch):
    """dq, dk, dv by finite differences, in one block and across many."""
    if elements is not None:
        monkeypatch.setattr(attention_module, "_BLOCK_ELEMENTS", elements)
    mask, is_causal = _masks()[kind]
    q, k, v = (a.requires_grad_() for a in _qkv((2, 3, 5, 4), (2, 3, 7, 4), 3))

    def fn(q, k, v):
        return evt.ev_attention(q, k, v, mask, is_causal, epsilon=epsilon)

    assert torch.autograd.gradcheck(fn, (q, k, v))
    out = fn(q, k, v)
    want, _ = ref.ev_attention(
        q.detach().numpy(),
        k.detach().numpy(),
        v.detach().numpy(),
        None if mask is None else mask.numpy(),
        is_causal,
        eps=epsilon,
    )
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_func_grad_and_vmap_match_the_reference(dtype):
    """torch.func transforms take the torch-op blocks (the row kernel reads raw pointers)."""
    q, k, v = _qkv((2, 5, 4), (2, 7, 4), 3, seed=4, dtype=dtype)
    mask, _ = _masks()["bool"]
    c = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(5), dtype=dtype)
    grad_v = torch.func.grad(lambda v: (evt.ev_attention(q, k, v, mask) * c).sum())(v)
    # o = P v, so d/dv sum(c * o) = P^T c, with P the float64 reference weights.
    probs = ref.probabilities(q.numpy(), k.numpy(), mask.numpy())
    expected = np.swapaxes(probs, -1, -2) @ c.double().numpy()
    np.testing.assert_allclose(grad_v.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    batched = torch.func.vmap(lambda q: evt.ev_attention(q, k[0], v[0], mask))(q)
    expected_out, _ = ref.ev_attention(q.numpy(), k[0].numpy(), v[0].numpy(), mask.numpy())
    np.testing.assert_allclose(batched.double().numpy(), expected_out, rtol=1e-5, atol=1e-6)


def test_fully_masked_queries_have_zero_gradient():
    q, k, v = (a.requires_grad_() for a in _qkv((4, 3), (6, 3), 2))
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1] = False
    out = evt.ev_attention(q, k, v, mask)
    out.sum().backward()
    assert torch.all(out[1] == 0.0)
    assert torch.all(q.grad[1] == 0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision_accumulates_in_float32(dtype):
    q, k, v = _qkv((2, 6, 8), (2, 9, 8), 4, seed=2, dtype=dtype)
    q, k, v = (a.requires_grad_() for a in (q, k, v))
    out = evt.ev_attention(q, k, v, is_causal=True)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert q.grad.dtype == dtype and k.grad.dtype == dtype and v.grad.dtype == dtype
    want, _ = ref.ev_attention(*(a.detach().double().numpy() for a in (q, k, v)), is_causal=True)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    np.testing.assert_allclose(out.detach().double().numpy(), want, rtol=tol, atol=tol)


def test_top_level_dispatches_to_the_torch_path():
    q, k, v = (a.requires_grad_() for a in _qkv((3, 4), (5, 4), 2, seed=3))
    out, size = evs.ev_attention(q, k, v, is_causal=True, return_support=True)
    out.sum().backward()
    assert q.grad is not None and size.dtype == torch.int64
    front, front_size = evt.ev_attention(q, k, v, is_causal=True, return_support=True)
    torch.testing.assert_close(out, front)
    torch.testing.assert_close(size, front_size)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attn_mask": torch.ones(3, 2, dtype=torch.bool)}, ValueError, "attn_mask with shape"),
        ({"attn_mask": torch.ones(3, 4, dtype=torch.int64)}, TypeError, "attn_mask must be"),
        ({"scale": math.inf}, ValueError, "scale must be a finite"),
        ({"epsilon": -0.1}, ValueError, "epsilon must be a finite"),
        ({"is_causal": "yes"}, TypeError, "is_causal must be a bool"),
    ],
)
def test_front_door_errors_name_the_argument(kwargs, error, match):
    q, k, v = _qkv((3, 2), (4, 2), 2)
    with pytest.raises(error, match=match):
        evt.ev_attention(q, k, v, **kwargs)
    with pytest.raises(TypeError, match=r"query must be a torch\.Tensor"):
        evt.ev_attention(np.ones((3, 2)), k, v)


# Dynamo instantiates autograd.Function internally, which warns (see test_torch_compile.py).
COMPILE_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@COMPILE_WARNINGS
@pytest.mark.parametrize("kind", ["none", "causal", "bool+causal"])
def test_compiles_with_fullgraph(kind):
    mask, is_causal = _masks()[kind]
    q, k, v = _qkv((2, 3, 5, 4), (2, 3, 7, 4), 3, dtype=torch.float32)

    def fn(q, k, v):
        return evt.ev_attention(q, k, v, mask, is_causal, epsilon=0.1)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    leaves = [a.clone().requires_grad_() for a in (q, k, v)]
    eager_leaves = [a.clone().requires_grad_() for a in (q, k, v)]
    got, want = compiled(*leaves), fn(*eager_leaves)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    want.sum().backward()
    for a, b in zip(leaves, eager_leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def _reference_softmax(epsilon):
    """nn.MultiheadAttention's softmax replaced by the float64 reference ev-softmax."""

    def softmax(x, dim=-1, dtype=None, **_kwargs):
        assert dim == -1
        probs = reference.ev_softmax(x.detach().double().numpy(), eps=epsilon)
        return torch.as_tensor(probs, dtype=x.dtype)

    return softmax


MHA_CASES = {
    "plain": ({}, {}),
    "batch-first": ({"batch_first": True}, {}),
    "kdim-vdim": ({"kdim": 5, "vdim": 3}, {}),
    "no-bias": ({"bias": False}, {}),
    "bias-kv": ({"add_bias_kv": True}, {"key_padding_mask": True}),
    "zero-attn": ({"add_zero_attn": True}, {"attn_mask": "bool"}),
    "padding": ({}, {"key_padding_mask": True}),
    "attn-bool": ({}, {"attn_mask": "bool"}),
    "attn-float": ({}, {"attn_mask": "float"}),
    "attn-3d": ({}, {"attn_mask": "3d"}),
    "causal": ({}, {"attn_mask": "causal", "is_causal": True}),
    "unbatched": ({}, {"unbatched": True}),
}


@pytest.mark.parametrize("case", sorted(MHA_CASES))
@pytest.mark.parametrize("training", [False, True])
def test_multihead_attention_matches_nn_with_reference_softmax(case, training, monkeypatch):
    """Same weights, same arguments: nn.MultiheadAttention with ev-softmax as its softmax."""
    ctor, fwd = MHA_CASES[case]
    embed, heads, batch, length, keys = 8, 2, 3, 4, 6
    torch.manual_seed(0)
    ours = EvMHA = evt.EvMultiheadAttention(embed, heads, dtype=torch.float64, epsilon=0.2, **ctor)
    theirs = torch.nn.MultiheadAttention(embed, heads, dtype=torch.float64, **ctor)
    ours.load_state_dict(theirs.state_dict())
    ours.train(training)
    theirs.train(training)
    assert EvMHA.training == training
    gen = torch.Generator().manual_seed(1)
    kdim, vdim = ctor.get("kdim", embed), ctor.get("vdim", embed)
    first = (batch, length) if ctor.get("batch_first") else (length, batch)
    firstk = (batch, keys) if ctor.get("batch_first") else (keys, batch)
    if fwd.get("unbatched"):
        first, firstk = (length,), (keys,)
    query = torch.randn(*first, embed, generator=gen, dtype=torch.float64)
    key = torch.randn(*firstk, kdim, generator=gen, dtype=torch.float64)
    value = torch.randn(*firstk, vdim, generator=gen, dtype=torch.float64)
    kwargs = {}
    if fwd.get("key_padding_mask"):
        pad = torch.zeros(batch, keys, dtype=torch.bool)
        pad[0, -2:] = True
        kwargs["key_padding_mask"] = pad
    if fwd.get("attn_mask") == "bool":
        kwargs["attn_mask"] = torch.rand(length, keys, generator=gen) > 0.7
    elif fwd.get("attn_mask") == "float":
        kwargs["attn_mask"] = torch.randn(length, keys, generator=gen, dtype=torch.float64)
    elif fwd.get("attn_mask") == "3d":
        kwargs["attn_mask"] = torch.rand(batch * heads, length, keys, generator=gen) > 0.7
    elif fwd.get("attn_mask") == "causal":
        kwargs["attn_mask"] = torch.ones(length, keys, dtype=torch.bool).triu(1)
        kwargs["is_causal"] = True
    out, weights = ours(query, key, value, average_attn_weights=False, **kwargs)
    monkeypatch.setattr(
        torch.nn.functional, "softmax", _reference_softmax(0.2 if training else 0.0)
    )
    want, want_weights = theirs(query, key, value, average_attn_weights=False, **kwargs)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(weights, want_weights, rtol=1e-10, atol=1e-10)
    avg = ours(query, key, value, **kwargs)[1]
    torch.testing.assert_close(avg, want_weights.mean(dim=-3), rtol=1e-10, atol=1e-10)
    assert ours(query, key, value, need_weights=False, **kwargs)[1] is None


@pytest.mark.slow
@COMPILE_WARNINGS
def test_multihead_attention_trains_and_compiles():
    torch.manual_seed(0)
    mha = evt.EvMultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8)
    out, _ = mha(x, x, x, need_weights=False)
    out.sum().backward()
    assert all(p.grad is not None for p in mha.parameters())
    compiled = torch.compile(mha, fullgraph=True, backend="aot_eager")
    got, _ = compiled(x, x, x, need_weights=False)
    torch.testing.assert_close(got, mha(x, x, x, need_weights=False)[0])


def test_multihead_attention_rejects_dropout():
    with pytest.raises(ValueError, match="dropout must be 0"):
        evt.EvMultiheadAttention(8, 2, dropout=0.1)


@COMPILE_WARNINGS
def test_top_level_function_compiles_with_fullgraph():
    """``evs.ev_attention`` seen by Dynamo routes to the traceable torch front door."""
    q, k, v = _qkv((2, 5, 4), (2, 6, 4), 3, dtype=torch.float32)

    def fn(q, k, v):
        return evs.ev_attention(q, k, v, is_causal=True, return_support=True)

    got, got_size = torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v)
    want, want_size = fn(q, k, v)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_size, want_size)
