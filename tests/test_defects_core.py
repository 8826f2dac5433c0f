"""Issue 12 defects of the core, the NumPy/Dask/array-API paths, validation, losses and
the C kernel (D2, D11, D12, D15-D20), and the numerical recipe of DESIGN section 4.

Expected values come from the float64 references in ``tests/reference*.py`` or from
exact rational arithmetic written here, never from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

import evsoftmax as evs
from evsoftmax import _ext

from . import reference as ref
from . import reference_baselines as ref_baselines
from . import reference_losses as ref_losses
from .backends import to_numpy

HAS_KERNEL = _ext.cpu_kernels() is not None


@pytest.fixture(params=["kernel", "no kernel"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a NumPy test with the compiled kernel and without it."""
    if request.param == "kernel" and not HAS_KERNEL:
        pytest.skip("the compiled CPU kernel is not built")
    if request.param == "no kernel":
        monkeypatch.setenv("EVSOFTMAX_NO_CPU_KERNELS", "1")
    return str(request.param)


def _tolerance(dtype: object) -> dict[str, float]:
    bits = np.finfo(dtype).bits
    return {"rtol": 2e-2, "atol": 2e-3} if bits < 32 else {"rtol": 1e-5, "atol": 1e-7}


# -- the recipe: exact ties, large epsilon (D2) -------------------------------------------


TIE_ROWS = np.array([[2.0, 5.0, -1.0]] * 4)


def test_tie_at_an_exactly_representable_mean_stays_in(xp) -> None:
    # Mean 2 exactly: 2 is in the support on every dtype the namespace has.
    for dtype in (xp.float32, xp.float64):
        p = to_numpy(evs.ev_softmax(xp.asarray(TIE_ROWS, dtype=dtype)))
        np.testing.assert_allclose(p, ref.ev_softmax(TIE_ROWS), rtol=1e-6)
        np.testing.assert_allclose(p[0], [0.0474259, 0.9525741, 0.0], rtol=1e-5)
        mask = xp.asarray([True, True, True, False])
        padded = xp.asarray(np.concatenate([TIE_ROWS, np.full((4, 1), 7.0)], 1), dtype=dtype)
        q = to_numpy(evs.ev_softmax(padded, where=mask))
        np.testing.assert_allclose(q[:, :3], p, rtol=1e-6)


@pytest.mark.skip_xp_backend("torch", reason="torch's own paths: the path matrix covers them")
@pytest.mark.skip_xp_backend("jax", reason="JAX's own paths: the path matrix covers them")
@pytest.mark.parametrize("epsilon", [1e-6, 3.0, 3e38, 1e300])
def test_large_epsilon_is_finite_on_the_core(xp, epsilon: float) -> None:
    """D2: weights eps/(1+eps) off the support, relative to the support: finite for any eps."""
    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -3.0], [4.0, -np.inf, 1.0]])
    for dtype in (xp.float32, xp.float64):
        a = xp.asarray(x, dtype=dtype)
        p = to_numpy(evs.ev_softmax(a, epsilon=epsilon))
        np.testing.assert_allclose(p, ref.ev_softmax(x, eps=epsilon), rtol=1e-5, atol=1e-7)
        logp = to_numpy(evs.log_ev_softmax(a, epsilon=epsilon))
        np.testing.assert_allclose(logp, ref.log_ev_softmax(x, eps=epsilon), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [">f4", ">f8", np.float16, np.float32, np.float64])
@pytest.mark.parametrize("epsilon", [3e38, 1e300])
def test_large_epsilon_numpy_paths(dtype: object, epsilon: float, kernel: str) -> None:
    """D2 as reported: big-endian and float16 go to the core; native floats without the
    kernel to NumPy's in-place path (which added eps to the indicator, too)."""
    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -3.0]], dtype=dtype)
    p = evs.ev_softmax(x, epsilon=epsilon)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, ref.ev_softmax(x, eps=epsilon), **_tolerance(x.dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_tiny_epsilon_log_is_finite(dtype: type, kernel: str) -> None:
    """log(eps / (1 + eps)) is taken in float64: eps = 1e-300 stays finite in float32."""
    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -3.0]], dtype=dtype)
    out = evs.log_ev_softmax(x, epsilon=1e-300)
    expected = ref.log_ev_softmax(x, eps=1e-300)
    if np.finfo(dtype).bits < 32:
        with np.errstate(over="ignore"):
            expected = expected.astype(dtype)
    np.testing.assert_allclose(out, expected, **_tolerance(x.dtype))


# -- huge ranges: the exact mean's support (D16) ------------------------------------------


def test_overflowing_shift_follows_the_exact_mean(xp) -> None:
    """D16 as reported: [3e38, -3e38, 0] has mean 0, so 3e38 and 0 are in."""
    x = xp.asarray([3e38, -3e38, 0.0], dtype=xp.float32)
    assert to_numpy(evs.ev_softmax_support(x)).tolist() == [True, False, True]
    np.testing.assert_allclose(to_numpy(evs.ev_softmax(x)), [1.0, 0.0, 0.0])
    expected = ref.log_ev_softmax(np.array([3e38, -3e38, 0.0], np.float32), eps=1e-3)
    logp = to_numpy(evs.log_ev_softmax(x, epsilon=1e-3))
    with np.errstate(over="ignore"):  # -6e38 is -inf in float32
        expected = expected.astype(np.float32)
    np.testing.assert_allclose(logp, expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_overflowing_shift_kernel_and_core(dtype: type, kernel: str) -> None:
    """D16 on the compiled kernel (which mapped overflow to a -inf mean) and without it."""
    big = float(np.finfo(dtype).max)
    x = np.array([[0.9 * big, -0.9 * big, 0.0], [big, -big, 0.5 * big]], dtype)
    expected = np.array([ref.exact_support_row(r) for r in x])
    assert (evs.ev_softmax_support(x) == expected).all()
    # eps = 0: log-probabilities are -inf exactly off the support, finite on it
    # wherever the shift x - max stays inside the dtype's range.
    with np.errstate(over="ignore"):
        shift_finite = np.isfinite(x - x.max(axis=-1, keepdims=True))
    finite = np.isfinite(evs.log_ev_softmax(x))
    assert (finite == (expected & shift_finite)).all()
    p = evs.ev_softmax(x, epsilon=0.5)
    np.testing.assert_allclose(p, ref.ev_softmax(x, eps=0.5), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_huge_rows_match_the_exact_support(dtype: type, kernel: str) -> None:
    rng = np.random.default_rng(12)
    big = float(np.finfo(dtype).max)
    checked = 0
    for _ in range(200):
        row = (rng.uniform(-1.0, 1.0, rng.integers(2, 12)) * big).astype(dtype)
        if ref.exact_gap(row) < 1e-5:  # rounding may decide near-ties: skip them
            continue
        checked += 1
        expected = ref.exact_support_row(row)
        assert (evs.ev_softmax_support(row) == expected).all(), row
        assert ((evs.log_ev_softmax(row, epsilon=0.0) > -np.inf) <= expected).all(), row
    assert checked > 150


def test_nonfinite_rows_give_nan_without_warnings(xp) -> None:
    # float16 goes to the core on NumPy, which used to warn (inf - inf) for +inf rows.
    dtypes = [xp.float32] + ([xp.float16] if hasattr(xp, "float16") else [])
    for dtype in dtypes:
        x = xp.asarray([[1.0, np.inf, 0.0], [1.0, np.nan, 0.0], [1.0, 2.0, 0.0]], dtype=dtype)
        for fn in (evs.ev_softmax, evs.log_ev_softmax):
            out = to_numpy(fn(x, epsilon=0.1))
            assert np.isnan(out[:2]).all() and np.isfinite(out[2]).all()
        assert not to_numpy(evs.ev_softmax_support(x))[:2].any()


# -- half precision: no overflow warning on the cast back (D17) ---------------------------


def test_float16_log_has_no_overflow_warning(kernel: str) -> None:
    """D17: -131015 rounds to -inf in float16; no 'overflow encountered in cast'."""
    x = np.array([65504, 65000, -65504, 0], np.float16)
    out = evs.log_ev_softmax(x, epsilon=1e-3)  # filterwarnings=error turns a warning into a failure
    assert out.dtype == np.float16
    with np.errstate(over="ignore"):
        expected = ref.log_ev_softmax(x, eps=1e-3).astype(np.float16)
    np.testing.assert_array_equal(out, expected)


# -- losses: narrow target dtypes (D11), ignore_index, bool targets (D20) -----------------


@pytest.mark.parametrize(
    ("dtype", "classes"), [("uint8", 300), ("int8", 200), ("uint16", 70000), ("int16", 40000)]
)
def test_narrow_targets_with_many_classes(xp, dtype: str, classes: int) -> None:
    """D11: arange(K, dtype=target.dtype) wrapped for K beyond the target dtype's range."""
    if not hasattr(xp, dtype):
        pytest.skip(f"{xp.__name__} has no {dtype}")
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, classes))
    target = np.array([0, 44, 10])
    x, t = xp.asarray(logits), xp.asarray(target, dtype=getattr(xp, dtype))
    got = to_numpy(evs.ev_softmax_nll_loss(x, t, reduction="none"))
    np.testing.assert_allclose(got, ref_losses.nll(logits, target, reduction="none"), rtol=1e-6)
    if classes > 1000:
        return  # the Fenchel-Young references sort every row: keep them short
    for fn, alpha in ((evs.sparsemax_loss, 2.0), (evs.entmax15_loss, 1.5)):
        got = to_numpy(fn(x, t, reduction="none"))
        expected = ref_losses.fenchel_young(logits, target, alpha, reduction="none")
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_ignore_index_takes_numpy_integers(xp) -> None:
    logits = np.random.default_rng(4).normal(size=(4, 5))
    target = np.array([1, -100, 3, 0])
    x, t = xp.asarray(logits), xp.asarray(target)
    expected = ref_losses.nll(logits, target, ignore_index=-100)
    for index in (np.int64(-100), np.int32(-100), -100):
        got = to_numpy(evs.ev_softmax_nll_loss(x, t, ignore_index=index))
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    with pytest.raises(TypeError, match="ignore_index"):
        evs.ev_softmax_nll_loss(x, t, ignore_index=np.bool_(True))


def test_torch_unsigned_and_narrow_targets() -> None:
    """D11/D15 on torch: uint8 wraps at 256 classes; uint16/uint32 raised 'lt_cpu'."""
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(5).normal(size=(3, 300))
    target = np.array([0, 44, 10])
    expected = ref_losses.nll(logits, target, reduction="none")
    for dtype in (torch.uint8, torch.int8, torch.uint16, torch.uint32, torch.int32):
        t = torch.tensor(target).to(dtype)
        got = evs.ev_softmax_nll_loss(torch.tensor(logits), t, reduction="none")
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, err_msg=str(dtype))


def test_jax_narrow_targets() -> None:
    jnp = pytest.importorskip("jax.numpy")
    logits = np.random.default_rng(6).normal(size=(3, 300)).astype(np.float32)
    target = np.array([0, 44, 10])
    expected = ref_losses.nll(logits, target, reduction="none")
    got = evs.ev_softmax_nll_loss(
        jnp.asarray(logits), jnp.asarray(target, dtype=jnp.uint8), reduction="none"
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_ev_softmax_loss_rejects_bool_targets() -> None:
    """D20: nn.CrossEntropyLoss and the top-level NLL reject bool targets; so does the module."""
    torch = pytest.importorskip("torch")
    import evsoftmax.torch as evt

    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match="target"):
        evt.EvSoftmaxLoss()(x, torch.tensor([True, False, True, True]))
    with pytest.raises(TypeError, match="target"):
        evs.ev_softmax_nll_loss(x, torch.tensor([True, False, True, True]))


# -- Dask with unknown dimensions (D12) ----------------------------------------------------


def test_dask_unknown_dimensions_with_where() -> None:
    da = pytest.importorskip("dask.array")
    x = np.random.default_rng(0).normal(size=(8, 4))
    x[:, 0] = np.abs(x[:, 0])
    x[[1, 4], 0] *= -1  # every chunk of 3 rows keeps at least one row
    xd = da.from_array(x, chunks=(3, 2))
    xu = xd[xd[:, 0] >= 0]
    assert np.isnan(xu.shape[0])
    kept = x[x[:, 0] >= 0]
    got = evs.ev_softmax(xu, where=xu > 0).compute()
    np.testing.assert_allclose(got, ref.ev_softmax(kept, where=kept > 0), rtol=1e-12)
    got = evs.log_ev_softmax(xu, epsilon=1e300).compute()
    np.testing.assert_allclose(got, ref.log_ev_softmax(kept, eps=1e300), rtol=1e-12)


# -- messages that name the argument; bfloat16; foreign masks; sparse (D15) ----------------


@pytest.mark.parametrize("value", [[0.4, 1.4], (0.4, 1.4), 0.5, None, "abc"])
@pytest.mark.parametrize("fn", [evs.ev_softmax, evs.log_ev_softmax, evs.ev_softmax_support])
def test_non_arrays_are_named(fn, value) -> None:
    with pytest.raises(TypeError, match=r"^x must be an array"):
        fn(value)


def test_loss_non_arrays_are_named() -> None:
    with pytest.raises(TypeError, match=r"^logits must be an array"):
        evs.ev_softmax_nll_loss([[0.4, 1.4]], np.array([0]))
    with pytest.raises(TypeError, match=r"^target"):
        evs.ev_softmax_nll_loss(np.array([[0.4, 1.4]]), [0])
    with pytest.raises(TypeError, match=r"^bias must be an array"):
        evs.evidential_sparsification(np.ones(2), np.ones((2, 3)), [0.0, 0.0, 0.0])


def test_numpy_bfloat16_works() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.array([[0.4, 1.4, -0.8], [2.0, 5.0, -1.0]], dtype=ml_dtypes.bfloat16)
    exact = x.astype(np.float64)
    for fn, reference in (
        (evs.ev_softmax, ref.ev_softmax),
        (evs.log_ev_softmax, ref.log_ev_softmax),
    ):
        out = fn(x, epsilon=1e-3)
        assert out.dtype == x.dtype
        expected = reference(exact, eps=1e-3)
        np.testing.assert_allclose(out.astype(np.float64), expected, rtol=1e-2, atol=1e-2)
    assert (evs.ev_softmax_support(x) == ref.support(exact)).all()
    assert evs.softmax(x).dtype == x.dtype
    with pytest.raises(TypeError, match="x must have a real floating"):
        evs.ev_softmax(np.zeros(3, dtype=ml_dtypes.float8_e4m3fn))


def test_foreign_masks_are_converted() -> None:
    """D15: a JAX mask for torch scores (and the reverse) works as in evt.ev_softmax."""
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    import evsoftmax.torch as evt

    x = np.random.default_rng(7).normal(size=(2, 3, 3)).astype(np.float32)
    mask = np.array([True, False, True])
    expected = ref.ev_softmax(x, where=mask)
    got = evs.ev_softmax(torch.tensor(x), where=jnp.asarray(mask))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(
        evt.ev_softmax(torch.tensor(x), where=jnp.asarray(mask)).numpy(), expected, rtol=1e-6
    )
    got = evs.ev_softmax(jnp.asarray(x), where=torch.tensor(mask))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
    got = evs.ev_softmax(x, where=torch.tensor(mask))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_sparse_tensors_are_rejected_naming_the_argument() -> None:
    torch = pytest.importorskip("torch")
    import evsoftmax.torch as evt

    sparse = torch.eye(3).to_sparse()
    with pytest.raises(TypeError, match=r"^x must be a dense"):
        evs.ev_softmax(sparse)
    with pytest.raises(TypeError, match=r"^input must be a dense"):
        evt.ev_softmax(sparse)
    with pytest.raises(TypeError, match=r"^logits must be a dense"):
        evs.ev_softmax_nll_loss(sparse, torch.tensor([0, 1, 2]))


# -- NumPy masked arrays (D18) -------------------------------------------------------------


def test_masked_array_mask_acts_as_where_false(kernel: str) -> None:
    data = np.array([[1.0, 100.0, 2.0], [3.0, 0.0, -1.0]])
    mask = np.array([[False, True, False], [False, False, True]])
    x = np.ma.array(data, mask=mask)
    for fn, reference in (
        (evs.ev_softmax, ref.ev_softmax),
        (evs.log_ev_softmax, ref.log_ev_softmax),
    ):
        out = fn(x, epsilon=0.1)
        assert type(out) is np.ndarray  # a plain array: masked entries are excluded, not hidden
        np.testing.assert_allclose(out, reference(data, eps=0.1, where=~mask), rtol=1e-12)
    np.testing.assert_allclose(evs.ev_softmax(x)[0], [0.0, 0.0, 1.0])
    assert (evs.ev_softmax_support(x) == ref.support(data, where=~mask)).all()
    where = np.array([True, True, False])
    out = evs.ev_softmax(x, where=where)
    np.testing.assert_allclose(out, ref.ev_softmax(data, where=~mask & where), rtol=1e-12)
    assert type(evs.softmax(x)) is np.ndarray
    target = np.array([0, 1])
    got = evs.ev_softmax_nll_loss(x, target, reduction="none")
    expected = ref_losses.nll(data, target, where=~mask, reduction="none")
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_masked_arrays_elsewhere_are_rejected() -> None:
    p = np.ma.array([0.5, 0.5], mask=[False, True])
    with pytest.raises(TypeError, match="probs"):
        evs.ev_softmax_jvp(p, np.ones(2))
    with pytest.raises(TypeError, match="where"):
        evs.ev_softmax(np.ones(2), where=np.ma.array([True, True], mask=[False, True]))


# -- evidential sparsification with -inf bias (D19) ----------------------------------------


def test_evidential_minus_inf_bias_is_excluded(xp) -> None:
    rng = np.random.default_rng(8)
    features = rng.normal(size=(5, 2))
    weight = rng.normal(size=(2, 4))
    bias = np.array([0.3, -np.inf, 1.0, 0.2])
    got = to_numpy(
        evs.evidential_sparsification(xp.asarray(features), xp.asarray(weight), xp.asarray(bias))
    )
    np.testing.assert_allclose(got, ref.ev_softmax(bias + features @ weight), rtol=1e-6, atol=1e-12)
    none = np.full(4, -np.inf)
    got = to_numpy(
        evs.evidential_sparsification(xp.asarray(features), xp.asarray(weight), xp.asarray(none))
    )
    np.testing.assert_array_equal(got, np.zeros((5, 4)))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("mode", ["probs", "log_probs"])
def test_cupy_kernel_replay_large_epsilon(dtype: str, mode: str) -> None:
    """D2 in the CuPy kernels (replayed in NumPy): weights eps/(1+eps), finite for 1e300."""
    from .cupy_emulation import emulate_forward

    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -3.0]])
    for epsilon in (3e38, 1e300):
        got = emulate_forward(x, axis=-1, epsilon=epsilon, where=None, mode=mode, dtype=dtype)
        reference = ref.ev_softmax if mode == "probs" else ref.log_ev_softmax
        np.testing.assert_allclose(got, reference(x, eps=epsilon), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize(
    "fn", [evs.softmax, evs.log_softmax, evs.sparsemax, evs.entmax15, evs.entmax_bisect]
)
def test_baselines_on_huge_ranges_do_not_overflow(xp, fn) -> None:
    """x - max beyond the dtype's range is -inf (weight 0), formed without an overflow."""
    x = np.array([[3e38, -3e38, 0.0], [1.0, 2.0, -3.0]], np.float32)
    out = to_numpy(fn(xp.asarray(x, dtype=xp.float32)))  # filterwarnings=error: no warning
    if fn is evs.log_softmax:
        with np.errstate(over="ignore"):
            expected = ref_baselines.log_softmax(x).astype(np.float32)
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    else:
        np.testing.assert_allclose(out[0], [1.0, 0.0, 0.0], atol=1e-7)
    float16 = np.array([[65504, -65504, 0]], np.float16)
    if fn is evs.log_softmax:
        got = evs.log_softmax(float16)  # no 'overflow encountered in cast'
        assert got.dtype == np.float16 and got[0, 1] == -np.inf


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["support", "probs", "log_probs"])
def test_cupy_kernel_replay_huge_ranges(dtype: str, mode: str) -> None:
    """D16 in the CuPy kernels (replayed in NumPy): the exact mean's support."""
    from .cupy_emulation import emulate_forward

    big = float(np.finfo(dtype).max)
    x = np.array([[0.9 * big, -0.9 * big, 0.0], [big, -big, 0.5 * big]], dtype)
    long = np.tile(x[:1], (1, 14))[:, :41]  # exact mean -0.9 max + ... = 0: the zeros tie
    for rows in (x, long):
        support = np.array([ref.exact_support_row(r) for r in rows])
        got = emulate_forward(rows, axis=-1, epsilon=0.5, where=None, mode=mode, dtype=dtype)
        if mode == "support":
            np.testing.assert_array_equal(got, support)
        elif mode == "probs":
            np.testing.assert_allclose(got, ref.ev_softmax(rows, eps=0.5), rtol=1e-6)
        else:
            with np.errstate(over="ignore"):
                expected = ref.log_ev_softmax(rows, eps=0.5).astype(dtype)
            np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.skipif(not HAS_KERNEL, reason="the compiled CPU kernel is not built")
def test_kernel_float64_huge_range_tie_stays_in() -> None:
    """The kernel sums the scaled scores in long double: [1.7e308, -1.7e308, 0] has mean 0.

    (The array-API core sums them in float64, whose one rounding may decide such a
    tie; docs/math.md says so.)
    """
    x = np.array([[1.7e308, -1.7e308, 0.0], [1e308, -1.5e308, -0.25e308]])
    expected = np.array([ref.exact_support_row(r) for r in x])
    logp = evs.log_ev_softmax(x)  # eps = 0: -inf exactly off the support
    assert (np.isfinite(logp) == expected).all()
