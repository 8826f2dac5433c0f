"""The NumPy fast path agrees with the array-API core and falls back where it must."""

from __future__ import annotations

import numpy as np
import pytest

from evsoftmax import _core
from evsoftmax._lib._compat import array_namespace
from evsoftmax.adapters import numpy as _numpy

from . import reference as ref
from .cpu_kernels import PATHS, use_path

# NumPy and the C kernels only, the same in every session: run in the numpy one.
pytestmark = pytest.mark.only_xp_backend("numpy")

XP = array_namespace(np.ones(1))


@pytest.fixture(params=PATHS)
def each_path(request, monkeypatch):
    """Run on the compiled kernel, then on NumPy's in-place ufuncs."""
    use_path(request.param, monkeypatch)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.5])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("name", ["ev_softmax", "log_ev_softmax"])
def test_fast_path_matches_core(name, axis, epsilon, dtype, each_path):
    x = (np.random.default_rng(0).normal(size=(33, 17)) * 4).astype(dtype)
    kwargs = {"axis": axis, "epsilon": epsilon, "where": None, "xp": XP}
    fast = getattr(_numpy, name)(x, **kwargs)
    core = getattr(_core, name)(x, **kwargs)
    assert fast.dtype == dtype
    assert np.shares_memory(fast, x) is False
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_array_equal(np.isfinite(fast), np.isfinite(core))
    finite = np.isfinite(core)
    np.testing.assert_allclose(fast[finite], core[finite], rtol=tol, atol=tol)


def test_fast_path_is_taken_only_for_plain_finite_input():
    x = np.array([[0.4, 1.4, -0.8]])
    assert _numpy._shifted_and_support(x, 1) is not None
    for bad in (-np.inf, np.inf, np.nan):
        y = x.copy()
        y[0, 0] = bad
        assert _numpy._shifted_and_support(y, 1) is None
    assert not _numpy._fast(x, np.array([True, True, False]))
    assert not _numpy._fast(x.astype(np.float16), None)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf in a NaN row, as NumPy warns
def test_fallback_rows_follow_every_rule(each_path):
    x = np.array([[1.0, -np.inf, 2.0], [-np.inf, -np.inf, -np.inf], [0.4, 1.4, -0.8]])
    for epsilon in (0.0, 0.5):
        got = _numpy.ev_softmax(x, axis=1, epsilon=epsilon, where=None, xp=XP)
        np.testing.assert_allclose(got, ref.ev_softmax(x, eps=epsilon), rtol=1e-12)
        got = _numpy.log_ev_softmax(x, axis=1, epsilon=epsilon, where=None, xp=XP)
        np.testing.assert_allclose(got, ref.log_ev_softmax(x, eps=epsilon), rtol=1e-12)
    bad = np.array([[1.0, np.nan, 2.0], [np.inf, 0.0, 1.0], [0.4, 1.4, -0.8]])
    got = _numpy.ev_softmax(bad, axis=1, epsilon=0.0, where=None, xp=XP)
    assert np.isnan(got[:2]).all()
    np.testing.assert_allclose(got[2], ref.ev_softmax(bad[2:])[0], rtol=1e-12)
