"""The JAX adapter's values: against the float64 reference and the array-API core."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import evsoftmax as evs  # noqa: E402
from evsoftmax import _core  # noqa: E402
from evsoftmax._dispatch import implementation  # noqa: E402
from evsoftmax.adapters.jax import adapter as _jax  # noqa: E402

from . import reference as ref  # noqa: E402
from .cpu_kernels import PATHS  # noqa: E402
from .jax_helpers import jax_path, masked_example, rows_away_from_ties  # noqa: E402

EPSILONS = (0.0, 1e-6, 0.3)


@pytest.fixture(autouse=True, scope="module", params=PATHS)
def each_path(request):
    """Every test on the compiled kernel (an XLA FFI call), then on XLA ops alone.

    The path is chosen when a function is traced; module scope runs the tests
    path by path, and ``tests/conftest.py`` drops JAX's caches when it changes.
    """
    with jax_path(request.param) as path:
        yield path


def core(name: str, x, *, axis: int = -1, epsilon: float = 0.0, where=None):
    """The array-API core on the same JAX input (the single source of truth)."""
    fun = getattr(_core, name)
    return fun(x, axis=axis % x.ndim, epsilon=epsilon, where=where, xp=jnp)


def test_public_functions_dispatch_to_the_adapter():
    assert implementation("ev_softmax", jnp, _core.ev_softmax) is _jax.ev_softmax
    assert implementation("log_ev_softmax", jnp, _core.log_ev_softmax) is _jax.log_ev_softmax


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_matches_reference_and_core(axis, epsilon):
    x = rows_away_from_ties((5, 6, 7), axis=axis)
    xj = jnp.asarray(x)
    expected = ref.ev_softmax(x, axis=axis, eps=epsilon)
    got = evs.ev_softmax(xj, axis=axis, epsilon=epsilon)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got, core("ev_softmax", xj, axis=axis, epsilon=epsilon), rtol=1e-12)
    log_expected = ref.log_ev_softmax(x, axis=axis, eps=epsilon)
    log_got = evs.log_ev_softmax(xj, axis=axis, epsilon=epsilon)
    np.testing.assert_allclose(log_got, log_expected, rtol=1e-12, atol=1e-12)
    log_core = core("log_ev_softmax", xj, axis=axis, epsilon=epsilon)
    np.testing.assert_allclose(log_got, log_core, rtol=1e-12, atol=1e-12)
    if epsilon == 0.0:
        assert np.array_equal(np.asarray(got) > 0, ref.support(x, axis=axis))


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_masks_and_minus_inf(epsilon):
    x, where = masked_example()
    got = np.asarray(evs.ev_softmax(jnp.asarray(x), where=jnp.asarray(where), epsilon=epsilon))
    np.testing.assert_allclose(got, ref.ev_softmax(x, eps=epsilon, where=where), rtol=1e-12)
    invalid = ~(where & (x != -np.inf))
    assert np.all(got[invalid] == 0.0)
    log_got = np.asarray(
        evs.log_ev_softmax(jnp.asarray(x), where=jnp.asarray(where), epsilon=epsilon)
    )
    log_expected = ref.log_ev_softmax(x, eps=epsilon, where=where)
    np.testing.assert_allclose(log_got, log_expected, rtol=1e-12)
    assert np.all(log_got[invalid] == -np.inf)


def test_minus_inf_behaves_like_where_false():
    x, where = masked_example()
    as_inf = np.where(where, x, -np.inf)
    a = evs.ev_softmax(jnp.asarray(as_inf), epsilon=1e-3)
    b = evs.ev_softmax(jnp.asarray(x), where=jnp.asarray(where), epsilon=1e-3)
    np.testing.assert_array_equal(a, b)


def test_broadcast_mask():
    x = rows_away_from_ties((3, 5))
    where = np.array([True, False, True, True, False])
    got = evs.ev_softmax(jnp.asarray(x), where=jnp.asarray(where))
    np.testing.assert_allclose(got, ref.ev_softmax(x, where=where), rtol=1e-12)


def test_fully_masked_rows_are_zero_and_finite():
    x = np.array([[-np.inf, -np.inf, -np.inf], [1.0, 2.0, 3.0]])
    for epsilon in EPSILONS:
        p = np.asarray(evs.ev_softmax(jnp.asarray(x), epsilon=epsilon))
        assert np.array_equal(p[0], [0.0, 0.0, 0.0])
        logp = np.asarray(evs.log_ev_softmax(jnp.asarray(x), epsilon=epsilon))
        assert np.all(logp[0] == -np.inf)
    masked = evs.ev_softmax(jnp.asarray(x), where=jnp.zeros((2, 3), bool))
    assert np.array_equal(np.asarray(masked), np.zeros((2, 3)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_nan_and_plus_inf_poison_only_their_row(masked, dtype):
    x = np.array([[0.1, np.nan, 0.3], [0.2, np.inf, -1.0], [0.5, -0.5, 2.0], [1.0, 2.0, 3.0]])
    where = np.array([[True] * 3, [True] * 3, [True] * 3, [True, False, True]])
    if masked:
        x[3, 1] = np.nan  # a masked NaN is ignored
    wj = jnp.asarray(where) if masked else None
    xj = jnp.asarray(x, dtype=dtype)
    for fun in (evs.ev_softmax, evs.log_ev_softmax):
        for epsilon in (0.0, 1e-6):
            out = np.asarray(fun(xj, where=wj, epsilon=epsilon))
            assert np.all(np.isnan(out[:2]))
            assert not np.any(np.isnan(out[2:]))
    p = np.asarray(evs.ev_softmax(xj, where=wj), dtype=np.float64)
    expected = ref.ev_softmax(x[2:], where=where[2:] if masked else None)
    np.testing.assert_allclose(p[2:], expected, rtol=1e-6)


@pytest.mark.parametrize("value", [0.0, 1e30, -1e30, 3e38, 1e-30])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_constant_rows_are_uniform(value, dtype):
    if dtype == "float32" and abs(value) > 3.4e38:
        pytest.skip("not representable")
    x = jnp.full((2, 1000), value, dtype=dtype)
    p = np.asarray(evs.ev_softmax(x))
    np.testing.assert_allclose(p, 1e-3, rtol=1e-5)


def test_row_maximum_always_in_support():
    # A row where float32 rounding of the mean would push it above the maximum
    # if the mean were taken of unshifted scores.
    x = np.full((1, 4097), 0.1, dtype=np.float32)
    assert np.float32(x.sum(dtype=np.float32) / np.float32(x.size)) != np.float32(0.1)
    p = np.asarray(evs.ev_softmax(jnp.asarray(x)))
    np.testing.assert_allclose(p, 1 / 4097, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("epsilon", [0.0, 1e-3])
def test_half_precision_is_accumulated_in_float32(dtype, epsilon):
    x = rows_away_from_ties((4, 300))
    xh = jnp.asarray(x, dtype=dtype)
    for name in ("ev_softmax", "log_ev_softmax"):
        fun = getattr(evs, name)
        got = fun(xh, epsilon=epsilon)
        assert got.dtype == xh.dtype
        # Computing in float32 and rounding once gives exactly this result.
        via_f32 = fun(xh.astype(jnp.float32), epsilon=epsilon).astype(dtype)
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(via_f32, np.float32))
        expected = getattr(ref, name)(np.asarray(xh, np.float64), eps=epsilon)
        tol = 1e-2 if dtype == "bfloat16" else 2e-3
        finite = np.isfinite(expected)
        np.testing.assert_allclose(
            np.asarray(got, np.float64)[finite], expected[finite], rtol=tol, atol=tol / 10
        )


# Small integer scores (and -inf) make every sum exact, so the adapter and the
# core must agree on the support exactly, ties included.
_scores = st.sampled_from([-np.inf, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0])


@given(
    x=st.lists(st.lists(_scores, min_size=5, max_size=5), min_size=3, max_size=3),
    mask=st.none() | st.lists(st.booleans(), min_size=5, max_size=5),
    epsilon=st.sampled_from(EPSILONS),
)
def test_agrees_with_core_on_exact_inputs(x, mask, epsilon):
    xj = jnp.asarray(x)
    where = None if mask is None else jnp.asarray(mask)
    for name in ("ev_softmax", "log_ev_softmax"):
        got = getattr(evs, name)(xj, where=where, epsilon=epsilon)
        expected = core(name, xj, where=where, epsilon=epsilon)
        # (atol: the core's log(1 + eps) - log((1 + eps) * 1) is 8e-17, not 0, in float64;
        # a different support would differ by far more.)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    support = evs.ev_softmax(xj, where=where) > 0
    np.testing.assert_array_equal(support, evs.ev_softmax_support(xj, where=where))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_all_true_mask_changes_nothing(dtype):
    # Same rows with and without an all-true mask: the same answer.
    x = jnp.asarray(rows_away_from_ties((6, 50)), dtype=dtype)
    everything = jnp.ones(x.shape, bool)
    rtol = 1e-12 if dtype == "float64" else 2e-6
    for name in ("ev_softmax", "log_ev_softmax"):
        for epsilon in EPSILONS:
            fast = getattr(evs, name)(x, epsilon=epsilon)
            careful = getattr(evs, name)(x, where=everything, epsilon=epsilon)
            np.testing.assert_allclose(fast, careful, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_many_rows_with_every_kind_of_row(masked, dtype):
    # (From 4096 rows on, the adapter's former XLA forms switched formulation.)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4100, 6))
    x[0, 2] = -np.inf
    x[1] = -np.inf
    x[2, 1] = np.nan
    x[3, 4] = np.inf
    x[4] = 7.0
    where = rng.random(x.shape) > 0.2 if masked else None
    wj = None if where is None else jnp.asarray(where)
    for epsilon in (0.0, 1e-3):
        for name in ("ev_softmax", "log_ev_softmax"):
            got = getattr(evs, name)(jnp.asarray(x, dtype=dtype), where=wj, epsilon=epsilon)
            got = np.asarray(got, dtype=np.float64)
            expected = getattr(ref, name)(x.astype(dtype), eps=epsilon, where=where)
            rtol, atol = (1e-9, 1e-14) if dtype == "float64" else (1e-5, 1e-6)
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
            if name == "ev_softmax":
                assert np.all(got[expected == 0.0] == 0.0)
    grad = jax.grad(lambda x: jnp.sum(evs.ev_softmax(x, where=wj)[:, 0]))(jnp.asarray(x, dtype))
    assert not np.any(np.isnan(np.asarray(grad)[[0, 1, 4]]))
