"""Interleaved timing: every method of a case is sampled round by round, in one process.

Each callable runs one complete, synchronised operation. After ``warmup`` calls
(which also compile under JIT) one timed call sets how many calls make up a
sample (at least ``min_sample_s`` long, as :mod:`timeit` does); then each round
takes one sample of every method, in a new (seeded) random order each round,
so background load on a shared machine falls on all methods alike, and no
method always follows the same one (whose output would have evicted its
input from the cache, or whose threads would still be spinning). A method
stops sampling once it has ``min(3, repeats)`` samples and has used its
``max_time_s``, so that one slow peer cannot stretch the run.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["Measurement", "TimingPlan", "interleaved"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class TimingPlan:
    """How many times, and for how long, each method is sampled."""

    repeats: int = 10
    warmup: int = 2
    min_sample_s: float = 2e-3
    max_time_s: float = 1.0

    @property
    def min_samples(self) -> int:
        """Samples every method takes, whatever its time budget."""
        return min(3, self.repeats)


@dataclass
class Measurement:
    """The samples (seconds per call) of one method, or the error that stopped it."""

    number: int = 1
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float:
        """Median seconds per call (NaN without samples)."""
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def spent(self) -> float:
        """Seconds spent sampling so far."""
        return sum(self.samples) * self.number


def _sample(fn: Callable[[], object], number: int) -> float:
    """Seconds per call over ``number`` back-to-back calls, with the collector paused."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number
    finally:
        if enabled:
            gc.enable()


def _calibrate(fn: Callable[[], object], plan: TimingPlan) -> int:
    """Warm ``fn`` up and return the number of calls that make one sample."""
    for _ in range(max(plan.warmup, 1)):
        fn()
    once = _sample(fn, 1)
    return max(1, math.ceil(plan.min_sample_s / max(once, 1e-9)))


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _wants_more(m: Measurement, plan: TimingPlan) -> bool:
    if m.error is not None:
        return False
    return len(m.samples) < plan.min_samples or m.spent < plan.max_time_s


def interleaved(
    fns: Mapping[K, Callable[[], object]],
    plan: TimingPlan,
    on_round: Callable[[], None] | None = None,
) -> dict[K, Measurement]:
    """Time every callable of ``fns`` in interleaved rounds; errors are recorded, not raised.

    ``on_round`` is called after the warm-up and after every round (``repeats + 1``
    calls in all), for a progress bar.
    """
    results = {name: Measurement() for name in fns}
    for name, fn in fns.items():
        try:
            results[name].number = _calibrate(fn, plan)
        except Exception as exc:
            results[name].error = _error(exc)
    if on_round is not None:
        on_round()
    names = list(fns)
    shuffle = random.Random(0).shuffle  # seeded: the same orders on every run
    for _ in range(plan.repeats):
        shuffle(names)
        for name in names:
            m = results[name]
            if not _wants_more(m, plan):
                continue
            try:
                m.samples.append(_sample(fns[name], m.number))
            except Exception as exc:
                m.error = _error(exc)
        if on_round is not None:
            on_round()
    return results
