"""The CVAE's metrics, in float64 NumPy.

A digit classifier labels the decoded image of every latent class; the prior
``p(z | y)`` then induces a distribution over digits,
``P(d | y) = sum_z p(z | y) P_classifier(d | decode(z))``, which is compared
with the ground truth (uniform over the five even or the five odd digits) by

* :func:`paper_wasserstein`, the paper's metric as its plotting script computes
  it: ``scipy.stats.wasserstein_distance(P, truth)``, which takes the 10
  probabilities as *sample values* (points on a line) and so ignores which
  digits hold the mass;
* :func:`total_variation`, ``max_A |P(A) - truth(A)|``;
* :func:`wasserstein_on_digits`, W1 on the digit classes with ground metric
  ``|i - j|``;
* :func:`parity_mass`, the prior's mass on digits of the queried parity.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.stats import wasserstein_distance

__all__ = [
    "DIGITS",
    "count_modes",
    "digit_distribution",
    "ground_truth",
    "mean_and_sem",
    "paper_wasserstein",
    "parity_mass",
    "total_variation",
    "wasserstein_on_digits",
]

DIGITS = 10
Floats = npt.NDArray[np.float64]


def ground_truth() -> Floats:
    """Row ``y`` is uniform over the digits of parity ``y``: shape ``(2, 10)``."""
    truth = np.zeros((2, DIGITS))
    for parity in (0, 1):
        truth[parity, parity::2] = 1.0 / (DIGITS // 2)
    return truth


def wasserstein_on_digits(p: npt.ArrayLike, q: npt.ArrayLike) -> Floats:
    """W1 between distributions on ``{0, ..., n-1}`` (last axis), ground metric ``|i - j|``.

    In one dimension W1 is the L1 distance between the cumulative distribution
    functions: ``sum_k |F_p(k) - F_q(k)|``.
    """
    diff = np.cumsum(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64), axis=-1)
    return np.abs(diff[..., :-1]).sum(axis=-1)  # type: ignore[no-any-return]


def paper_wasserstein(p: npt.ArrayLike, q: npt.ArrayLike) -> Floats:
    """``scipy.stats.wasserstein_distance(p_row, q_row)`` per row of the last axis.

    This is how the paper's ``plot_dists.py`` scores a digit distribution: the
    entries are the *values* of two samples of size 10, not weights on the
    digits, so a permutation of ``p`` scores the same.
    """
    p64, q64 = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(q, np.float64))
    flat_p, flat_q = p64.reshape(-1, p64.shape[-1]), q64.reshape(-1, q64.shape[-1])
    out = [wasserstein_distance(a, b) for a, b in zip(flat_p, flat_q, strict=True)]
    return np.asarray(out, dtype=np.float64).reshape(p64.shape[:-1])


def total_variation(p: npt.ArrayLike, q: npt.ArrayLike) -> Floats:
    """``0.5 * sum_k |p_k - q_k|`` over the last axis."""
    diff = np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)
    return 0.5 * np.abs(diff).sum(axis=-1)  # type: ignore[no-any-return]


def parity_mass(digits: npt.ArrayLike) -> Floats:
    """``sum_{d = y mod 2} P(d | y)`` for ``digits`` ``(..., 2, 10)``: shape ``(..., 2)``."""
    return (np.asarray(digits, dtype=np.float64) * (ground_truth() > 0)).sum(axis=-1)  # type: ignore[no-any-return]


def digit_distribution(prior: npt.ArrayLike, labels: npt.ArrayLike) -> Floats:
    """``P(d | y)`` from ``prior`` ``(..., queries, K)`` and ``labels`` ``(..., K, digits)``."""
    return np.asarray(prior, dtype=np.float64) @ np.asarray(labels, dtype=np.float64)  # type: ignore[no-any-return]


def count_modes(prior: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Number of latent classes with non-zero prior probability (last axis)."""
    return (np.asarray(prior) > 0).sum(axis=-1)  # type: ignore[no-any-return]


def mean_and_sem(values: npt.ArrayLike, axis: int = 0) -> tuple[Floats, Floats]:
    """Mean and standard error (sample std / sqrt(n)) over ``axis``; SE is NaN for one value."""
    array = np.asarray(values, dtype=np.float64)
    n = array.shape[axis]
    mean = array.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, math.nan)
    return mean, array.std(axis=axis, ddof=1) / math.sqrt(n)
