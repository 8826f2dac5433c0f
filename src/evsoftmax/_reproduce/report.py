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

__all__ = ["ordering", "paper_claims", "progress_bar", "summarize", "table", "write_json"]

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


def _summarize_run(run: NormalizerRun) -> dict[str, Any]:
    final = run.final
    curve_mean, curve_sem = metric.mean_and_sem(run.curve.mean(axis=2), axis=1)
    return {
        "label": LABELS[run.name],
        "wasserstein": _stat(final.wasserstein.mean(axis=1)),
        "wasserstein_by_query": {
            q: _stat(final.wasserstein[:, i]) for i, q in enumerate(QUERY_NAMES)
        },
        "prior_modes": {
            q: _stat(metric.count_modes(final.prior[:, i])) for i, q in enumerate(QUERY_NAMES)
        },
        "decoder_calls_per_example": _stat(run.decoder_calls),
        "curve": {
            "steps": run.steps,
            "mean": curve_mean.tolist(),
            "sem": [_finite(v) for v in curve_sem.tolist()],
        },
        "first_seed": {
            "prior": final.prior[0].tolist(),
            "decoded_digit": final.labels[0].argmax(axis=-1).tolist(),
            "digit_distribution": final.digits[0].tolist(),
        },
        "seconds": run.seconds,
    }


def ordering(summary: dict[str, Any]) -> list[str]:
    """Normalizer names sorted by mean Wasserstein distance, best (lowest) first."""
    entries = summary["normalizers"]
    return sorted(entries, key=lambda name: entries[name]["wasserstein"]["mean"])


def summarize(results: Results) -> dict[str, Any]:
    """The JSON-ready document of a run."""
    summary: dict[str, Any] = {
        "experiment": "cvae-digits",
        "options": dataclasses.asdict(results.options),
        "environment": {
            "evsoftmax": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "ground_truth": metric.ground_truth().tolist(),
        "classifier_test_accuracy": results.classifier_accuracy,
        "seconds": results.seconds,
        "normalizers": {run.name: _summarize_run(run) for run in results.runs},
    }
    summary["ordering"] = ordering(summary)
    summary["paper_claims"] = paper_claims(summary)
    return summary


def _mean_modes(entry: dict[str, Any]) -> float:
    return float(np.mean([entry["prior_modes"][q]["mean"] for q in QUERY_NAMES]))


def paper_claims(summary: dict[str, Any]) -> dict[str, bool]:
    """The paper's findings (Sec. 4.1), each checked against the means of this run.

    Claims that involve a normalizer left out of the run are skipped.
    """
    entries = summary["normalizers"]
    if "ev_softmax" not in entries:
        return {}
    ev = entries["ev_softmax"]
    claims = {}
    for name in ("softmax", "sparsemax", "entmax15"):
        if name in entries:
            closer = ev["wasserstein"]["mean"] < entries[name]["wasserstein"]["mean"]
            claims[f"ev-softmax closer to the truth than {LABELS[name]}"] = closer
    for name in ("sparsemax", "entmax15"):
        if name in entries:
            more = _mean_modes(ev) > _mean_modes(entries[name])
            claims[f"ev-softmax keeps more prior modes than {LABELS[name]}"] = more
    return claims


def write_json(summary: dict[str, Any], path: Path) -> None:
    """Write ``summary`` as indented JSON (creating the parent folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _pm(stat: dict[str, Any], digits: int = 2) -> str:
    sem = stat["sem"]
    return f"{stat['mean']:.{digits}f}" + ("" if sem is None else f"±{sem:.{digits}f}")


def table(summary: dict[str, Any]) -> Table:
    """The terminal table: one row per normalizer, mean ± standard error over seeds."""
    seeds = summary["options"]["seeds"]
    out = Table(
        title=f"CVAE on 8x8 digits: mean ± standard error over {seeds} seed(s)",
        caption="W: Wasserstein distance of the prior's digit distribution to the truth, "
        "lower is better. modes: latent classes with non-zero prior mass. "
        "calls: decoder calls per training example.",
        box=box.SIMPLE_HEAD,
    )
    out.add_column("normalizer", no_wrap=True)
    for header in ("W", "W even / odd", "modes even / odd", "calls"):
        out.add_column(header, justify="right", no_wrap=True)
    for entry in summary["normalizers"].values():
        by_query, modes = entry["wasserstein_by_query"], entry["prior_modes"]
        out.add_row(
            entry["label"],
            _pm(entry["wasserstein"]),
            " / ".join(f"{by_query[q]['mean']:.2f}" for q in QUERY_NAMES),
            " / ".join(f"{modes[q]['mean']:.1f}" for q in QUERY_NAMES),
            _pm(entry["decoder_calls_per_example"], 1),
        )
    return out


@contextmanager
def progress_bar(console: Console, total: int) -> Iterator[tuple[Any, Any]]:
    """A rich progress bar over ``total`` training steps; yields ``(start, advance)``."""
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("training", total=total)

        def start(name: str) -> None:
            bar.update(task, description=LABELS[name])

        def advance(steps: int) -> None:
            bar.advance(task, steps)

        yield start, advance
