"""The paper's Fig. 1 worked example on every backend."""

import numpy as np

import evsoftmax as evs

from .backends import to_numpy
from .reference import softmax

V = [0.4, 1.4, -0.8]


def test_worked_example_ev_softmax(xp):
    p = to_numpy(evs.ev_softmax(xp.asarray(V, dtype=xp.float64)))
    # Fig. 1 of the paper: ev-softmax ~ (0.27, 0.73, 0); the exact value is a
    # two-entry softmax over (0.4, 1.4).
    expected = np.array([1 / (1 + np.e), np.e / (1 + np.e), 0.0])
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(p, [0.27, 0.73, 0.0], atol=5e-3)
    assert p[2] == 0.0


def test_worked_example_support(xp):
    s = to_numpy(evs.ev_softmax_support(xp.asarray(V, dtype=xp.float64)))
    assert s.tolist() == [True, True, False]


def test_worked_example_softmax_reference():
    # The figure's softmax column (printed truncated), checks the float64 reference itself.
    np.testing.assert_allclose(softmax(np.array(V)), [0.25, 0.67, 0.07], atol=1e-2)
