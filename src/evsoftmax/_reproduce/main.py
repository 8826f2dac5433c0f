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


def run_ssvae_and_report(
    options: ssvae.SSVAEOptions,
    json_path: Path | None = None,
    plots: Path | None = None,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the SSVAE experiment, print the table and write what was asked; return the summary."""
    console = Console() if console is None else console
    total = options.steps * options.seeds * len(options.normalizers)
    if progress:
        with report.progress_bar(console, total) as (start, step):
            results = ssvae.run_ssvae(options, start, step)
    else:
        results = ssvae.run_ssvae(options)
    summary = ssvae.summarize(results)
    console.print(ssvae.table(summary))
    order = " > ".join(LABELS[name] for name in summary["ordering"])
    console.print(f"ordering by test accuracy (best first): {order}")
    _print_claims(summary, console)
    console.print(f"total {results.seconds:.0f} s")
    _write(summary, json_path, console)
    if plots is not None:
        ssvae.accuracy_figure(summary, plots / "ssvae_accuracy.png")
        console.print(f"figure: {plots / 'ssvae_accuracy.png'}")
    return summary


def run_vqvae_and_report(
    options: vqvae.VQVAEOptions,
    json_path: Path | None = None,
    plots: Path | None = None,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the VQ-VAE experiment, print the table and write what was asked; return the summary."""
    console = Console() if console is None else console
    total = options.steps * options.seeds * len(options.normalizers)
    if progress:
        with report.progress_bar(console, total, {**LABELS, "VQ-VAE": "VQ-VAE"}) as (start, step):
            results = vqvae.run_vqvae(options, start, step)
    else:
        results = vqvae.run_vqvae(options)
    summary = vqvae.summarize(results)
    console.print(vqvae.table(summary))
    order = " > ".join(LABELS[name] for name in summary["ordering"])
    console.print(f"ordering by Acc-1 of the samples (best first): {order}")
    _print_claims(summary, console)
    console.print(
        f"VQ-VAE test BCE {summary['vqvae_test_bce']['mean']:.1f} nats/image, codes used "
        f"{summary['codes_used']}; total {results.seconds:.0f} s"
    )
    _write(summary, json_path, console)
    if plots is not None:
        vqvae.samples_figure(results, plots / "vqvae_samples.png")
        console.print(f"figure: {plots / 'vqvae_samples.png'}")
    return summary


def run_seq2seq_and_report(
    options: seq2seq.Seq2SeqOptions,
    json_path: Path | None = None,
    plots: Path | None = None,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the seq2seq experiment, print the table and write what was asked; return the summary."""
    console = Console() if console is None else console
    total = options.steps * options.seeds * len(options.normalizers)
    if progress:
        with report.progress_bar(console, total) as (start, step):
            results = seq2seq.run_seq2seq(options, start, step)
    else:
        results = seq2seq.run_seq2seq(options)
    summary = seq2seq.summarize(results)
    console.print(seq2seq.table(summary))
    order = " > ".join(LABELS[name] for name in summary["ordering"])
    console.print(f"ordering by exact match (best first): {order}")
    order = " < ".join(LABELS[name] for name in summary["ordering_by_attended_keys"])
    console.print(f"ordering by attended keys per query (fewest first): {order}")
    _print_claims(summary, console)
    console.print(f"total {results.total_seconds:.0f} s wall, {results.cpu_seconds:.0f} s CPU")
    _write(summary, json_path, console)
    if plots is not None:
        seq2seq.support_figure(summary, plots / "seq2seq.png")
        console.print(f"figure: {plots / 'seq2seq.png'}")
    return summary


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
