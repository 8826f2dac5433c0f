"""Inputs and float64 expectations shared by the tests of the compiled baseline kernels.

The expectations come from ``reference_baselines`` (written from the maps'
definitions) and from the closed-form VJP written here from the math, never
from the code under test.
"""

from __future__ import annotations

import functools
import math

import numpy as np

import evsoftmax as evs

from . import reference_baselines as ref

__all__ = [
    "CASES",
    "MAPS",
    "TOLERANCE",
    "assert_matches",
    "closed_form_vjp",
    "expected_of",
    "expected_row",
    "rng_rows",
]

# name -> (public function with its parameters, alpha)
MAPS = {
    "sparsemax": (evs.sparsemax, 2.0),
    "entmax15": (evs.entmax15, 1.5),
    **{
        f"bisect_{a}": (functools.partial(evs.entmax_bisect, alpha=a), a)
        for a in (1.25, 1.5, 2.0, 3.0)
    },
}
INF = math.inf


def rng_rows(seed: int, shape: tuple[int, int], scale: float) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


CASES = {
    "random": rng_rows(0, (6, 9), 1.0),
    "wide": rng_rows(1, (3, 300), 3.0),
    "flat": rng_rows(2, (3, 50), 0.05),  # large supports
    "ties": np.array([[1.0, 1.0, 1.0, 0.0], [2.0, 2.0, -1.0, -1.0], [0.5, 0.5, 0.5, 0.5]]),
    "minus_inf": np.array(
        [[-INF, 0.3, 1.2, -INF], [-INF, -INF, -INF, 2.0], [-INF] * 4, [-INF, 2.0, 2.0, -INF]]
    ),
    "one_entry": np.array([[0.7], [-INF], [-3.0]]),
    "two_entries": np.array([[0.0, 0.9], [0.3, 0.3], [5.0, -5.0]]),
    "special": np.array([[0.1, math.nan, 0.2], [INF, 0.0, 1.0], [0.4, 1.0, -0.8]]),
}


@functools.cache
def expected_of(case: str, name: str, dtype: str) -> np.ndarray:
    """The float64 reference of the case's scores as ``dtype`` holds them."""
    alpha = MAPS[name][1]
    x = CASES[case].astype(dtype).astype(np.float64)
    return ref.sparsemax(x) if alpha == 2.0 else ref.entmax(x, alpha)


TOLERANCE = {"float64": 1e-10, "float32": 2e-6}


def assert_matches(out: np.ndarray, expected: np.ndarray, dtype: str) -> None:
    np.testing.assert_allclose(out, expected, atol=TOLERANCE[dtype], rtol=0, equal_nan=True)


def expected_row(name: str, v: np.ndarray) -> np.ndarray:
    alpha = MAPS[name][1]
    return ref.sparsemax_vals(v) if alpha == 2.0 else ref.entmax_vals(v, alpha)


def closed_form_vjp(p: np.ndarray, g: np.ndarray, alpha: float) -> np.ndarray:
    """Row-wise s g - s <s, g> / sum(s) with s = p^(2 - alpha) on the support (float64)."""
    out = np.zeros_like(p)
    for i, (pr, gr) in enumerate(zip(p, g, strict=True)):
        s = np.where(pr > 0, np.where(pr > 0, pr, 1.0) ** (2.0 - alpha), 0.0)
        total = s.sum()
        out[i] = s * gr - (s * (s @ gr / total) if total > 0 else 0.0)
    return out
