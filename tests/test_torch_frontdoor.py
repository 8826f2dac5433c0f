"""``evsoftmax.torch``: functions, modules and ``EvSoftmaxLoss`` against float64 references."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import evsoftmax as evs  # noqa: E402
import evsoftmax.torch as evt  # noqa: E402

from . import reference as ref  # noqa: E402
from .closed_forms import no_ties  # noqa: E402

_no_ties = functools.partial(no_ties, scale=2.0)


def _t(a, dtype=torch.float64):
    return torch.tensor(np.asarray(a), dtype=dtype)


# --- functions --------------------------------------------------------------------


def test_public_names():
    assert sorted(evt.__all__) == [
        "EvMultiheadAttention",
        "EvSoftmax",
        "EvSoftmaxLoss",
        "LogEvSoftmax",
        "ev_attention",
        "ev_softmax",
        "ev_softmax_support",
        "log_ev_softmax",
    ]


@pytest.mark.parametrize("epsilon", [0.0, 0.2])
@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_functions_match_reference_and_top_level(dim, epsilon):
    x = _no_ties((4, 6, 5), seed=dim + 4, axis=dim)
    p = evt.ev_softmax(_t(x), dim=dim, epsilon=epsilon)
    lp = evt.log_ev_softmax(_t(x), dim, epsilon)
    np.testing.assert_allclose(p.numpy(), ref.ev_softmax(x, dim, epsilon), rtol=1e-12)
    expected = ref.log_ev_softmax(x, dim, epsilon)
    np.testing.assert_allclose(lp.numpy(), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(
        p.numpy(), evs.ev_softmax(_t(x), axis=dim, epsilon=epsilon).numpy()
    )


def test_default_dim_is_last_and_epsilon_zero():
    x = _no_ties((3, 7), seed=1)
    np.testing.assert_allclose(evt.ev_softmax(_t(x)).numpy(), ref.ev_softmax(x), rtol=1e-12)


def test_where_accepts_lists_and_broadcasts():
    x = _no_ties((2, 4), seed=2)
    where = [True, False, True, True]
    got = evt.ev_softmax(_t(x), where=where)
    np.testing.assert_allclose(got.numpy(), ref.ev_softmax(x, where=np.array(where)), rtol=1e-12)


@pytest.mark.parametrize("func", [evt.ev_softmax, evt.log_ev_softmax])
def test_validation_errors_name_the_argument(func):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="dim"):
        func(x, dim=2)
    with pytest.raises(ValueError, match="epsilon"):
        func(x, epsilon=-1.0)
    with pytest.raises(TypeError, match="where"):
        func(x, where=torch.ones(3))
    with pytest.raises(ValueError, match="where"):
        func(x, where=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        func(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="0-d"):
        func(torch.tensor(1.0))
    with pytest.raises(TypeError, match="Tensor"):
        func([1.0, 2.0])


def test_empty_and_integer_inputs():
    out = evt.ev_softmax(torch.zeros(3, 0))
    assert out.shape == (3, 0)
    assert out.dtype == torch.float32
    out = evt.log_ev_softmax(torch.tensor([[1, 3, 2]]))
    assert out.dtype == torch.get_default_dtype()
    np.testing.assert_allclose(out.numpy(), ref.log_ev_softmax(np.array([[1.0, 3, 2]])), rtol=1e-6)


# --- modules ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [evt.EvSoftmax, evt.LogEvSoftmax])
def test_modules_use_epsilon_in_train_and_zero_in_eval(cls):
    log = cls is evt.LogEvSoftmax
    x = _no_ties((3, 2, 6), seed=3, axis=1)
    layer = cls(dim=1, epsilon=0.25)
    assert layer.training
    expected = ref.log_ev_softmax if log else ref.ev_softmax
    np.testing.assert_allclose(layer(_t(x)).numpy(), expected(x, 1, 0.25), rtol=1e-12, atol=1e-14)
    layer.eval()
    np.testing.assert_allclose(layer(_t(x)).numpy(), expected(x, 1, 0.0), rtol=1e-12, atol=1e-14)
    where = torch.tensor([[True], [False]])
    masked = layer(_t(x), where=where).numpy()
    np.testing.assert_allclose(masked, expected(x, 1, 0.0, np.array([[True], [False]])))
    assert "dim=1" in repr(layer)
    assert "epsilon=0.25" in repr(layer)


def test_module_defaults_and_eval_sparsity():
    layer = evt.EvSoftmax()
    assert layer.dim == -1
    assert layer.epsilon == 1e-6
    x = torch.tensor([[0.4, 1.4, -0.8]])
    assert (layer(x) > 0).all()
    assert layer.eval()(x)[0, 2] == 0.0
    with pytest.raises(ValueError, match="epsilon"):
        evt.EvSoftmax(epsilon=math.inf)


def test_module_in_attention_with_causal_mask():
    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    attn = evt.EvSoftmax(dim=-1).eval()(scores, where=causal)
    assert (attn[:, ~causal] == 0).all()
    np.testing.assert_allclose(attn.sum(-1).numpy(), 1.0, rtol=1e-6)
    expected = ref.ev_softmax(scores.double().numpy(), where=causal.numpy())
    np.testing.assert_allclose(attn.double().numpy(), expected, atol=1e-6)


# --- loss -------------------------------------------------------------------------


def _loss_reference(logits, target, weight, ignore_index, reduction, smoothing, eps):
    """nn.CrossEntropyLoss's documented formulas with ev-softmax, in float64 NumPy."""
    class_dim = 0 if logits.ndim == 1 else 1
    classes = logits.shape[class_dim]
    logp = np.moveaxis(ref.log_ev_softmax(logits, class_dim, eps), class_dim, -1)
    lp = logp.reshape(-1, classes)
    w = np.ones(classes) if weight is None else np.asarray(weight, dtype=np.float64)
    if np.issubdtype(np.asarray(target).dtype, np.floating):
        q = np.moveaxis(target, class_dim, -1).reshape(-1, classes)
        q = q * (1 - smoothing) + smoothing / classes
        per = -(w * q * lp).sum(-1)
        shape = logp.shape[:-1]
        if reduction == "none":
            return per.reshape(shape)
        return per.sum() if reduction == "sum" else per.sum() / lp.shape[0]
    t = np.asarray(target).reshape(-1)
    keep = t != ignore_index
    safe = np.where(keep, t, 0)
    nll = np.where(keep, -w[safe] * lp[np.arange(len(t)), safe], 0.0)
    smooth = np.where(keep, -(w * lp).sum(-1), 0.0)
    per = (1 - smoothing) * nll + smoothing / classes * smooth
    if reduction == "none":
        return per.reshape(np.asarray(target).shape)
    if reduction == "sum":
        return per.sum()
    return per.sum() / np.where(keep, w[safe], 0.0).sum()


CASES = {
    "N,C": ((6, 5), (6,)),
    "N,C,d1,d2": ((3, 4, 2, 3), (3, 2, 3)),
    "unbatched": ((5,), ()),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_with_class_indices(case, reduction, smoothing, weighted):
    shape, target_shape = CASES[case]
    classes = shape[0] if len(shape) == 1 else shape[1]
    rng = np.random.default_rng(len(shape))
    logits = rng.normal(size=shape) * 2
    target = rng.integers(0, classes, size=target_shape)
    if target.ndim:
        target.flat[0] = -100  # ignored
    weight = rng.uniform(0.5, 2.0, size=classes) if weighted else None
    loss = evt.EvSoftmaxLoss(
        weight=None if weight is None else _t(weight),
        reduction=reduction,
        label_smoothing=smoothing,
        epsilon=1e-3,
    )
    got = loss(_t(logits), torch.tensor(target))
    expected = _loss_reference(logits, target, weight, -100, reduction, smoothing, 1e-3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    # The same as nn.CrossEntropyLoss on log p_eps (log-softmax leaves log-probabilities
    # unchanged up to rounding).
    logp = evt.log_ev_softmax(_t(logits), dim=0 if len(shape) == 1 else 1, epsilon=1e-3)
    torch_ce = torch.nn.functional.cross_entropy(
        logp,
        torch.tensor(target),
        weight=None if weight is None else _t(weight),
        reduction=reduction,
        label_smoothing=smoothing,
    )
    np.testing.assert_allclose(got.numpy(), torch_ce.numpy(), rtol=1e-9)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_with_probability_targets(reduction, smoothing):
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(4, 5, 3))
    target = rng.dirichlet(np.ones(5), size=(4, 3)).transpose(0, 2, 1)
    weight = rng.uniform(0.5, 2.0, size=5)
    loss = evt.EvSoftmaxLoss(
        weight=_t(weight), reduction=reduction, label_smoothing=smoothing, epsilon=0.01
    )
    got = loss(_t(logits), _t(target))
    expected = _loss_reference(logits, target, weight, -100, reduction, smoothing, 0.01)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="shape"):
        loss(_t(logits), _t(target[:, :, :2]))


def test_loss_uses_epsilon_in_eval_mode_and_is_finite():
    logits = _t([[1000.0, -1000.0, 0.0]])
    loss = evt.EvSoftmaxLoss().eval()
    value = loss(logits, torch.tensor([1]))
    assert math.isfinite(value.item())
    expected = _loss_reference(logits.numpy(), np.array([1]), None, -100, "mean", 0.0, 1e-6)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)


def test_loss_out_of_range_target_raises():
    loss = evt.EvSoftmaxLoss()
    with pytest.raises(IndexError, match=r"class index 7.*\[0, 5\)"):
        loss(torch.randn(3, 5), torch.tensor([0, 7, 1]))
    with pytest.raises(IndexError, match="-1"):
        loss(torch.randn(3, 5), torch.tensor([0, -1, 1]))
    # ignore_index itself is fine, as is an int32 target
    loss(torch.randn(3, 5), torch.tensor([0, -100, 4], dtype=torch.int32))


def test_loss_argument_validation():
    with pytest.raises(ValueError, match="reduction"):
        evt.EvSoftmaxLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        evt.EvSoftmaxLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        evt.EvSoftmaxLoss(epsilon=-1e-6)


def test_loss_weight_is_a_buffer_and_training_step_runs():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    loss = evt.EvSoftmaxLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    assert "weight" in dict(loss.named_buffers())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    first = None
    for _ in range(20):
        opt.zero_grad()
        value = loss(model(x), y)
        value.backward()
        opt.step()
        first = value.item() if first is None else first
    assert value.item() < first


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_support_matches_reference_and_top_level(dim):
    x = _no_ties((4, 6, 5), seed=dim + 11, axis=dim)
    where = np.random.default_rng(dim + 3).random((4, 6, 5)) > 0.2
    got = evt.ev_softmax_support(_t(x), dim=dim, where=torch.from_numpy(where))
    np.testing.assert_array_equal(got.numpy(), ref.support(x, dim, where))
    top = evs.ev_softmax_support(_t(x), axis=dim, where=torch.from_numpy(where))
    np.testing.assert_array_equal(got.numpy(), top.numpy())


def test_support_of_special_rows():
    x = torch.tensor(
        [[1.0, math.nan, 0.0], [1.0, math.inf, 0.0], [-math.inf, -math.inf, -math.inf]]
    )
    assert not evt.ev_softmax_support(x).any()
    assert evt.ev_softmax_support(torch.empty(0, 3)).shape == (0, 3)
    with pytest.raises(TypeError, match="input"):
        evt.ev_softmax_support([1.0, 2.0])


def test_support_compiles_and_traces():
    x = torch.tensor([[2.0, 5.0, -1.0]]).repeat(3, 1)  # mean exactly 2: the tie stays in
    expected = torch.tensor([[True, True, False]]).repeat(3, 1)
    compiled = torch.compile(evs.ev_softmax_support, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        traced = torch.jit.trace(evt.ev_softmax_support, (torch.randn(4, 6),))
        assert torch.equal(traced(x[None]), expected[None])  # another rank, last axis
