"""Summaries of a run: the JSON document, the terminal table and the progress bar."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import __version__
from . import metric
from .experiment import Results
from .normalizers import LABELS
from .training import NormalizerRun

__all__ = [
    "environment",
    "ordering",
    "paper_claims",
    "pm",
    "progress_bar",
    "summarize",
    "table",
    "write_json",
]

QUERY_NAMES = ("even", "odd")


def _stat(values: Any) -> dict[str, Any]:
    mean, sem = metric.mean_and_sem(np.asarray(values, dtype=np.float64))
    return {
        "mean": float(mean),
        "sem": _finite(float(sem)),
        "per_seed": np.asarray(values).tolist(),
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _by_query(values: Any) -> dict[str, Any]:
    return {q: _stat(values[:, i]) for i, q in enumerate(QUERY_NAMES)}


def _summarize_run(run: NormalizerRun) -> dict[str, Any]:
    final = run.final
    curve_mean, curve_sem = metric.mean_and_sem(run.curve.mean(axis=2), axis=1)
    tv_mean, tv_sem = metric.mean_and_sem(run.curve_tv.mean(axis=2), axis=1)
    return {
        "label": LABELS[run.name],
        "wasserstein": _stat(final.wasserstein.mean(axis=1)),
        "wasserstein_by_query": _by_query(final.wasserstein),
        "total_variation": _stat(final.total_variation.mean(axis=1)),
        "total_variation_by_query": _by_query(final.total_variation),
        "wasserstein_digits": _stat(final.wasserstein_digits.mean(axis=1)),
        "parity_mass": _stat(final.parity_mass.mean(axis=1)),
        "prior_modes": {
            q: _stat(metric.count_modes(final.prior[:, i])) for i, q in enumerate(QUERY_NAMES)
        },
        "decoder_calls_per_example": _stat(run.decoder_calls),
        "posterior_support": _stat(run.posterior_support),
        "curve": {
            "steps": run.steps,
            "mean": curve_mean.tolist(),
            "sem": [_finite(v) for v in curve_sem.tolist()],
            "total_variation_mean": tv_mean.tolist(),
            "total_variation_sem": [_finite(v) for v in tv_sem.tolist()],
        },
        "first_seed": {
            "prior": final.prior[0].tolist(),
            "decoded_digit": final.labels[0].argmax(axis=-1).tolist(),
            "digit_distribution": final.digits[0].tolist(),
        },
        "seconds": run.seconds,
    }


def ordering(summary: dict[str, Any], key: str = "wasserstein") -> list[str]:
    """Normalizer names sorted by the mean of ``key`` (a distance), best (lowest) first."""
    entries = summary["normalizers"]
    return sorted(entries, key=lambda name: entries[name][key]["mean"])


def summarize(results: Results) -> dict[str, Any]:
    """The JSON-ready document of a run."""
    summary: dict[str, Any] = {
        "experiment": "cvae-digits",
        "options": dataclasses.asdict(results.options),
        "environment": environment(),
        "ground_truth": metric.ground_truth().tolist(),
        "classifier_test_accuracy": results.classifier_accuracy,
        "seconds": results.seconds,
        "normalizers": {run.name: _summarize_run(run) for run in results.runs},
    }
    summary["ordering"] = ordering(summary)
    summary["ordering_by_total_variation"] = ordering(summary, "total_variation")
    summary["paper_claims"] = paper_claims(summary)
    return summary


def environment() -> dict[str, str]:
    """Library versions and machine, recorded in every JSON document."""
    return {
        "evsoftmax": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _mean_modes(entry: dict[str, Any]) -> float:
    return float(np.mean([entry["prior_modes"][q]["mean"] for q in QUERY_NAMES]))


def paper_claims(summary: dict[str, Any]) -> dict[str, bool]:
    """The paper's findings (Sec. 4.1), each checked against the means of this run.

    "Closer to the truth" is checked with the paper's metric and with the total
    variation. Claims that involve a normalizer left out of the run are skipped.
    """
    entries = summary["normalizers"]
    if "ev_softmax" not in entries:
        return {}
    ev = entries["ev_softmax"]
    claims = {}
    for name in ("softmax", "sparsemax", "entmax15"):
        if name in entries:
            for key, label in (("wasserstein", "paper's W"), ("total_variation", "TV")):
                closer = ev[key]["mean"] < entries[name][key]["mean"]
                claims[f"ev-softmax closer to the truth than {LABELS[name]} ({label})"] = closer
    for name in ("sparsemax", "entmax15"):
        if name in entries:
            more = _mean_modes(ev) > _mean_modes(entries[name])
            claims[f"ev-softmax keeps more prior modes than {LABELS[name]}"] = more
    return claims


def write_json(summary: dict[str, Any], path: Path) -> None:
    """Write ``summary`` as indented JSON (creating the parent folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")


def pm(stat: dict[str, Any], digits: int = 2) -> str:
    """``mean±sem`` of a statistic (just the mean when there is one seed)."""
    sem = stat["sem"]
    return f"{stat['mean']:.{digits}f}" + ("" if sem is None else f"±{sem:.{digits}f}")


def table(summary: dict[str, Any]) -> Table:
    """The terminal table: one row per normalizer, mean ± standard error over seeds."""
    seeds = summary["options"]["seeds"]
    variant = summary["options"]["variant"]
    out = Table(
        title=f"CVAE ({variant}) on 8x8 digits: mean ± standard error over {seeds} seed(s)",
        caption="W: the paper's Wasserstein distance (scipy on the 10 probabilities as "
        "points), TV: total variation, W digits: W1 on the digit line (all: lower is "
        "better). parity: prior mass on the queried parity. modes: latent classes with "
        "non-zero prior mass. calls: decoder calls per training example.",
        box=box.SIMPLE_HEAD,
    )
    out.add_column("normalizer", no_wrap=True)
    for header in ("W (paper)", "TV", "W digits", "parity", "modes even / odd", "calls"):
        out.add_column(header, justify="right", no_wrap=True)
    for entry in summary["normalizers"].values():
        modes = entry["prior_modes"]
        out.add_row(
            entry["label"],
            pm(entry["wasserstein"], 3),
            pm(entry["total_variation"]),
            pm(entry["wasserstein_digits"]),
            pm(entry["parity_mass"]),
            " / ".join(f"{modes[q]['mean']:.1f}" for q in QUERY_NAMES),
            pm(entry["decoder_calls_per_example"], 1),
        )
    return out


@contextmanager
def progress_bar(
    console: Console, total: int, labels: dict[str, str] = LABELS
) -> Iterator[tuple[Any, Any]]:
    """A rich progress bar over ``total`` training steps; yields ``(start, advance)``.

    ``start(name)`` shows ``labels[name]`` (or ``name``) as the bar's description.
    """
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("training", total=total)

        def start(name: str) -> None:
            bar.update(task, description=labels.get(name, name))

        def advance(steps: int) -> None:
            bar.advance(task, steps)

        yield start, advance
