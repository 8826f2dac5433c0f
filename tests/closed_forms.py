"""Test inputs away from ties, and ev-softmax's derivatives written from the paper in NumPy.

Independent of the library: float64 NumPy only. The derivatives are the
closed forms of DESIGN §2/§4: ``p * (g - <p, g>)`` (the VJP and JVP of
ev-softmax for every epsilon) and ``g - p * sum(g)`` over the valid entries of
each row (the VJP of its log), exactly 0 on the others.
"""

from __future__ import annotations

import numpy as np

from .reference import min_gap_to_mean


def no_ties(shape, seed=0, gap=1e-3, scale=3.0, axis=-1) -> np.ndarray:
    """Normal samples times ``scale``, every entry at least ``gap`` away from its row's mean."""
    rng = np.random.default_rng(seed)
    while True:
        x = rng.normal(size=shape) * scale
        if min_gap_to_mean(x, axis=axis) > gap:
            return x


def ev_softmax_vjp(p, g, axis=-1) -> np.ndarray:
    """``p * (g - <p, g>)`` along ``axis``."""
    return p * (g - (p * g).sum(axis=axis, keepdims=True))


def log_ev_softmax_vjp(p, g, valid, axis=-1) -> np.ndarray:
    """``g - p * sum(g)`` over the ``valid`` entries along ``axis``, 0 on the others."""
    g = np.where(valid, g, 0.0)
    return np.where(valid, g - p * g.sum(axis=axis, keepdims=True), 0.0)
