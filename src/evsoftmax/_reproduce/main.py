"""The body of ``evsoftmax reproduce``, once its dependencies are known to import."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from . import figures, report, seq2seq, ssvae, vqvae
from .experiment import Results, run_cvae
from .normalizers import LABELS
from .options import DEFAULT, EXACT, CVAEOptions, quick

__all__ = [
    "AVAILABLE",
    "cvae_options",
    "main",
    "run_and_report",
    "run_seq2seq_and_report",
    "run_ssvae_and_report",
    "run_vqvae_and_report",
    "seq2seq_options",
    "ssvae_options",
    "vqvae_options",
]

# Command-line options that override the preset's field of the same name.
_COMMON = ("seeds", "steps", "normalizers", "threads")
_CVAE_ONLY = ("sparse_loss",)


def _overrides(args: argparse.Namespace, fields: tuple[str, ...]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for field in fields:
        value = getattr(args, field, None)
        if value is not None:
            changes[field] = tuple(value) if isinstance(value, list) else value
    return changes


def cvae_options(args: argparse.Namespace) -> CVAEOptions:
    """The CVAE preset (``--variant``, ``--quick``) with the options given on the command line."""
    preset = EXACT if getattr(args, "variant", None) == "exact" else DEFAULT
    if args.quick:
        preset = quick(preset)
    return preset.replace(**_overrides(args, _COMMON + _CVAE_ONLY))


def ssvae_options(args: argparse.Namespace) -> ssvae.SSVAEOptions:
    """The SSVAE preset (``--quick`` or the default) with the command line's options."""
    preset = ssvae.QUICK if args.quick else ssvae.DEFAULT
    return preset.replace(**_overrides(args, _COMMON))


def vqvae_options(args: argparse.Namespace) -> vqvae.VQVAEOptions:
    """The VQ-VAE preset (``--quick`` or the default) with the command line's options."""
    preset = vqvae.QUICK if args.quick else vqvae.DEFAULT
    return preset.replace(**_overrides(args, _COMMON))


def seq2seq_options(args: argparse.Namespace) -> seq2seq.Seq2SeqOptions:
    """The seq2seq preset (``--quick`` or the default) with the command line's options."""
    preset = seq2seq.QUICK if args.quick else seq2seq.DEFAULT
    return preset.replace(**_overrides(args, _COMMON))


@dataclass(frozen=True)
class _Experiment:
    options: Callable[[argparse.Namespace], Any]
    run: Callable[..., dict[str, Any]]


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
    _write(summary, json_path, console)
    if plots is not None:
        for name, draw in (
            ("cvae_priors.png", figures.prior_figure),
            ("cvae_wasserstein.png", figures.wasserstein_figure),
        ):
            draw(results, plots / name)
            console.print(f"figure: {plots / name}")
    return summary


@dataclass(frozen=True)
class _Report:
    """How one experiment is run and shown: its runner, summary, table, orderings, figure."""

    run: Callable[..., Any]
    summarize: Callable[[Any], dict[str, Any]]
    table: Callable[[dict[str, Any]], Any]
    # (summary key, joiner, what the ordering is by) for each ordering line printed.
    orderings: tuple[tuple[str, str, str], ...]
    footer: Callable[[dict[str, Any], Any], str]
    figure: str
    draw: Callable[[dict[str, Any], Any, Path], None]
    labels: dict[str, str] | None = None


def _run_report(
    spec: _Report,
    options: Any,
    json_path: Path | None,
    plots: Path | None,
    progress: bool,
    console: Console | None,
) -> dict[str, Any]:
    """Run an experiment, print its table, orderings and claims, write what was asked."""
    console = Console() if console is None else console
    total = options.steps * options.seeds * len(options.normalizers)
    if progress:
        with report.progress_bar(console, total, spec.labels or LABELS) as (start, step):
            results = spec.run(options, start, step)
    else:
        results = spec.run(options)
    summary = spec.summarize(results)
    console.print(spec.table(summary))
    for key, joiner, title in spec.orderings:
        order = joiner.join(LABELS[name] for name in summary[key])
        console.print(f"ordering by {title}: {order}")
    _print_claims(summary, console)
    console.print(spec.footer(summary, results))
    _write(summary, json_path, console)
    if plots is not None:
        spec.draw(summary, results, plots / spec.figure)
        console.print(f"figure: {plots / spec.figure}")
    return summary


_SSVAE = _Report(
    ssvae.run_ssvae,
    ssvae.summarize,
    ssvae.table,
    (("ordering", " > ", "test accuracy (best first)"),),
    lambda summary, results: f"total {results.seconds:.0f} s",
    "ssvae_accuracy.png",
    lambda summary, results, path: ssvae.accuracy_figure(summary, path),
)
_VQVAE = _Report(
    vqvae.run_vqvae,
    vqvae.summarize,
    vqvae.table,
    (("ordering", " > ", "Acc-1 of the samples (best first)"),),
    lambda summary, results: (
        f"VQ-VAE test BCE {summary['vqvae_test_bce']['mean']:.1f} nats/image, codes used "
        f"{summary['codes_used']}; total {results.seconds:.0f} s"
    ),
    "vqvae_samples.png",
    lambda summary, results, path: vqvae.samples_figure(results, path),
    {**LABELS, "VQ-VAE": "VQ-VAE"},
)
_SEQ2SEQ = _Report(
    seq2seq.run_seq2seq,
    seq2seq.summarize,
    seq2seq.table,
    (
        ("ordering", " > ", "exact match (best first)"),
        ("ordering_by_attended_keys", " < ", "attended keys per query (fewest first)"),
    ),
    lambda summary, results: (
        f"total {results.total_seconds:.0f} s wall, {results.cpu_seconds:.0f} s CPU"
    ),
    "seq2seq.png",
    lambda summary, results, path: seq2seq.support_figure(summary, path),
)


def run_ssvae_and_report(
    options: ssvae.SSVAEOptions,
    json_path: Path | None = None,
    plots: Path | None = None,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the SSVAE experiment, print the table and write what was asked; return the summary."""
    return _run_report(_SSVAE, options, json_path, plots, progress, console)


def run_vqvae_and_report(
    options: vqvae.VQVAEOptions,
    json_path: Path | None = None,
    plots: Path | None = None,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the VQ-VAE experiment, print the table and write what was asked; return the summary."""
    return _run_report(_VQVAE, options, json_path, plots, progress, console)


def run_seq2seq_and_report(
    options: seq2seq.Seq2SeqOptions,
    json_path: Path | None = None,
    plots: Path | None = None,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the seq2seq experiment, print the table and write what was asked; return the summary."""
    return _run_report(_SEQ2SEQ, options, json_path, plots, progress, console)


EXPERIMENTS = {
    "cvae": _Experiment(cvae_options, run_and_report),
    "ssvae": _Experiment(ssvae_options, run_ssvae_and_report),
    "vqvae": _Experiment(vqvae_options, run_vqvae_and_report),
    "seq2seq": _Experiment(seq2seq_options, run_seq2seq_and_report),
}
AVAILABLE = tuple(EXPERIMENTS)
"""The experiments that run, in the order ``all`` runs them."""


def main(args: argparse.Namespace) -> int:
    """Run ``evsoftmax reproduce`` with parsed ``args``."""
    err = Console(stderr=True)
    names = AVAILABLE if args.experiment == "all" else (args.experiment,)
    try:
        chosen = {name: EXPERIMENTS[name].options(args) for name in names}
    except ValueError as error:
        err.print(f"evsoftmax reproduce: {error}")
        return 2
    console = Console()
    single = len(names) == 1
    summaries = {}
    for name, options in chosen.items():
        summaries[name] = EXPERIMENTS[name].run(
            options,
            args.json if single else None,
            args.plots,
            progress=not args.no_progress,
            console=console,
        )
    if not single:
        document = {"experiment": "all", "experiments": summaries}
        _write(document, args.json, console)
    return 0


def _write(summary: dict[str, Any], json_path: Path | None, console: Console) -> None:
    if json_path is not None:
        report.write_json(summary, json_path)
        console.print(f"results: {json_path}")


def _run(options: CVAEOptions, console: Console, progress: bool) -> Results:
    if not progress:
        return run_cvae(options)
    with report.progress_bar(console, options.steps * len(options.normalizers)) as (start, step):
        return run_cvae(options, start, step)


def _print_claims(summary: dict[str, Any], console: Console) -> None:
    for claim, holds in summary["paper_claims"].items():
        console.print(f"  paper: {claim}: {'reproduced' if holds else 'NOT reproduced'}")


def _print_verdict(summary: dict[str, Any], results: Results, console: Console) -> None:
    order = " < ".join(LABELS[name] for name in summary["ordering"])
    console.print(f"ordering by the paper's Wasserstein distance (best first): {order}")
    order_tv = " < ".join(LABELS[name] for name in summary["ordering_by_total_variation"])
    console.print(f"ordering by total variation (best first): {order_tv}")
    _print_claims(summary, console)
    console.print(
        f"digit classifier test accuracy {results.classifier_accuracy:.3f}; "
        f"total {results.seconds:.0f} s"
    )
