"""Training: the digit classifier of the metric and the CVAE of each normalizer."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from . import losses, metric, normalizers
from .data import PIXELS, Digits
from .models import CVAE, MLP, init_mlp
from .options import CVAEOptions

__all__ = [
    "Classifier",
    "NormalizerRun",
    "Snapshot",
    "batch_order",
    "bernoulli_nll",
    "evaluate",
    "prototypes",
    "train_classifier",
    "train_cvae",
]

QUERIES = 2  # y = 0 (even digit) or 1 (odd digit)
_CLASSIFIER_SEED = 12345
# Initialization, prototypes and batch order draw from different streams.
_PROTOTYPE_OFFSET = 500_009
_BATCH_ORDER_OFFSET = 1_000_003
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Classifier:
    """The metric's digit classifier and its accuracy on the held-out split."""

    net: MLP
    test_accuracy: float

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(..., 10)`` of images ``(..., 64)`` with values in [0, 1]."""
        with torch.no_grad():
            flat = images.reshape(1, -1, PIXELS)
            logits = self.net(flat)
            return torch.softmax(logits, dim=-1).reshape(*images.shape[:-1], metric.DIGITS)


def train_classifier(data: Digits, options: CVAEOptions) -> Classifier:
    """A one-hidden-layer MLP trained full-batch with Adam on the training split."""
    generator = torch.Generator().manual_seed(_CLASSIFIER_SEED)
    net = init_mlp((PIXELS, options.classifier_hidden, metric.DIGITS), [generator])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = data.x_train.unsqueeze(0)
    for _ in range(options.classifier_steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x)[0], data.digit_train)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    with torch.no_grad():
        predicted = net(data.x_test.unsqueeze(0))[0].argmax(-1)
        accuracy = float((predicted == data.digit_test).double().mean())
    return Classifier(net, accuracy)


@dataclass(frozen=True)
class Snapshot:
    """The model seen through the metric at one evaluation point (one row per seed)."""

    prior: Floats  # (seeds, queries, K): p(z | y) with epsilon = 0
    images: Floats  # (seeds, K, 64): decoded image (Bernoulli mean) of every latent class
    labels: Floats  # (seeds, K, 10): classifier probabilities of every decoded image
    digits: Floats  # (seeds, queries, 10): P(d | y)
    wasserstein: Floats  # (seeds, queries)


@dataclass(frozen=True)
class NormalizerRun:
    """Everything measured while training one normalizer's CVAE on every seed."""

    name: str
    steps: list[int]
    curve: Floats  # (len(steps), seeds, queries): Wasserstein distance over training
    final: Snapshot
    decoder_calls: Floats  # (seeds,): mean latent classes decoded per example in training
    seconds: float


def evaluate(model: CVAE, name: str, classifier: Classifier, latent: int) -> Snapshot:
    """Prior, decoded images and metric of the current ``model`` (``epsilon = 0``)."""
    with torch.no_grad():
        prior = normalizers.lookup(name)(model.prior_logits(QUERIES)).double().numpy()
        images = torch.sigmoid(model.decoder_logits(latent))
        labels = classifier.probabilities(images).double().numpy()
    digits = metric.digit_distribution(prior, labels)
    distance = metric.wasserstein_on_digits(digits, metric.ground_truth())
    return Snapshot(prior, images.double().numpy(), labels, digits, distance)


def batch_order(n: int, batch_size: int, steps: int, seeds: list[int]) -> torch.Tensor:
    """Indices ``(seeds, steps, batch_size)``: consecutive random permutations per seed."""
    epochs = math.ceil(steps * batch_size / n)
    rows = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed + _BATCH_ORDER_OFFSET)
        rows.append(torch.cat([torch.randperm(n, generator=generator) for _ in range(epochs)]))
    return torch.stack(rows)[:, : steps * batch_size].reshape(len(seeds), steps, batch_size)


def prototypes(images: torch.Tensor, latent: int, seeds: list[int]) -> torch.Tensor:
    """``latent`` training images drawn at random per seed, clipped to [0.1, 0.9].

    They seed the decoder's images, as k-means is seeded with data points: with
    exact marginalization there is no sampling noise to break the symmetry of
    identical initial images, and from a blank start one latent class takes
    every image for every normalizer. The draw ignores the labels.
    """
    picks = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed + _PROTOTYPE_OFFSET)
        picks.append(images[torch.randperm(len(images), generator=generator)[:latent]])
    return torch.stack(picks).clamp(0.1, 0.9)


def bernoulli_nll(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``-log p(x | z)`` for images ``x`` ``(S, B, P)`` and logits ``(S, K, P)``: ``(S, B, K)``.

    ``-sum_i [x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)]
    = sum_i softplus(l_i) - x_i l_i``, for all latent classes in one matmul.
    """
    return torch.nn.functional.softplus(logits).sum(-1).unsqueeze(1) - x @ logits.transpose(1, 2)


def train_cvae(
    name: str,
    data: Digits,
    classifier: Classifier,
    options: CVAEOptions,
    advance: Callable[[int], None] = lambda steps: None,
) -> NormalizerRun:
    """Train one CVAE per seed with normalizer ``name``; ``advance(k)`` reports progress."""
    start = time.perf_counter()
    seeds = list(range(options.first_seed, options.first_seed + options.seeds))
    model = CVAE.create(
        prototypes(data.x_train, options.latent_classes, seeds),
        QUERIES,
        options.hidden,
        options.prior_hidden,
        seeds,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    terms = losses.objective_terms(
        name, epsilon=options.epsilon, sparse_loss=options.sparse_loss, delta=options.smoothing
    )
    order = batch_order(len(data.x_train), options.batch_size, options.steps, seeds)
    parity = torch.nn.functional.one_hot(data.parity_train, QUERIES).float()
    rows = torch.arange(len(seeds)).unsqueeze(1)
    calls = torch.zeros(len(seeds), dtype=torch.float64)
    steps, curve = [0], [evaluate(model, name, classifier, options.latent_classes).wasserstein]
    for step in range(1, options.steps + 1):
        index = order[:, step - 1]
        x, y = data.x_train[index], parity[index]
        prior_logits = model.prior_logits(QUERIES)[rows, data.parity_train[index]]
        weights, regularizer = terms(model.posterior(torch.cat([x, y], dim=-1)), prior_logits)
        nll = bernoulli_nll(x, model.decoder_logits(options.latent_classes))
        # Exact marginalization over the support of q: the decoder terms of the
        # classes q gives zero mass are never used.
        support = weights > 0
        reconstruction = torch.where(support, weights * nll, 0.0).sum(-1)
        loss = (reconstruction + options.beta * regularizer).mean(-1).sum()
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        calls += support.sum(-1).double().mean(-1)
        if step % options.eval_every == 0 or step == options.steps:
            steps.append(step)
            curve.append(evaluate(model, name, classifier, options.latent_classes).wasserstein)
        advance(1)
    final = evaluate(model, name, classifier, options.latent_classes)
    seconds = time.perf_counter() - start
    return NormalizerRun(
        name, steps, np.stack(curve), final, (calls / options.steps).numpy(), seconds
    )
