"""scikit-learn's bundled 8x8 digits, split once, as float32 tensors in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = ["PIXELS", "SIDE", "Digits", "load"]

SIDE = 8
PIXELS = SIDE * SIDE
_SPLIT_SEED = 0


@dataclass(frozen=True)
class Digits:
    """Images (``(N, 64)``, values in [0, 1]) and digit labels of both splits.

    The query of the CVAE is the parity of the digit: ``y = digit % 2``.
    """

    x_train: torch.Tensor
    digit_train: torch.Tensor
    x_test: torch.Tensor
    digit_test: torch.Tensor

    @property
    def parity_train(self) -> torch.Tensor:
        """The query of each training image: 0 for even digits, 1 for odd."""
        return self.digit_train % 2


def load(test_fraction: float) -> Digits:
    """Load the 1797 digits shipped with scikit-learn (no download) and split them.

    The split is stratified by digit and fixed across seeds, so that every seed
    trains on the same images and only the initialization and batch order vary.
    """
    images, digits = load_digits(return_X_y=True)
    x_train, x_test, d_train, d_test = train_test_split(
        images / 16.0, digits, test_size=test_fraction, stratify=digits, random_state=_SPLIT_SEED
    )
    return Digits(
        torch.as_tensor(x_train, dtype=torch.float32),
        torch.as_tensor(d_train, dtype=torch.long),
        torch.as_tensor(x_test, dtype=torch.float32),
        torch.as_tensor(d_test, dtype=torch.long),
    )
