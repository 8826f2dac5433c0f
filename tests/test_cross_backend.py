"""float32 outputs agree across backends (to 1e-6) with NumPy's."""

from __future__ import annotations

import numpy as np
import pytest

import evsoftmax as evs

from . import reference as ref
from .backends import to_numpy


@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_float32_agrees_with_numpy(xp, epsilon):
    rng = np.random.default_rng(11)
    x = (rng.normal(size=(64, 37)) * 3).astype(np.float32)
    where = rng.random(size=x.shape) > 0.2
    assert ref.min_gap_to_mean(x) > 1e-5
    expected = evs.ev_softmax(x, where=where, epsilon=epsilon)
    got = to_numpy(evs.ev_softmax(xp.asarray(x), where=xp.asarray(where), epsilon=epsilon))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    log_expected = evs.log_ev_softmax(x, where=where, epsilon=epsilon)
    log_got = to_numpy(evs.log_ev_softmax(xp.asarray(x), where=xp.asarray(where), epsilon=epsilon))
    finite = np.isfinite(log_expected)
    np.testing.assert_array_equal(np.isfinite(log_got), finite)
    np.testing.assert_allclose(log_got[finite], log_expected[finite], atol=1e-5, rtol=1e-6)
