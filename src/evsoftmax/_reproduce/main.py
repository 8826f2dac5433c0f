"""The body of ``evsoftmax reproduce``, once its dependencies are known to import."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from . import figures, report
from .experiment import Results, run_cvae
from .normalizers import LABELS
from .options import DEFAULT, QUICK, CVAEOptions

__all__ = ["main", "options_from", "run_and_report"]

# Command-line options that override the preset's field of the same name.
_OVERRIDES = ("seeds", "steps", "normalizers", "sparse_loss", "threads")


def options_from(args: argparse.Namespace) -> CVAEOptions:
    """The preset (``--quick`` or the default) with the options given on the command line."""
    options = QUICK if args.quick else DEFAULT
    changes: dict[str, Any] = {}
    for field in _OVERRIDES:
        value = getattr(args, field, None)
        if value is not None:
            changes[field] = tuple(value) if isinstance(value, list) else value
    return options.replace(**changes)


def main(args: argparse.Namespace) -> int:
    """Run ``evsoftmax reproduce`` with parsed ``args``."""
    try:
        options = options_from(args)
    except ValueError as error:
        Console(stderr=True).print(f"evsoftmax reproduce: {error}")
        return 2
    run_and_report(options, args.json, args.plots, progress=not args.no_progress)
    return 0


def run_and_report(
    options: CVAEOptions,
    json_path: Path | None = None,
    plots: Path | None = None,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the CVAE experiment, print the table and write what was asked; return the summary."""
    console = Console() if console is None else console
    results = _run(options, console, progress)
    summary = report.summarize(results)
    console.print(report.table(summary))
    _print_verdict(summary, results, console)
    if json_path is not None:
        report.write_json(summary, json_path)
        console.print(f"results: {json_path}")
    if plots is not None:
        for name, draw in (
            ("cvae_priors.png", figures.prior_figure),
            ("cvae_wasserstein.png", figures.wasserstein_figure),
        ):
            draw(results, plots / name)
            console.print(f"figure: {plots / name}")
    return summary


def _run(options: CVAEOptions, console: Console, progress: bool) -> Results:
    if not progress:
        return run_cvae(options)
    with report.progress_bar(console, options.steps * len(options.normalizers)) as (start, step):
        return run_cvae(options, start, step)


def _print_verdict(summary: dict[str, Any], results: Results, console: Console) -> None:
    order = " < ".join(LABELS[name] for name in summary["ordering"])
    console.print(f"ordering by Wasserstein distance (best first): {order}")
    for claim, holds in summary["paper_claims"].items():
        console.print(f"  paper: {claim}: {'reproduced' if holds else 'NOT reproduced'}")
    console.print(
        f"digit classifier test accuracy {results.classifier_accuracy:.3f}; "
        f"total {results.seconds:.0f} s"
    )
