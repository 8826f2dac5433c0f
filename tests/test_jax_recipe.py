"""DESIGN §4's numerical recipe on both JAX paths (the FFI kernel and the XLA form).

Each case here broke one of the JAX adapter's former XLA forms (issue 12:
D2 large ε, D3 tiny scores next to ``-inf`` or a mask, D16 an overflowing
shift). Expected values come from the float64 reference in ``tests/reference.py``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402

import evsoftmax as evs  # noqa: E402
from evsoftmax.adapters.jax import kernels as _kernels  # noqa: E402

from . import reference as ref  # noqa: E402
from .cpu_kernels import PATHS  # noqa: E402
from .jax_helpers import jax_path, sync_jax_caches  # noqa: E402


@pytest.fixture(autouse=True, scope="module", params=PATHS)
def each_path(request):
    """Every test on the compiled kernel, then on the XLA form alone."""
    with jax_path(request.param) as path:
        yield path


def _both(x, *, epsilon=0.0, where=None, rtol=1e-12, atol=0.0):
    """ev_softmax and log_ev_softmax of ``x`` against the float64 reference."""
    xj = jnp.asarray(x)
    wj = None if where is None else jnp.asarray(where)
    x64 = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):  # the reference at 1.7e308, and its cast to float32
        expected_p = ref.ev_softmax(x64, eps=epsilon, where=where)
        expected = ref.log_ev_softmax(x64, eps=epsilon, where=where).astype(x.dtype)
    p = np.asarray(evs.ev_softmax(xj, epsilon=epsilon, where=wj), np.float64)
    np.testing.assert_allclose(p, expected_p, rtol=rtol, atol=atol)
    logp = np.asarray(evs.log_ev_softmax(xj, epsilon=epsilon, where=wj), np.float64)
    np.testing.assert_allclose(logp, expected, rtol=rtol, atol=atol)
    return p


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_tiny_scores_next_to_minus_inf_or_a_mask(masked, dtype):
    # D3: the excluded entry used to be encoded as +1 next to the scores, and
    # 1 + 1e-9 == 1 swallowed them: [1, 0, 0, 0, 0].
    x = np.array([[2e-9, 1e-9, -1e-9, -2e-9, 5.0 if masked else -np.inf]], dtype)
    where = np.array([True, True, True, True, False]) if masked else None
    rtol = 1e-12 if dtype == "float64" else 1e-6
    p = _both(x, where=where, rtol=rtol)
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0, 0.0, 0.0]], atol=1e-6)
    _both(x, where=where, epsilon=1e-3, rtol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("epsilon", [3.0, 3e38, 1e300])
def test_large_finite_epsilon_gives_finite_probabilities(epsilon, dtype):
    # D2: eps * exp(.) overflowed (NaN at 1e300, zeros at 3e38); the recipe's
    # weights are 1 on the support and eps / (1 + eps) off it.
    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, -3.0], [2.0, -np.inf, 1.0]], dtype)
    rtol = 1e-12 if dtype == "float64" else 1e-6
    p = _both(x, epsilon=epsilon, rtol=rtol, atol=1e-300)
    assert np.all(np.isfinite(p))
    if epsilon > 1e30:  # ε/(1+ε) rounds to 1: plain softmax over the valid entries
        np.testing.assert_allclose(p[1], ref.softmax(x[1].astype(np.float64)), rtol=rtol)


def _exact_rows(x: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """ev-softmax and its log for finite rows, the mean taken in exact rationals.

    (``tests/reference.py`` sums in float64, which itself overflows at 1.7e308.)
    """
    p, logp = np.zeros(x.shape), np.full(x.shape, -np.inf)
    for i, row in enumerate(x.astype(np.float64)):
        mean = sum(map(Fraction, row)) / row.size
        support = np.array([Fraction(v) >= mean for v in row])
        with np.errstate(over="ignore", divide="ignore"):
            shifted = row - row.max()  # -inf where it overflows: weight 0 either way
            w = (support + epsilon) * np.exp(shifted)
            p[i] = w / w.sum()
            logp[i] = np.log(support + epsilon) + shifted - np.log(w.sum())
    return p, logp


@pytest.mark.parametrize(
    ("dtype", "top"), [("float32", 3e38), ("float64", 1.7e308)], ids=["float32", "float64"]
)
@pytest.mark.parametrize("epsilon", [0.0, 1e-3])
def test_a_range_whose_shift_overflows(top, dtype, epsilon, each_path):
    # D16: x - max overflows to -inf for finite x, so the threshold (sum / n)
    # was -inf and the XLA form returned NaN rows. Support and weights follow
    # the exact mean (weights exp(x - max) underflow to 0 far from the max).
    x = np.array(
        [
            [top, -top, 0.0, 0.0],
            [0.0, -top, -top, 1.0],  # the sum overflows, no single shift does
            [top, top, -top, -top],
            [1.0, 2.0, 3.0, 4.0],  # an ordinary row beside them
        ],
        dtype,
    )
    expected_p, expected_logp = _exact_rows(x, epsilon)
    rtol = 1e-6 if dtype == "float32" else 1e-12
    p = np.asarray(evs.ev_softmax(jnp.asarray(x), epsilon=epsilon), np.float64)
    np.testing.assert_allclose(p, expected_p, rtol=rtol, atol=0)
    logp = np.asarray(evs.log_ev_softmax(jnp.asarray(x), epsilon=epsilon), np.float64)
    with np.errstate(over="ignore"):
        expected_logp = expected_logp.astype(dtype)
    np.testing.assert_allclose(logp, expected_logp, rtol=rtol, atol=0)
    np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0, 0.0])


def test_ties_at_an_exactly_representable_mean():
    # Row mean (2 + 5 - 1) / 3 = 2 exactly: the entry 2 stays in the support.
    x = np.tile(np.array([2.0, 5.0, -1.0], np.float32), (4, 1))
    for where in (None, np.ones(3, bool)):
        p = _both(x, where=where, rtol=1e-6)
        np.testing.assert_allclose(p[0], [0.0474259, 0.9525741, 0.0], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_offsets(dtype):
    x = np.array([[1e7 + 2, 1e7 + 1, 1e7], [1e7, 1e7, 1e7]], dtype)
    p = _both(x, epsilon=3.0, rtol=1e-6 if dtype == "float32" else 1e-12)
    np.testing.assert_allclose(p[0], [0.6806, 0.2504, 0.0691], atol=1e-4)


def test_long_rows_take_the_same_recipe():
    # Rows long enough for the kernel by default, with the special rows.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    x[1, 5] = -np.inf
    x[2] = -np.inf
    x[3, 7] = np.nan
    x[4, :32] = 3e38
    x[4, 32:] = -3e38
    _both(x, epsilon=1e300, rtol=1e-5, atol=1e-7)
    _both(x[:4], epsilon=0.0, where=rng.random(64) > 0.3, rtol=1e-5, atol=1e-7)


def _lowers_to_kernel(fun, x) -> bool:
    return "custom_call @" in jax.jit(fun).lower(x).as_text()


def test_short_half_rows_take_the_xla_form(each_path, monkeypatch):
    # Half-precision rows shorter than kernels._MIN_LENGTH are faster in the XLA
    # form (measured); float32 rows take the kernel at every length.
    monkeypatch.setattr(_kernels, "_MIN_LENGTH", {"bfloat16": 16})
    sync_jax_caches()
    on_kernel = each_path == "kernel"
    assert _lowers_to_kernel(evs.ev_softmax, jnp.ones((4, 2), jnp.float32)) == on_kernel
    assert not _lowers_to_kernel(evs.ev_softmax, jnp.ones((4, 8), jnp.bfloat16))
    assert _lowers_to_kernel(evs.ev_softmax, jnp.ones((4, 16), jnp.bfloat16)) == on_kernel
