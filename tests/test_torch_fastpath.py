"""The eager CPU fast path and the general composition agree with the core and the reference."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

torch = pytest.importorskip("torch")

from array_api_compat import array_namespace  # noqa: E402

import evsoftmax.torch as evt  # noqa: E402
from evsoftmax import _core, _ext  # noqa: E402
from evsoftmax.adapters.torch import ops  # noqa: E402

from . import reference as ref  # noqa: E402
from .closed_forms import no_ties  # noqa: E402
from .cpu_kernels import PATHS, require_cpu_kernels, use_path  # noqa: E402

XP = array_namespace(torch.empty(0))
EPSILONS = [0.0, 1e-6, 0.5]


def _expected(x, epsilon, log, axis=-1):
    return (ref.log_ev_softmax if log else ref.ev_softmax)(x, axis, epsilon)


@pytest.fixture(params=PATHS)
def each_path(request, monkeypatch):
    """Run on the compiled kernel, then on torch ops in blocks of a few rows.

    Small blocks make the multi-block loop of the torch-ops path run on small inputs.
    """
    use_path(request.param, monkeypatch)
    monkeypatch.setattr(ops, "_BLOCK_BYTES", 64)


@pytest.fixture
def no_composed(monkeypatch):
    """Fail if the general composition runs (proves the fast path did the work)."""

    def fail(*args, **kwargs):
        raise AssertionError("composed_forward was called")

    monkeypatch.setattr(ops, "composed_forward", fail)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_path_matches_reference(dtype, epsilon, log, each_path, no_composed):
    x = no_ties((13, 37), seed=1)
    got = ops.cpu_rows_forward(torch.tensor(x, dtype=getattr(torch, dtype)), 1, epsilon, log)
    rtol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(
        got.double().numpy(), _expected(x, epsilon, log), rtol=rtol, atol=rtol
    )


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_fast_path_composition_and_core_agree(dim, epsilon, log, each_path):
    x = np.moveaxis(no_ties((4, 5, 33), seed=dim), -1, dim)
    xt = torch.tensor(x)
    fast = ops.cpu_rows_forward(xt, dim, epsilon, log)
    composed = ops.composed_forward(xt, dim, epsilon, None, log)
    core = (_core.log_ev_softmax if log else _core.ev_softmax)(
        xt, axis=dim, epsilon=epsilon, where=None, xp=XP
    )
    expected = _expected(x, epsilon, log, axis=dim)
    for got in (fast, composed, core):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_non_contiguous_and_transposed_inputs(each_path):
    x = no_ties((9, 40), seed=2)
    xt = torch.tensor(x)
    strided = torch.tensor(np.repeat(x, 2, axis=1))[:, ::2]
    assert not strided.is_contiguous()
    for v in (strided, torch.tensor(x.T.copy()).T):
        np.testing.assert_allclose(evt.ev_softmax(v).numpy(), ref.ev_softmax(x), rtol=1e-12)
    np.testing.assert_array_equal(
        evt.ev_softmax(xt.T, dim=0).numpy(), evt.ev_softmax(xt, dim=1).numpy().T
    )
    # like torch.softmax, the result is contiguous whatever the axis
    assert evt.ev_softmax(torch.tensor(x), dim=0).is_contiguous()
    assert evt.ev_softmax(torch.tensor(x), dim=0, where=torch.tensor(True)).is_contiguous()


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_rows_the_shortcut_cannot_do_are_repaired(epsilon, log, each_path):
    # -inf entries, NaN, +inf and a float32 row whose sum overflows go to the general path;
    # the other rows must be untouched by their neighbours.
    big = 3e38
    x = np.array(
        [
            [0.5, -np.inf, 1.5, -0.3],
            [1.0, np.nan, 0.0, 2.0],
            [0.4, 1.4, -0.8, 0.0],
            [np.inf, 1.0, 0.0, 2.0],
            [big, big, -big, big],
            [-np.inf, -np.inf, -np.inf, -np.inf],
            [3.0, 1.0, 2.0, 0.0],
        ]
    )
    # The reference works on the rows shifted by their maximum (ev-softmax is
    # translation invariant), which keeps its float64 log-sum-exp exact for the big row.
    shifted = x.copy()
    shifted[4] -= big
    with np.errstate(invalid="ignore", over="ignore"):
        # (rounded to float32, where the -6e38 log-probability overflows to -inf)
        expected = _expected(shifted, epsilon, log).astype(np.float32).astype(np.float64)
    got = ops.cpu_rows_forward(torch.tensor(x, dtype=torch.float32), 1, epsilon, log)
    got = got.double().numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_rounded_mean_above_every_entry_keeps_the_maximum(epsilon, each_path):
    # Constant and nearly constant float32 rows: the float32 mean of seven 0.1s is
    # above 0.1; the fast path must still put the row maximum in the support. (Which
    # of the other entries, all within rounding of the mean, join it is a tie.)
    rng = np.random.default_rng(5)
    x = (0.1 + rng.integers(0, 3, size=(60, 7)) * np.float32(1e-8)).astype(np.float32)
    x[:5] = np.float32(0.1)
    got = ops.cpu_rows_forward(torch.tensor(x), 1, epsilon, False).numpy()
    assert not np.isnan(got).any()
    rows = np.arange(x.shape[0])
    assert (got[rows, np.argmax(x, axis=-1)] > 0.1).all()
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got[:5], 1 / 7, rtol=1e-6)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_fast_path(dtype, log, each_path):
    x = torch.tensor(no_ties((6, 50), seed=6, gap=0.05), dtype=getattr(torch, dtype))
    got = ops.cpu_rows_forward(x, 1, 0.1, log)
    assert got.dtype == x.dtype
    expected = _expected(x.double().numpy(), 0.1, log)
    # The float32 result, rounded once to half precision.
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-2, atol=1e-3)
    composed = ops.composed_forward(x, 1, 0.1, None, log)
    torch.testing.assert_close(got, composed, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("log", [False, True])
def test_kernel_runs_on_torchs_openmp_threads(log):
    require_cpu_kernels()
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        assert ops._openmp_parallel() != 0  # torch's own libgomp was found
    # 144000 entries: several threads. Values on a grid (plus small noise) stay far
    # from their row mean, which 1500 normals per row would not.
    rng = np.random.default_rng(8)
    x = rng.choice([-3.0, -1.0, 1.0, 3.0], size=(96, 1500)) + rng.uniform(-0.1, 0.1, (96, 1500))
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        got = ops.cpu_rows_forward(torch.tensor(x, dtype=torch.float32), 1, 0.0, log)
    finally:
        torch.set_num_threads(threads)
    expected = _expected(x, 0.0, log)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(got.numpy()), finite)
    np.testing.assert_allclose(got.double().numpy()[finite], expected[finite], rtol=2e-5, atol=1e-7)


def test_masks_use_the_composition_only_without_the_kernel(each_path, monkeypatch):
    calls = []
    original = ops.composed_forward

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(ops, "composed_forward", spy)
    x = torch.randn(3, 8, dtype=torch.float64)
    evt.ev_softmax(x)
    assert calls == []
    evt.ev_softmax(x, where=torch.tensor([True] * 7 + [False]))
    # The kernel reads a mask in place; without it the composition applies the mask.
    assert calls == ([] if _ext.available() else [x.shape])
    evt.ev_softmax(x.to("meta"))
    assert calls[-1:] == [x.shape]


def test_epsilon_zero_log_gives_minus_inf_below_the_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    got = evt.log_ev_softmax(x)
    assert got[0, :3].eq(-math.inf).all()
    assert got[0, 3] == 0.0


@settings(max_examples=25)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
        elements=st.floats(-50, 50),
    ),
    st.sampled_from(EPSILONS),
    st.booleans(),
)
def test_fast_path_matches_reference_on_random_inputs(each_path, x, epsilon, log):
    if ref.min_gap_to_mean(x, axis=-1) < 1e-6:
        return  # ties with the mean: either side is a correct answer
    got = evt.log_ev_softmax(torch.tensor(x), epsilon=epsilon) if log else None
    if not log:
        got = evt.ev_softmax(torch.tensor(x), epsilon=epsilon)
    np.testing.assert_allclose(got.numpy(), _expected(x, epsilon, log), rtol=1e-9, atol=1e-12)


@pytest.fixture(params=["eager", "static"])
def each_form(request, monkeypatch):
    """The composition as eager code runs it, and in its branch-free (recorded) form."""
    if request.param == "static":
        monkeypatch.setattr(ops, "static_graph", lambda: True)
    return request.param


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_general_forms_with_masks_and_special_rows(each_form, epsilon, log):
    # The composition serves masked inputs, torch.compile, exports and traces;
    # called eagerly here, in both of its forms.
    forward = ops.composed_forward
    x = no_ties((6, 11), seed=7)
    x[0, 3] = -np.inf
    x[1, 4] = np.nan  # masked below
    x[2, 5] = np.nan
    x[3, 6] = np.inf
    x[4, 7] = 1e300  # masked below
    where = np.ones(x.shape, dtype=bool)
    where[:, 1] = False
    where[1, 4] = where[4, 7] = False
    where[5] = False
    with np.errstate(invalid="ignore"):
        expected = (ref.log_ev_softmax if log else ref.ev_softmax)(x, -1, epsilon, where)
    got = forward(torch.tensor(x), 1, epsilon, torch.tensor(where), log).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dim", [0, 1])
def test_composed_form_unmasked_and_half_precision(dim, log, each_form):
    x = np.moveaxis(no_ties((5, 40), seed=8), -1, dim)
    got = ops.composed_forward(torch.tensor(x), dim, 0.2, None, log).numpy()
    np.testing.assert_allclose(got, _expected(x, 0.2, log, axis=dim), rtol=1e-12, atol=1e-12)
    xh = torch.tensor(x, dtype=torch.bfloat16)
    got = ops.composed_forward(xh, dim, 0.2, None, log)
    assert got.dtype == torch.bfloat16
    expected = _expected(xh.double().numpy(), 0.2, log, axis=dim)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-2, atol=1e-2)
