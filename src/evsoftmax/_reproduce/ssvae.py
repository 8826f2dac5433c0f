r"""The semi-supervised VAE of the paper's Table 2, on the 8x8 digits.

After Correia et al. (2020), as the paper does: a classifier ``q(y | x)``
normalized by the normalizer under test, a Gaussian latent ``q(z | x, y)``
and a decoder ``p(x | y, z)`` (Bernoulli pixels), with a uniform ``p(y)`` and a
standard normal ``p(z)``. For an image ``x`` and a class ``y``

.. math::

    L(x, y) = \mathrm{BCE}(x, \mathrm{dec}(y, z)) + \mathrm{KL}(q(z|x,y) \| N(0, I)),
    \quad z \sim q(z | x, y) \text{ (one reparameterized sample)}.

A labeled image costs ``L(x, y) + alpha * C(x, y)``, ``C`` the normalizer's own
classification loss (softmax: cross-entropy; sparsemax, entmax-1.5: their
Fenchel-Young losses; ev-softmax: the NLL of its training family, ``epsilon =
1e-6``). An unlabeled image costs the exact marginal

.. math::

    U(x) = \sum_{y:\ q(y|x) > 0} q(y | x)\, L(x, y) + \mathrm{KL}(q(y|x) \| p(y)),

computed by :func:`evsoftmax.sparse_expectation`, so the decoder runs only on
the classes in the support of ``q(y | x)``: the *decoder calls per example*.
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
import numpy.typing as npt
import torch
from matplotlib.figure import Figure
from rich import box
from rich.table import Table

from . import metric, normalizers
from .data import PIXELS, Digits, load
from .models import MLP, init_mlp
from .normalizers import LABELS
from .options import NORMALIZERS
from .report import environment, pm

__all__ = [
    "DEFAULT",
    "PAPER",
    "QUICK",
    "SSVAEOptions",
    "SSVAEResults",
    "accuracy_figure",
    "labeled_subset",
    "run_ssvae",
    "summarize",
    "table",
    "train_ssvae",
]

CLASSES = metric.DIGITS
_package = importlib.import_module("..", __package__)
_LABEL_OFFSET = 3_000_017
_ORDER_OFFSET = 4_000_037
_NOISE_OFFSET = 5_000_011
Floats = npt.NDArray[np.float64]

PAPER = {
    "softmax": {"accuracy": 96.93, "decoder_calls": 10.0},
    "sparsemax": {"accuracy": 96.87, "decoder_calls": 1.01},
    "entmax15": {"accuracy": 97.20, "decoder_calls": 1.01},
    "ev_softmax": {"accuracy": 97.30, "decoder_calls": 1.64},
}
"""The paper's Table 2 (MNIST, 10 % labels): test accuracy (%) and decoder calls."""


@dataclass(frozen=True)
class SSVAEOptions:
    """Everything that defines one run of the semi-supervised VAE experiment.

    ``alpha`` weighs the classification loss of a labeled image against its
    ELBO terms; the default ``0.1 * N`` (``N`` training images) is Kingma et
    al. (2014)'s choice for the M2 model this experiment follows.
    """

    normalizers: tuple[str, ...] = NORMALIZERS
    seeds: int = 3
    first_seed: int = 0
    steps: int = 1000
    labeled_fraction: float = 0.1
    batch_size: int = 64
    labeled_batch_size: int = 16
    hidden: int = 128
    latent_dims: int = 8
    learning_rate: float = 1e-3
    alpha: float | None = None
    epsilon: float = 1e-6
    eval_every: int = 100
    test_fraction: float = 0.2
    threads: int = 1

    def replace(self, **changes: object) -> SSVAEOptions:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.normalizers) - set(NORMALIZERS))
        if unknown or not self.normalizers:
            raise ValueError(f"normalizers must be among {NORMALIZERS}, got {self.normalizers}")
        for name in ("seeds", "steps", "batch_size", "labeled_batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not 0.0 < self.labeled_fraction < 1.0:
            raise ValueError(f"labeled_fraction must be in (0, 1), got {self.labeled_fraction}")

    def classification_weight(self, n_train: int) -> float:
        """``alpha``, or ``0.1 * n_train`` when it is not set."""
        return 0.1 * n_train if self.alpha is None else self.alpha


DEFAULT = SSVAEOptions()
"""The recorded run of ``docs/reproduction.md``."""

QUICK = DEFAULT.replace(seeds=2, steps=150, eval_every=75)
"""``--quick``: two seeds, 150 steps (seconds)."""


def labeled_subset(digits: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A boolean mask of the labeled training images: ``fraction`` of each digit, per seed."""
    generator = torch.Generator().manual_seed(seed + _LABEL_OFFSET)
    mask = torch.zeros(len(digits), dtype=torch.bool)
    for d in range(CLASSES):
        members = torch.nonzero(digits == d).flatten()
        take = max(1, round(fraction * len(members)))
        mask[members[torch.randperm(len(members), generator=generator)[:take]]] = True
    return mask


def _one(net: MLP, x: torch.Tensor) -> torch.Tensor:
    """Apply a one-seed stacked MLP to ``(batch, n_in)``."""
    return net(x.unsqueeze(0))[0]


@dataclass(frozen=True)
class _Model:
    classifier: MLP
    encoder: MLP
    decoder: MLP

    @classmethod
    def create(cls, options: SSVAEOptions, seed: int) -> _Model:
        g = [torch.Generator().manual_seed(seed)]
        h, d = options.hidden, options.latent_dims
        return cls(
            classifier=init_mlp((PIXELS, h, CLASSES), g),
            encoder=init_mlp((PIXELS + CLASSES, h, 2 * d), g),
            decoder=init_mlp((d + CLASSES, h, PIXELS), g),
        )

    def parameters(self) -> list[torch.Tensor]:
        return [
            *self.classifier.parameters(),
            *self.encoder.parameters(),
            *self.decoder.parameters(),
        ]

    def elbo_loss(
        self, x: torch.Tensor, classes: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``L(x_i, y_i)`` per pair ``(n,)``: one decoder call per pair.

        ``z`` is one reparameterized sample drawn with ``generator``, or the
        posterior mean when ``generator`` is None.
        """
        y = torch.nn.functional.one_hot(classes, CLASSES).to(x.dtype)
        mu, log_var = _one(self.encoder, torch.cat([x, y], dim=-1)).chunk(2, dim=-1)
        z = mu
        if generator is not None:
            z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=generator)
        logits = _one(self.decoder, torch.cat([z, y], dim=-1))
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
        kl = 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var).sum(-1)
        return bce.sum(-1) + kl


def _classification_loss(
    name: str, logits: torch.Tensor, target: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """The normalizer's own loss on labeled images (mean over the batch)."""
    loss: torch.Tensor
    if name == "softmax":
        loss = torch.nn.functional.cross_entropy(logits, target)
    elif name == "ev_softmax":
        loss = _package.ev_softmax_nll_loss(logits, target, epsilon=epsilon)
    else:
        loss = getattr(_package, f"{name}_loss")(logits, target)
    return loss


def _probabilities(name: str, logits: torch.Tensor) -> torch.Tensor:
    """``q(y | x)`` with ``epsilon = 0`` (ev-softmax's support is what is marginalized)."""
    return normalizers.lookup(name)(logits)


def kl_to_uniform(q: torch.Tensor) -> torch.Tensor:
    """``KL(q || uniform) = sum_k q_k log q_k + log K`` with ``0 log 0 = 0`` (finite gradient)."""
    positive = q > 0
    safe = torch.where(positive, q, 1.0)
    return torch.where(positive, q * torch.log(safe), 0.0).sum(-1) + math.log(q.shape[-1])


@dataclass(frozen=True)
class _Run:
    name: str
    steps: list[int]
    accuracy_curve: Floats  # (len(steps), seeds)
    accuracy: Floats  # (seeds,): test accuracy at the end
    decoder_calls: Floats  # (seeds,): mean decoder calls per unlabeled training example
    test_support: Floats  # (seeds,): mean classes with q(y|x) > 0 on the test images
    seconds: float


def _pair_losses(
    model: _Model, x: torch.Tensor, noise: torch.Generator
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn`` of :func:`evsoftmax.sparse_expectation`: ``L(x[row], class)`` per pair."""

    def losses(rows: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return model.elbo_loss(x[rows], classes, noise)

    return losses


def _test_metrics(model: _Model, name: str, data: Digits) -> tuple[float, float]:
    with torch.no_grad():
        logits = _one(model.classifier, data.x_test)
        accuracy = float((logits.argmax(-1) == data.digit_test).double().mean())
        support = float((_probabilities(name, logits) > 0).sum(-1).double().mean())
    return accuracy, support


def train_ssvae(
    name: str,
    data: Digits,
    options: SSVAEOptions,
    seed: int,
    advance: Callable[[int], None] = lambda steps: None,
) -> tuple[list[float], float, float, float]:
    """Train one seed: ``(accuracy curve, final accuracy, decoder calls, test support)``."""
    model = _Model.create(options, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    alpha = options.classification_weight(len(data.x_train))
    mask = labeled_subset(data.digit_train, options.labeled_fraction, seed)
    labeled = torch.nonzero(mask).flatten()
    unlabeled = torch.nonzero(~mask).flatten()
    order = torch.Generator().manual_seed(seed + _ORDER_OFFSET)
    noise = torch.Generator().manual_seed(seed + _NOISE_OFFSET)
    curve = [_test_metrics(model, name, data)[0]]
    pairs = 0
    for step in range(1, options.steps + 1):
        lab = labeled[torch.randint(len(labeled), (options.labeled_batch_size,), generator=order)]
        unl = unlabeled[torch.randint(len(unlabeled), (options.batch_size,), generator=order)]
        x_lab, y_lab = data.x_train[lab], data.digit_train[lab]
        x_unl = data.x_train[unl]
        supervised = model.elbo_loss(x_lab, y_lab, noise).mean() + alpha * _classification_loss(
            name, _one(model.classifier, x_lab), y_lab, options.epsilon
        )
        q = _probabilities(name, _one(model.classifier, x_unl))
        marginal = _package.sparse_expectation(q, _pair_losses(model, x_unl, noise))
        unsupervised = (marginal + kl_to_uniform(q)).mean()
        loss = supervised + unsupervised
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        pairs += int((q > 0).sum())
        if step % options.eval_every == 0 or step == options.steps:
            curve.append(_test_metrics(model, name, data)[0])
        advance(1)
    accuracy, support = _test_metrics(model, name, data)
    return curve, accuracy, pairs / (options.steps * options.batch_size), support


@dataclass(frozen=True)
class SSVAEResults:
    """What one run of the SSVAE experiment measured."""

    options: SSVAEOptions
    runs: tuple[_Run, ...]
    seconds: float


def run_ssvae(
    options: SSVAEOptions,
    start: Callable[[str], None] = lambda name: None,
    advance: Callable[[int], None] = lambda steps: None,
) -> SSVAEResults:
    """Train every normalizer on every seed; ``start``/``advance`` report progress."""
    began = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        data = load(options.test_fraction)
        steps = [0, *range(options.eval_every, options.steps + 1, options.eval_every)]
        if steps[-1] != options.steps:
            steps.append(options.steps)
        runs = []
        for name in options.normalizers:
            start(name)
            t0 = time.perf_counter()
            seeds = range(options.first_seed, options.first_seed + options.seeds)
            out = [train_ssvae(name, data, options, seed, advance) for seed in seeds]
            runs.append(
                _Run(
                    name,
                    steps,
                    np.array([o[0] for o in out], dtype=np.float64).T,
                    np.array([o[1] for o in out]),
                    np.array([o[2] for o in out]),
                    np.array([o[3] for o in out]),
                    time.perf_counter() - t0,
                )
            )
    finally:
        torch.set_num_threads(threads)
    return SSVAEResults(options, tuple(runs), time.perf_counter() - began)


def _stat(values: Any, scale: float = 1.0) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64) * scale
    mean, sem = metric.mean_and_sem(array)
    return {
        "mean": float(mean),
        "sem": None if not math.isfinite(float(sem)) else float(sem),
        "per_seed": array.tolist(),
    }


def summarize(results: SSVAEResults) -> dict[str, Any]:
    """The JSON-ready document of a run (accuracies in %)."""
    entries: dict[str, dict[str, Any]] = {}
    for run in results.runs:
        mean, sem = metric.mean_and_sem(run.accuracy_curve * 100.0, axis=1)
        entries[run.name] = {
            "label": LABELS[run.name],
            "test_accuracy": _stat(run.accuracy, 100.0),
            "decoder_calls_per_example": _stat(run.decoder_calls),
            "test_support": _stat(run.test_support),
            "curve": {
                "steps": run.steps,
                "mean": mean.tolist(),
                "sem": [None if not math.isfinite(v) else v for v in sem.tolist()],
            },
            "paper": PAPER[run.name],
            "seconds": run.seconds,
        }
    options = dataclasses.asdict(results.options)
    n_train = len(load(results.options.test_fraction).x_train)
    options["alpha_used"] = results.options.classification_weight(n_train)
    summary: dict[str, Any] = {
        "experiment": "ssvae-digits",
        "options": options,
        "environment": environment(),
        "seconds": results.seconds,
        "normalizers": entries,
    }
    summary["ordering"] = sorted(entries, key=lambda n: -entries[n]["test_accuracy"]["mean"])
    summary["paper_ordering"] = sorted(PAPER, key=lambda n: -PAPER[n]["accuracy"])
    summary["paper_claims"] = paper_claims(summary)
    return summary


def paper_claims(summary: dict[str, Any]) -> dict[str, bool]:
    """Table 2's findings, checked against the means of this run."""
    entries = summary["normalizers"]
    if "ev_softmax" not in entries:
        return {}
    ev = entries["ev_softmax"]
    claims = {}
    for name in ("softmax", "sparsemax", "entmax15"):
        if name in entries:
            better = ev["test_accuracy"]["mean"] > entries[name]["test_accuracy"]["mean"]
            claims[f"ev-softmax more accurate than {LABELS[name]}"] = better
    if "softmax" in entries:
        fewer = (
            ev["decoder_calls_per_example"]["mean"]
            < entries["softmax"]["decoder_calls_per_example"]["mean"]
        )
        claims["ev-softmax needs fewer decoder calls than softmax"] = fewer
    for name in ("sparsemax", "entmax15"):
        if name in entries:
            more = (
                ev["decoder_calls_per_example"]["mean"]
                > entries[name]["decoder_calls_per_example"]["mean"]
            )
            claims[f"ev-softmax needs more decoder calls than {LABELS[name]}"] = more
    return claims


def table(summary: dict[str, Any]) -> Table:
    """The terminal table: mean ± standard error over seeds, the paper's numbers beside."""
    seeds = summary["options"]["seeds"]
    out = Table(
        title=f"Semi-supervised VAE on 8x8 digits, 10 % labels: {seeds} seed(s)",
        caption="accuracy: test accuracy of q(y|x) (%). calls: decoder calls per "
        "unlabeled training example. paper: MNIST (Table 2).",
        box=box.SIMPLE_HEAD,
    )
    out.add_column("normalizer", no_wrap=True)
    for header in ("accuracy", "calls", "test support", "paper acc.", "paper calls"):
        out.add_column(header, justify="right", no_wrap=True)
    for entry in summary["normalizers"].values():
        out.add_row(
            entry["label"],
            pm(entry["test_accuracy"]),
            pm(entry["decoder_calls_per_example"]),
            pm(entry["test_support"]),
            f"{entry['paper']['accuracy']:.2f}",
            f"{entry['paper']['decoder_calls']:.2f}",
        )
    return out


def accuracy_figure(summary: dict[str, Any], path: Path) -> None:
    """Test accuracy over training, mean ± standard error over seeds."""
    from .figures import COLORS

    figure = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = figure.subplots()
    for name, entry in summary["normalizers"].items():
        curve = entry["curve"]
        mean = np.asarray(curve["mean"])
        ax.plot(curve["steps"], mean, color=COLORS[name], label=entry["label"])
        if all(v is not None for v in curve["sem"]):
            sem = np.asarray(curve["sem"], dtype=np.float64)
            ax.fill_between(curve["steps"], mean - sem, mean + sem, color=COLORS[name], alpha=0.25)
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy of q(y | x) (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
