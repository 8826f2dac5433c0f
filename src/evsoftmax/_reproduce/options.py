"""Settings of the CVAE experiment and the presets the command line offers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["DEFAULT", "NORMALIZERS", "QUICK", "SPARSE_LOSSES", "CVAEOptions"]

NORMALIZERS = ("softmax", "sparsemax", "entmax15", "ev_softmax")
"""The normalizers compared, in the order of every table and figure."""

SPARSE_LOSSES = ("smoothed-kl", "fenchel-young")
"""Stand-ins for the KL term of sparsemax and entmax-1.5 (see ``losses``)."""


@dataclass(frozen=True)
class CVAEOptions:
    """Everything that defines one run of the CVAE experiment.

    The network sizes follow the paper's MNIST CVAE scaled to 8x8 images: a
    prior network ``p(z | y)`` from the one-hot query, a posterior network
    ``q(z | x, y)`` and a decoder ``p(x | z)`` from the one-hot latent class.
    """

    normalizers: tuple[str, ...] = NORMALIZERS
    seeds: int = 5
    first_seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    eval_every: int = 100
    latent_classes: int = 10
    hidden: int = 64
    prior_hidden: int = 32
    learning_rate: float = 3e-3
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
        if self.sparse_loss not in SPARSE_LOSSES:
            raise ValueError(
                f"sparse_loss must be one of {SPARSE_LOSSES}, got {self.sparse_loss!r}"
            )
        for name in ("seeds", "steps", "batch_size", "eval_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


DEFAULT = CVAEOptions()
"""The recorded run of ``docs/reproduction.md`` (under 5 minutes on 2 CPU cores)."""

QUICK = DEFAULT.replace(seeds=2, steps=600, eval_every=100, classifier_steps=150)
"""``--quick``: the same experiment, shorter and with two seeds (under a minute)."""
