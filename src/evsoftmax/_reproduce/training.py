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
    "gumbel_noise",
    "prototypes",
    "relaxed_one_hot",
    "train_classifier",
    "train_cvae",
]

QUERIES = 2  # y = 0 (even digit) or 1 (odd digit)
_CLASSIFIER_SEED = 12345
# Initialization, prototypes and batch order draw from different streams.
_PROTOTYPE_OFFSET = 500_009
_BATCH_ORDER_OFFSET = 1_000_003
_NOISE_OFFSET = 2_000_003
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
    wasserstein: Floats  # (seeds, queries): the paper's scipy call (see metric)
    total_variation: Floats  # (seeds, queries)
    wasserstein_digits: Floats  # (seeds, queries): W1 on the digit line
    parity_mass: Floats  # (seeds, queries)


@dataclass(frozen=True)
class NormalizerRun:
    """Everything measured while training one normalizer's CVAE on every seed."""

    name: str
    steps: list[int]
    curve: Floats  # (len(steps), seeds, queries): the paper's Wasserstein over training
    curve_tv: Floats  # (len(steps), seeds, queries): total variation over training
    final: Snapshot
    decoder_calls: Floats  # (seeds,): mean decoder calls per training example
    posterior_support: Floats  # (seeds,): mean classes with q(z | x, y) > 0 in training
    seconds: float


def evaluate(model: CVAE, name: str, classifier: Classifier, latent: int) -> Snapshot:
    """Prior, decoded images and metric of the current ``model`` (``epsilon = 0``)."""
    with torch.no_grad():
        prior = normalizers.lookup(name)(model.prior_logits(QUERIES)).double().numpy()
        images = torch.sigmoid(model.decoder_logits(latent))
        labels = classifier.probabilities(images).double().numpy()
    digits = metric.digit_distribution(prior, labels)
    truth = metric.ground_truth()
    return Snapshot(
        prior,
        images.double().numpy(),
        labels,
        digits,
        metric.paper_wasserstein(digits, truth),
        metric.total_variation(digits, truth),
        metric.wasserstein_on_digits(digits, truth),
        metric.parity_mass(digits),
    )


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


def gumbel_noise(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    """Standard Gumbel noise ``(seeds, *shape)``, one generator per seed."""
    tiny = torch.finfo(torch.float32).tiny
    uniform = torch.stack([torch.rand(shape, generator=g) for g in generators])
    exponential = -torch.log(uniform.clamp(tiny, 1.0))  # Exp(1); clamped so log stays finite
    return -torch.log(exponential.clamp_min(tiny))


def relaxed_one_hot(probs: torch.Tensor, temperature: float, noise: torch.Tensor) -> torch.Tensor:
    """A relaxed one-hot (Gumbel-softmax) sample of ``probs`` at ``temperature``.

    As ``torch.distributions.RelaxedOneHotCategorical(temperature, probs=...)``
    does, the probabilities are clamped to ``[eps, 1 - eps]`` before the log,
    so a class of probability 0 gets a finite logit ``log eps`` (and so a
    sample weight that is tiny but not zero) and the gradient stays finite.
    """
    eps = torch.finfo(probs.dtype).eps
    logits = torch.log(probs.clamp(eps, 1.0 - eps))
    return torch.softmax((logits + noise) / temperature, dim=-1)


def _optimizer(params: list[torch.Tensor], options: CVAEOptions) -> torch.optim.Optimizer:
    if options.optimizer == "sgd":
        return torch.optim.SGD(params, lr=options.learning_rate)
    return torch.optim.Adam(params, lr=options.learning_rate)


def _model(data: Digits, options: CVAEOptions, seeds: list[int]) -> CVAE:
    if options.variant == "exact":
        return CVAE.create(
            prototypes(data.x_train, options.latent_classes, seeds),
            QUERIES,
            options.hidden,
            options.prior_hidden,
            seeds,
        )
    sizes = (options.hidden, options.prior_hidden, options.decoder_hidden)
    return CVAE.create_mlp_decoder(QUERIES, PIXELS, options.latent_classes, sizes, seeds)


def train_cvae(
    name: str,
    data: Digits,
    classifier: Classifier,
    options: CVAEOptions,
    advance: Callable[[int], None] = lambda steps: None,
) -> NormalizerRun:
    """Train one CVAE per seed with normalizer ``name``; ``advance(k)`` reports progress.

    ``relaxed`` (the paper's recipe): one relaxed one-hot sample ``z`` of the
    posterior per example -- ``q_eps`` (``epsilon > 0``) for ev-softmax, as in
    the paper's training -- is decoded, so the decoder runs once per example.
    ``exact``: the reconstruction term is summed over the classes in the
    support of ``q``, so the decoder runs once per class there.
    """
    start = time.perf_counter()
    seeds = list(range(options.first_seed, options.first_seed + options.seeds))
    model = _model(data, options, seeds)
    optimizer = _optimizer(model.parameters(), options)
    terms = losses.objective_terms(
        name, epsilon=options.epsilon, sparse_loss=options.sparse_loss, delta=options.smoothing
    )
    order = batch_order(len(data.x_train), options.batch_size, options.steps, seeds)
    noise_generators = [torch.Generator().manual_seed(s + _NOISE_OFFSET) for s in seeds]
    parity = torch.nn.functional.one_hot(data.parity_train, QUERIES).float()
    rows = torch.arange(len(seeds)).unsqueeze(1)
    calls = torch.zeros(len(seeds), dtype=torch.float64)
    support_sizes = torch.zeros(len(seeds), dtype=torch.float64)
    latent = options.latent_classes
    first = evaluate(model, name, classifier, latent)
    steps, curve, curve_tv = [0], [first.wasserstein], [first.total_variation]
    for step in range(1, options.steps + 1):
        index = order[:, step - 1]
        x, y = data.x_train[index], parity[index]
        prior_logits = model.prior_logits(QUERIES)[rows, data.parity_train[index]]
        posterior_logits = model.posterior(torch.cat([x, y], dim=-1))
        weights, regularizer = terms(posterior_logits, prior_logits)
        support = weights > 0
        if options.variant == "relaxed":
            sample_probs = (
                normalizers.ev_softmax(posterior_logits, options.epsilon)
                if name == "ev_softmax"
                else weights
            )
            noise = gumbel_noise((options.batch_size, latent), noise_generators)
            z = relaxed_one_hot(sample_probs, options.temperature, noise)
            logits = model.decoder(z)
            reconstruction = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, x, reduction="none"
            ).sum(-1)
            calls += 1.0
        else:
            nll = bernoulli_nll(x, model.decoder_logits(latent))
            # Exact marginalization over the support of q: the decoder terms of the
            # classes q gives zero mass are never used.
            reconstruction = torch.where(support, weights * nll, 0.0).sum(-1)
            calls += support.sum(-1).double().mean(-1)
        support_sizes += support.sum(-1).double().mean(-1)
        loss = (reconstruction + options.beta * regularizer).mean(-1).sum()
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step % options.eval_every == 0 or step == options.steps:
            snapshot = evaluate(model, name, classifier, latent)
            steps.append(step)
            curve.append(snapshot.wasserstein)
            curve_tv.append(snapshot.total_variation)
        advance(1)
    final = evaluate(model, name, classifier, latent)
    seconds = time.perf_counter() - start
    return NormalizerRun(
        name,
        steps,
        np.stack(curve),
        np.stack(curve_tv),
        final,
        (calls / options.steps).numpy(),
        (support_sizes / options.steps).numpy(),
        seconds,
    )
