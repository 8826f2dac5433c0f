r"""A small VQ-VAE and a class-conditional autoregressive prior over its codes (Table 3).

The paper trains a VQ-VAE on tinyImageNet (``K = 512`` codes) and a gated
PixelCNN prior over its latent grid whose output normalizer varies, then
scores sampled images by the top-k accuracy of a classifier. Here, at the
scale of scikit-learn's 8x8 digits:

* **VQ-VAE**: a convolutional encoder to a 4x4 grid of 16-dim vectors, a
  codebook of ``K = 64`` codes (nearest-code quantization, straight-through
  gradient, codebook and commitment losses with ``beta = 0.25``), a
  transposed-convolution decoder with Bernoulli pixels. One VQ-VAE per seed,
  shared by the four normalizers (they differ only in the prior).
* **Prior**: the 16 codes in raster order, modeled by a GRU whose input is the
  previous code's embedding plus the digit's embedding; its output logits
  over the ``K`` codes go through the normalizer under test. Trained with the
  normalizer's own loss (softmax: cross-entropy; sparsemax, entmax-1.5:
  Fenchel-Young; ev-softmax: the NLL of its training family, ``epsilon =
  1e-6``) and sampled with ``epsilon = 0``.
* **Metrics**: the digit classifier of the CVAE experiment labels the decoded
  samples of each class: Acc-1 and Acc-3 (the class among its top 1 or 3;
  with 10 classes the paper's Acc-5/Acc-10 would be near-trivial), and the
  mean number of codes with non-zero probability per sampling step.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from rich import box
from rich.table import Table

from . import losses, metric, normalizers
from .data import SIDE, Digits, load
from .normalizers import LABELS
from .options import NORMALIZERS, CVAEOptions
from .report import environment, pm
from .training import Classifier, train_classifier

__all__ = [
    "DEFAULT",
    "PAPER",
    "QUICK",
    "VQVAEOptions",
    "run_vqvae",
    "samples_figure",
    "summarize",
    "table",
]

_package = importlib.import_module("..", __package__)
_ORDER_OFFSET = 6_000_011
_SAMPLE_OFFSET = 7_000_003
_PRIOR_OFFSET = 8_000_009
POSITIONS = 16  # the 4x4 latent grid

PAPER = {
    "softmax": {"acc5": 38.4, "acc10": 48.8, "nonzero": 512.0},
    "sparsemax": {"acc5": 40.0, "acc10": 52.0, "nonzero": 46.0},
    "entmax15": {"acc5": 38.4, "acc10": 49.2, "nonzero": 90.0},
    "ev_softmax": {"acc5": 43.6, "acc10": 55.6, "nonzero": 77.0},
}
"""The paper's Table 3 (tinyImageNet, K = 512): Acc-5 and Acc-10 (%), non-zero classes."""


@dataclass(frozen=True)
class VQVAEOptions:
    """Everything that defines one run of the VQ-VAE experiment."""

    normalizers: tuple[str, ...] = NORMALIZERS
    seeds: int = 3
    first_seed: int = 0
    codes: int = 64
    code_dims: int = 16
    vqvae_steps: int = 1000
    steps: int = 1000  # prior training steps per normalizer and seed
    batch_size: int = 64
    learning_rate: float = 2e-3
    commitment: float = 0.25
    prior_hidden: int = 128
    samples_per_class: int = 30
    epsilon: float = 1e-6
    test_fraction: float = 0.2
    threads: int = 1

    def replace(self, **changes: object) -> VQVAEOptions:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.normalizers) - set(NORMALIZERS))
        if unknown or not self.normalizers:
            raise ValueError(f"normalizers must be among {NORMALIZERS}, got {self.normalizers}")
        for name in ("seeds", "codes", "vqvae_steps", "steps", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {self.samples_per_class}")


DEFAULT = VQVAEOptions()
"""The recorded run of ``docs/reproduction.md``."""

QUICK = DEFAULT.replace(seeds=2, vqvae_steps=150, steps=100, samples_per_class=10)
"""``--quick``: two seeds, a few hundred steps (seconds)."""


class _VQVAE(torch.nn.Module):
    def __init__(self, codes: int, dims: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, dims, 4, stride=2, padding=1),
        )
        self.decoder = torch.nn.Sequential(
            torch.nn.ConvTranspose2d(dims, 32, 4, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, 1, 3, padding=1),
        )
        self.codebook = torch.nn.Parameter(torch.randn(codes, dims))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 64)`` images to the encoder's ``(B, 16, dims)`` vectors."""
        out: torch.Tensor = self.encoder(images.reshape(-1, 1, SIDE, SIDE))
        return out.flatten(2).transpose(1, 2)

    def quantize(self, vectors: torch.Tensor) -> torch.Tensor:
        """The index of the nearest code of every vector: ``(B, 16)``."""
        distances = torch.cdist(vectors, self.codebook.expand(len(vectors), -1, -1))
        return distances.argmin(-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits ``(B, 64)`` of code grids ``(B, 16)``."""
        return self._decode_vectors(self.codebook[codes])

    def _decode_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        grid = vectors.transpose(1, 2).reshape(len(vectors), -1, 4, 4)
        out: torch.Tensor = self.decoder(grid)
        return out.reshape(len(vectors), -1)

    def loss(self, images: torch.Tensor, commitment: float) -> torch.Tensor:
        """Reconstruction (BCE, summed over pixels) + codebook + commitment losses."""
        z = self.encode(images)
        e = self.codebook[self.quantize(z.detach())]
        straight = z + (e - z).detach()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            self._decode_vectors(straight), images, reduction="none"
        ).sum(-1)
        vq = (z.detach() - e).square().sum((-2, -1)) + commitment * (z - e.detach()).square().sum(
            (-2, -1)
        )
        return (bce + vq).mean()


class _Prior(torch.nn.Module):
    def __init__(self, codes: int, hidden: int) -> None:
        super().__init__()
        self.codes = codes
        self.token = torch.nn.Embedding(codes + 1, hidden)  # codes + a start token
        self.digit = torch.nn.Embedding(metric.DIGITS, hidden)
        self.rnn = torch.nn.GRU(hidden, hidden, batch_first=True)
        self.out = torch.nn.Linear(hidden, codes)

    def forward(
        self, previous: torch.Tensor, digit: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the next code after ``previous`` ``(B, T)``, and the GRU state."""
        inputs = self.token(previous) + self.digit(digit).unsqueeze(1)
        hidden, state = self.rnn(inputs, state)
        return self.out(hidden), state

    def teacher_forced(self, codes: torch.Tensor, digit: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 16, K)`` of every code given the ones before it."""
        start = torch.full((len(codes), 1), self.codes, dtype=codes.dtype)
        logits: torch.Tensor = self(torch.cat([start, codes[:, :-1]], dim=1), digit)[0]
        return logits


def train_vqvae(data: Digits, options: VQVAEOptions, seed: int) -> _VQVAE:
    """One VQ-VAE, codebook initialized at encoder outputs of random training images."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _VQVAE(options.codes, options.code_dims)
        with torch.no_grad():
            vectors = model.encode(data.x_train).reshape(-1, options.code_dims)
            model.codebook.copy_(vectors[torch.randperm(len(vectors))[: options.codes]])
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    order = torch.Generator().manual_seed(seed + _ORDER_OFFSET)
    for _ in range(options.vqvae_steps):
        batch = data.x_train[
            torch.randint(len(data.x_train), (options.batch_size,), generator=order)
        ]
        loss = model.loss(batch, options.commitment)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return model


def train_prior(
    name: str,
    codes: torch.Tensor,
    digits: torch.Tensor,
    options: VQVAEOptions,
    seed: int,
    advance: Callable[[int], None] = lambda steps: None,
) -> _Prior:
    """The class-conditional prior over code grids ``codes`` ``(N, 16)``; normalizer ``name``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed + _PRIOR_OFFSET)
        prior = _Prior(options.codes, options.prior_hidden)
    optimizer = torch.optim.Adam(prior.parameters(), lr=options.learning_rate)
    order = torch.Generator().manual_seed(seed + _ORDER_OFFSET + 1)
    for _ in range(options.steps):
        index = torch.randint(len(codes), (options.batch_size,), generator=order)
        logits = prior.teacher_forced(codes[index], digits[index])
        loss = losses.class_loss(name, logits, codes[index], options.epsilon)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        advance(1)
    return prior


def sample(
    prior: _Prior, name: str, digits: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """Code grids ``(B, 16)`` sampled for ``digits``, and the mean non-zero codes per step."""
    normalize = normalizers.lookup(name)
    previous = torch.full((len(digits), 1), prior.codes, dtype=torch.long)
    state, out, nonzero = None, [], 0.0
    with torch.no_grad():
        for _ in range(POSITIONS):
            logits, state = prior(previous, digits, state)
            probs = normalize(logits[:, -1].double())
            nonzero += float((probs > 0).sum(-1).double().mean())
            previous = torch.multinomial(probs, 1, generator=generator)
            out.append(previous)
    return torch.cat(out, dim=1), nonzero / POSITIONS


@dataclass(frozen=True)
class VQVAEResults:
    """What one run measured: per normalizer, per seed."""

    options: VQVAEOptions
    classifier_accuracy: float
    reconstruction_bce: list[float]  # per seed: test BCE of the VQ-VAE (nats per image)
    codes_used: list[int]  # per seed: distinct codes in the training grids
    acc1: dict[str, list[float]]
    acc3: dict[str, list[float]]
    nonzero: dict[str, list[float]]
    images: dict[str, np.ndarray[Any, Any]]  # first seed: (10, 8, 64) decoded samples
    seconds: float


def run_vqvae(
    options: VQVAEOptions,
    start: Callable[[str], None] = lambda name: None,
    advance: Callable[[int], None] = lambda steps: None,
) -> VQVAEResults:
    """Train the VQ-VAE and the four priors on every seed, sample and score."""
    began = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        data = load(options.test_fraction)
        classifier: Classifier = train_classifier(data, CVAEOptions())
        acc1: dict[str, list[float]] = {n: [] for n in options.normalizers}
        acc3: dict[str, list[float]] = {n: [] for n in options.normalizers}
        nonzero: dict[str, list[float]] = {n: [] for n in options.normalizers}
        images: dict[str, np.ndarray[Any, Any]] = {}
        bce, used = [], []
        for seed in range(options.first_seed, options.first_seed + options.seeds):
            start("VQ-VAE")
            vq = train_vqvae(data, options, seed)
            with torch.no_grad():
                codes = vq.quantize(vq.encode(data.x_train))
                test_logits = vq.decode(vq.quantize(vq.encode(data.x_test)))
                bce.append(
                    float(
                        torch.nn.functional.binary_cross_entropy_with_logits(
                            test_logits, data.x_test, reduction="sum"
                        )
                        / len(data.x_test)
                    )
                )
            used.append(len(np.unique(codes.numpy())))
            wanted = torch.arange(metric.DIGITS).repeat_interleave(options.samples_per_class)
            for name in options.normalizers:
                start(name)
                prior = train_prior(name, codes, data.digit_train, options, seed, advance)
                generator = torch.Generator().manual_seed(seed + _SAMPLE_OFFSET)
                grids, mean_nonzero = sample(prior, name, wanted, generator)
                with torch.no_grad():
                    decoded = torch.sigmoid(vq.decode(grids))
                ranked = classifier.probabilities(decoded).argsort(-1, descending=True)
                acc1[name].append(float((ranked[:, 0] == wanted).double().mean()) * 100)
                acc3[name].append(
                    float((ranked[:, :3] == wanted[:, None]).any(-1).double().mean()) * 100
                )
                nonzero[name].append(mean_nonzero)
                if seed == options.first_seed:
                    shown = decoded.reshape(metric.DIGITS, options.samples_per_class, -1)
                    images[name] = shown[:, :8].double().numpy()
    finally:
        torch.set_num_threads(threads)
    return VQVAEResults(
        options,
        classifier.test_accuracy,
        bce,
        used,
        acc1,
        acc3,
        nonzero,
        images,
        time.perf_counter() - began,
    )


def _stat(values: Any) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    mean, sem = metric.mean_and_sem(array)
    return {
        "mean": float(mean),
        "sem": None if not math.isfinite(float(sem)) else float(sem),
        "per_seed": array.tolist(),
    }


def summarize(results: VQVAEResults) -> dict[str, Any]:
    """The JSON-ready document of a run (accuracies in %)."""
    entries: dict[str, dict[str, Any]] = {
        name: {
            "label": LABELS[name],
            "acc1": _stat(results.acc1[name]),
            "acc3": _stat(results.acc3[name]),
            "nonzero_codes": _stat(results.nonzero[name]),
            "paper": PAPER[name],
        }
        for name in results.options.normalizers
    }
    summary: dict[str, Any] = {
        "experiment": "vqvae-digits",
        "options": dataclasses.asdict(results.options),
        "environment": environment(),
        "classifier_test_accuracy": results.classifier_accuracy,
        "vqvae_test_bce": _stat(results.reconstruction_bce),
        "codes_used": results.codes_used,
        "seconds": results.seconds,
        "normalizers": entries,
    }
    summary["ordering"] = sorted(entries, key=lambda n: -entries[n]["acc1"]["mean"])
    summary["paper_claims"] = paper_claims(summary)
    return summary


def paper_claims(summary: dict[str, Any]) -> dict[str, bool]:
    """Table 3's findings, checked against the means of this run."""
    entries = summary["normalizers"]
    if "ev_softmax" not in entries:
        return {}
    ev = entries["ev_softmax"]
    claims = {}
    for name in ("softmax", "sparsemax", "entmax15"):
        if name in entries:
            better = ev["acc1"]["mean"] > entries[name]["acc1"]["mean"]
            claims[f"ev-softmax samples classified better than {LABELS[name]}'s (Acc-1)"] = better
    if "softmax" in entries:
        fewer = ev["nonzero_codes"]["mean"] < entries["softmax"]["nonzero_codes"]["mean"]
        claims["ev-softmax keeps fewer non-zero codes than softmax"] = fewer
    if "sparsemax" in entries:
        more = ev["nonzero_codes"]["mean"] > entries["sparsemax"]["nonzero_codes"]["mean"]
        claims["ev-softmax keeps more non-zero codes than sparsemax"] = more
    return claims


def table(summary: dict[str, Any]) -> Table:
    """The terminal table, the paper's numbers beside."""
    out = Table(
        title=f"VQ-VAE prior on 8x8 digits (K = {summary['options']['codes']}): "
        f"{summary['options']['seeds']} seed(s)",
        caption="Acc-k: the sampled image's digit among the classifier's top k (%). "
        "non-zero: codes with non-zero probability per sampling step. "
        "paper: tinyImageNet, K = 512, Acc-5 / Acc-10.",
        box=box.SIMPLE_HEAD,
    )
    out.add_column("normalizer", no_wrap=True)
    for header in ("Acc-1", "Acc-3", "non-zero", "paper Acc-5/10", "paper non-zero"):
        out.add_column(header, justify="right", no_wrap=True)
    for entry in summary["normalizers"].values():
        paper = entry["paper"]
        out.add_row(
            entry["label"],
            pm(entry["acc1"], 1),
            pm(entry["acc3"], 1),
            pm(entry["nonzero_codes"], 1),
            f"{paper['acc5']:.1f} / {paper['acc10']:.1f}",
            f"{paper['nonzero']:.0f}",
        )
    return out


def samples_figure(results: VQVAEResults, path: Path) -> None:
    """Decoded samples of the first seed: one block per normalizer, one row per digit."""
    names = list(results.images)
    figure = Figure(figsize=(2.4 * len(names), 3.2), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        shown = results.images[name]  # (10, columns, 64)
        rows, columns = shown.shape[:2]
        mosaic = shown.reshape(rows, columns, SIDE, SIDE).transpose(0, 2, 1, 3)
        ax.imshow(mosaic.reshape(rows * SIDE, columns * SIDE), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(LABELS[name])
        ax.set_xticks([])
        ax.set_yticks(np.arange(rows) * SIDE + SIDE / 2, [str(d) for d in range(rows)])
    figure.suptitle("VQ-VAE samples from each prior (first seed; row = queried digit)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
