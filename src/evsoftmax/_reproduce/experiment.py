"""The whole CVAE experiment: data, classifier, one training per normalizer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .data import load
from .options import CVAEOptions
from .training import NormalizerRun, train_classifier, train_cvae

__all__ = ["Results", "run_cvae"]


@dataclass(frozen=True)
class Results:
    """What one run of the experiment measured."""

    options: CVAEOptions
    classifier_accuracy: float
    runs: tuple[NormalizerRun, ...]
    seconds: float


def run_cvae(
    options: CVAEOptions,
    start: Callable[[str], None] = lambda name: None,
    advance: Callable[[int], None] = lambda steps: None,
) -> Results:
    """Run the experiment; ``start(name)`` and ``advance(steps)`` report progress.

    Torch runs on ``options.threads`` threads (restored afterwards): these
    networks are so small that more threads only add contention.
    """
    began = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        data = load(options.test_fraction)
        classifier = train_classifier(data, options)
        runs = []
        for name in options.normalizers:
            start(name)
            runs.append(train_cvae(name, data, classifier, options, advance))
    finally:
        torch.set_num_threads(threads)
    return Results(options, classifier.test_accuracy, tuple(runs), time.perf_counter() - began)
