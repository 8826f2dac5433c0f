"""``evsoftmax.integrations.transformers``: ``attn_implementation="ev_softmax"`` (torch session).

A tiny randomly initialized Llama (2 layers, 4 query heads over 2 key/value
heads, float64, no downloads) runs with ``"ev_softmax"`` and, with the same
weights, with a reference attention registered here: dense float64 scores,
the mask ``transformers`` itself builds (always materialized, so the
reference never relies on a causal flag), ev-softmax per row written from the
math (valid mean, support, ``(1{support} + ε) e^x``), times the values. The
reference agrees with ``tests/attention_reference.py`` (checked below).
"""

from __future__ import annotations

import doctest
import os

import numpy as np
import pytest

from .backends import selected

if "torch" not in selected():
    pytest.skip("runs in the torch test session", allow_module_level=True)
# The models are built from configs: nothing to fetch, and nothing may be.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
# One worker runs this module, and imports transformers (~6 s) when its tests
# start, not while pytest collects.
pytestmark = pytest.mark.xdist_group("test_integrations_transformers")

from . import attention_reference  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _transformers_modules() -> None:
    global transformers, AttentionInterface, AttentionMaskInterface, eager_mask, sdpa_mask
    global evt, evs_hf
    transformers = pytest.importorskip("transformers", minversion="5")
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask, sdpa_mask

    import evsoftmax.torch as evt
    from evsoftmax.integrations import transformers as evs_hf


REFERENCE = "ev_reference"  # the test's dense float64 attention
EAGER_FILL = "ev_softmax_eager_fill"  # ev-attention fed the eager finfo.min mask as is
EPS = 0.1  # training ε: large enough that the ε family differs visibly from ε = 0


def _ev_softmax_rows(scores, valid, eps):
    """ev-softmax of each row over its valid entries, in float64 torch (differentiable)."""
    count = valid.sum(-1, keepdim=True)
    mean = torch.where(valid, scores, 0.0).sum(-1, keepdim=True) / count.clamp(min=1)
    row_max = torch.where(valid, scores, -torch.inf).amax(-1, keepdim=True)
    support = valid & ((scores >= mean) | (scores == row_max))
    shifted = torch.where(valid, scores - torch.where(count > 0, row_max, 0.0), -torch.inf)
    weights = (support.to(scores.dtype) + eps) * torch.exp(shifted)
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total > 0, total, 1.0)


def _dense(query, key, value, valid, scaling, eps):
    """Dense float64 ev-attention ``(B, H, L, Ev)`` with repeated key/value heads."""
    groups = query.shape[1] // key.shape[1]
    key, value = (x.double().repeat_interleave(groups, dim=1) for x in (key, value))
    scores = scaling * query.double() @ key.transpose(-1, -2)
    probs = _ev_softmax_rows(scores, valid.expand(scores.shape), eps)
    return probs @ value, probs


def _reference_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
    assert attention_mask is not None and attention_mask.dtype == torch.bool
    eps = EPS if module.training else 0.0
    out, probs = _dense(query, key, value, attention_mask, scaling, eps)
    return out.to(query.dtype).transpose(1, 2).contiguous(), probs.to(query.dtype)


def _materialized_mask(*args, **kwargs):
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _eager_fill_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
    """ev-attention given the eager mask (0 / finfo.min) unchanged: what register() avoids."""
    groups = query.shape[1] // key.shape[1]
    key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
    out = evt.ev_attention(query, key, value, attention_mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


@pytest.fixture(scope="module")
def model():
    evs_hf.register()
    AttentionInterface.register(REFERENCE, _reference_attention)
    AttentionMaskInterface.register(REFERENCE, _materialized_mask)
    AttentionInterface.register(EAGER_FILL, _eager_fill_attention)
    AttentionMaskInterface.register(EAGER_FILL, eager_mask)
    torch.manual_seed(0)
    return _llama(evs_hf.NAME)


def _llama(attn_implementation):
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,  # scores of order 1: supports well inside each row
        pad_token_id=0,
        attn_implementation=attn_implementation,
    )
    return transformers.LlamaForCausalLM(config).to(torch.float64).eval()


@pytest.fixture(scope="module")
def batch():
    """Two sequences of 7 tokens, the first left-padded by 3."""
    ids = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0
    ids[0, :3] = 0
    return ids, mask


def _logits(model, implementation, ids, mask=None, **kwargs):
    model.set_attn_implementation(implementation)
    try:
        with torch.no_grad():
            return model(ids, attention_mask=mask, **kwargs).logits
    finally:
        model.set_attn_implementation(evs_hf.NAME)


def test_reference_matches_the_shared_dense_reference():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 5, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 6, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    valid = torch.rand(2, 1, 5, 6, generator=gen) > 0.3
    valid[0, 0, 1] = False  # a query without keys
    for eps in (0.0, EPS):
        out, _ = _dense(q, k, v, valid, 0.4, eps)
        kr, vr = (x.repeat_interleave(2, dim=1).numpy() for x in (k, v))
        expected, _ = attention_reference.ev_attention(
            q.numpy(), kr, vr, valid.numpy(), scale=0.4, eps=eps
        )
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_register_is_idempotent_and_names_both_functions(model):
    evs_hf.register()
    evs_hf.register()
    assert AttentionInterface()[evs_hf.NAME] is evs_hf.ev_softmax_attention_forward
    assert AttentionMaskInterface()[evs_hf.NAME] is evs_hf.ev_softmax_mask
    assert model.config._attn_implementation == evs_hf.NAME


def test_logits_match_reference_attention(model, batch):
    ids = batch[0][1:]
    ev = _logits(model, evs_hf.NAME, ids)
    reference = _logits(model, REFERENCE, ids)
    torch.testing.assert_close(ev, reference, rtol=1e-10, atol=1e-10)
    # ev-softmax, not softmax: the model's own sdpa attention gives other logits.
    assert (ev - _logits(model, "sdpa", ids)).abs().max() > 1e-3


def test_padded_keys_are_excluded(model, batch):
    ids, mask = batch
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded tokens
    ev = _logits(model, evs_hf.NAME, ids, mask, position_ids=positions)
    reference = _logits(model, REFERENCE, ids, mask, position_ids=positions)
    torch.testing.assert_close(ev, reference, rtol=1e-10, atol=1e-10)
    # Padding does not change the real tokens: the padded row equals the unpadded sequence.
    alone = _logits(model, REFERENCE, ids[:1, 3:])
    torch.testing.assert_close(ev[:1, 3:], alone, rtol=1e-10, atol=1e-10)
    # The eager mask fills padded and future keys with finfo.min, which drags the
    # thresholds down: other logits for both sequences.
    filled = _logits(model, EAGER_FILL, ids, mask, position_ids=positions)
    assert ((filled - ev)[:, 3:].abs().amax(dim=(1, 2)) > 1e-3).all()


def test_prepared_eager_mask_counts_finfo_min_as_excluded(model, batch):
    ids, mask = batch
    valid = mask.bool()[:, None, None, :] & torch.ones(7, 7, dtype=torch.bool).tril()
    zero = torch.zeros((), dtype=torch.float64)
    eager = torch.where(valid, zero, torch.finfo(torch.float64).min)
    with torch.no_grad():
        ev = model(ids, attention_mask=eager).logits
    torch.testing.assert_close(ev, _logits(model, REFERENCE, ids, mask), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padded", [True, False], ids=["padding-mask", "causal-flag"])
def test_output_attentions_are_the_reference_weights(model, batch, padded):
    ids, mask = batch if padded else (batch[0][1:], None)  # no padding: no mask, is_causal
    attentions = {}
    for implementation in (evs_hf.NAME, REFERENCE):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            attentions[implementation] = model(
                ids, attention_mask=mask, output_attentions=True
            ).attentions
    model.set_attn_implementation(evs_hf.NAME)
    ev = attentions[evs_hf.NAME]
    assert len(ev) == 2 and ev[0].shape == (len(ids), 4, 7, 7)
    for got, expected in zip(ev, attentions[REFERENCE], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # Sparse: some causally valid (query, key) pairs of the last sequence get exactly 0.
    assert (ev[0][-1][torch.ones(7, 7).tril().bool().expand(4, 7, 7)] == 0).any()


def test_per_head_mask_and_grouped_heads():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 5, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 6, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    valid = torch.rand(2, 4, 5, 6, generator=gen) > 0.3
    module = torch.nn.Module().eval()
    out, _ = evs_hf.ev_softmax_attention_forward(module, q, k, v, valid, scaling=0.5)
    expected, _ = _dense(q, k, v, valid, 0.5, 0.0)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        evs_hf.ev_softmax_attention_forward(module, q, k, v, valid[:, :2])


def test_generate_matches_reference(model, batch):
    ids, mask = batch
    outputs = {}
    for implementation in (evs_hf.NAME, REFERENCE):
        model.set_attn_implementation(implementation)
        outputs[implementation] = model.generate(
            ids, attention_mask=mask, max_new_tokens=4, do_sample=False
        )
    model.set_attn_implementation(evs_hf.NAME)
    assert outputs[evs_hf.NAME].shape == (2, 11)
    assert torch.equal(outputs[evs_hf.NAME], outputs[REFERENCE])


def test_training_gradients_match_reference(model, batch):
    ids, mask = batch
    labels = ids.masked_fill(mask == 0, -100)
    params = [p for p in model.parameters() if p.requires_grad]
    model.config.ev_softmax_epsilon = EPS
    model.train()
    grads = {}
    try:
        for implementation in (evs_hf.NAME, REFERENCE):
            model.set_attn_implementation(implementation)
            loss = model(ids, attention_mask=mask, labels=labels).loss
            grads[implementation] = torch.autograd.grad(loss, params)
    finally:
        model.eval()
        del model.config.ev_softmax_epsilon
        model.set_attn_implementation(evs_hf.NAME)
    for got, expected in zip(grads[evs_hf.NAME], grads[REFERENCE], strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_set_attn_implementation_after_construction(model, batch):
    ids, mask = batch
    fresh = _llama("sdpa")
    fresh.load_state_dict(model.state_dict())
    fresh.set_attn_implementation(evs_hf.NAME)
    assert fresh.config._attn_implementation == evs_hf.NAME
    with torch.no_grad():
        got = fresh(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, _logits(model, REFERENCE, ids, mask), rtol=1e-10, atol=1e-10)


def test_refuses_dropout_and_unsupported_arguments():
    module = torch.nn.Module().train()
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="dropout"):
        evs_hf.ev_softmax_attention_forward(module, q, k, k, None, dropout=0.1)
    with pytest.raises(ValueError, match="softcap"):
        evs_hf.ev_softmax_attention_forward(module, q, k, k, None, softcap=30.0)
    with pytest.raises(ValueError, match="multiple"):
        evs_hf.ev_softmax_attention_forward(module, q, torch.randn(1, 3, 3, 4), k, None)


def test_docstring_examples():
    results = doctest.testmod(evs_hf, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted >= 3 and results.failed == 0
