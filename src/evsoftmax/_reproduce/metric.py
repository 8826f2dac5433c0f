"""The paper's metric, in float64 NumPy.

A digit classifier labels the decoded image of every latent class; the prior
``p(z | y)`` then induces a distribution over digits,
``P(d | y) = sum_z p(z | y) P_classifier(d | decode(z))``, which is compared
with the ground truth (uniform over the five even or the five odd digits) by
the 1-D Wasserstein distance on the digit classes with ground metric
``|i - j|``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "DIGITS",
    "count_modes",
    "digit_distribution",
    "ground_truth",
    "mean_and_sem",
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
