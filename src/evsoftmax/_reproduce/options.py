"""Settings of the CVAE experiment and the presets the command line offers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = [
    "DEFAULT",
    "EXACT",
    "NORMALIZERS",
    "OPTIMIZERS",
    "QUICK",
    "SPARSE_LOSSES",
    "VARIANTS",
    "CVAEOptions",
    "quick",
]

NORMALIZERS = ("softmax", "sparsemax", "entmax15", "ev_softmax")
"""The normalizers compared, in the order of every table and figure."""

SPARSE_LOSSES = ("smoothed-kl", "fenchel-young")
"""Stand-ins for the KL term of sparsemax and entmax-1.5 (see ``losses``)."""

VARIANTS = ("relaxed", "exact")
"""``relaxed``: the paper's recipe (a relaxed one-hot sample of ``z``); ``exact``:
exact marginalization over the posterior's support."""

OPTIMIZERS = ("sgd", "adam")

# The paper trains 10 MNIST epochs at batch 64: 10 * 60000 / 64 SGD updates.
_PAPER_STEPS = 9375


@dataclass(frozen=True)
class CVAEOptions:
    """Everything that defines one run of the CVAE experiment.

    The default is the paper's recipe (its reference code's networks, loss
    BCE + 0.01 KL, relaxed one-hot ``z`` at temperature 0.67, SGD at learning
    rate 1e-3, batch 64, ``epsilon = 1e-6`` in training and 0 at evaluation)
    on 8x8 digits. ``decoder_hidden = 0`` means a linear decoder whose rows
    start at training images (the ``exact`` variant).
    """

    variant: str = "relaxed"
    normalizers: tuple[str, ...] = NORMALIZERS
    seeds: int = 5
    first_seed: int = 0
    steps: int = _PAPER_STEPS
    batch_size: int = 64
    eval_every: int = 375
    latent_classes: int = 10
    hidden: int = 256
    prior_hidden: int = 30
    decoder_hidden: int = 256
    optimizer: str = "sgd"
    learning_rate: float = 1e-3
    temperature: float = 0.67
    beta: float = 0.01
    epsilon: float = 1e-6
    sparse_loss: str = "smoothed-kl"
    smoothing: float = 1e-6
    classifier_hidden: int = 32
    classifier_steps: int = 300
    test_fraction: float = 0.2
    threads: int = 1

    def replace(self, **changes: object) -> CVAEOptions:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.normalizers) - set(NORMALIZERS))
        if unknown or not self.normalizers:
            raise ValueError(f"normalizers must be among {NORMALIZERS}, got {self.normalizers}")
        for name, allowed in (
            ("variant", VARIANTS),
            ("sparse_loss", SPARSE_LOSSES),
            ("optimizer", OPTIMIZERS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("seeds", "steps", "batch_size", "eval_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.variant == "exact" and self.decoder_hidden:
            raise ValueError("the exact variant has a linear decoder: decoder_hidden must be 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


DEFAULT = CVAEOptions()
"""The paper's recipe, recorded in ``docs/reproduction.md``."""

EXACT = CVAEOptions(
    variant="exact",
    steps=3000,
    eval_every=100,
    hidden=64,
    prior_hidden=32,
    decoder_hidden=0,
    optimizer="adam",
    learning_rate=3e-3,
)
"""Exact marginalization over the posterior's support (Adam, a linear decoder
whose rows start at 10 training images: see ``docs/reproduction.md``)."""


def quick(options: CVAEOptions) -> CVAEOptions:
    """``--quick``: the same experiment with two seeds and 600 steps (seconds)."""
    return options.replace(seeds=2, steps=600, eval_every=100, classifier_steps=150)


QUICK = quick(DEFAULT)
"""``--quick`` of the paper's recipe."""
