"""``evsoftmax bench``: ev-softmax against the native softmax and its peers, side by side.

Same code as ``benchmarks/run.py``. ``rich`` (table, progress bar) and
``matplotlib`` (``--plot``) come with the ``bench`` extra (``pip install ".[bench]"``
from a clone of the repository); they
and the array frameworks are imported only inside :func:`run`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._bench._backends import BACKENDS, DEFAULT_BACKENDS
from ._bench._cases import GROUPS, parse_groups
from ._bench._shapes import (
    QUICK_SHAPES,
    QUICK_SWEEP_KS,
    QUICK_SWEEP_TOTAL,
    SWEEP_KS,
    SWEEP_TOTAL,
    Shape,
    parse_ints,
    parse_shapes,
)
from ._bench._suite import BenchConfig
from ._bench._timing import TimingPlan

__all__ = ["HELP", "NAME", "add_arguments", "config_from_args", "main", "run"]

NAME = "bench"
HELP = "Time ev-softmax against the native softmax and its peers on every installed backend."
INSTALL_HINT = 'pip install ".[bench]" (from a clone of the repository)'

# (full run, --quick) defaults of the options that --quick shrinks.
_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "shapes": (parse_shapes("default"), QUICK_SHAPES),
    "sweep_total": (SWEEP_TOTAL, QUICK_SWEEP_TOTAL),
    "sweep_ks": (SWEEP_KS, QUICK_SWEEP_KS),
    "repeats": (10, 3),
    "warmup": (2, 1),
    "max_time": (1.0, 0.1),
}


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` that reports the parser's own message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _backends(text: str) -> tuple[str, ...]:
    items = (n.strip() for n in text.split(",") if n.strip())
    names = tuple(
        dict.fromkeys(n for item in items for n in (BACKENDS if item == "all" else (item,)))
    )
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)} or all")
    return names


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def positive(text: str) -> Any:
        value = kind(text)
        if not value >= 0:
            raise ValueError(f"expected a number >= 0, got {text!r}")
        return value

    return positive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``evsoftmax bench``."""
    parser.add_argument(
        "--suite",
        choices=("softmax", "attention"),
        default="softmax",
        help="softmax: normalizers on every backend (default); attention: torch ev_attention "
        "vs scaled_dot_product_attention and the dense composition (--shapes and sweeps ignored)",
    )
    parser.add_argument(
        "--backends",
        type=_checked(_backends),
        help=f"comma-separated, or 'all' (default: {','.join(DEFAULT_BACKENDS)} when installed)",
    )
    parser.add_argument(
        "--shapes",
        type=_checked(parse_shapes),
        help="comma-separated RxK shapes and presets 'default' (4096x1024,64x32000,16x262144), "
        "'gpu' (8192x8192,64x128000) or 'none'",
    )
    parser.add_argument(
        "--sweep-total",
        type=_checked(_positive(int)),
        help=f"elements per K-sweep shape, 0 for no sweep (default {SWEEP_TOTAL})",
    )
    parser.add_argument(
        "--sweep-ks",
        type=_checked(lambda t: parse_ints(t, "--sweep-ks")),
        help="comma-separated row lengths K of the sweep (default 16,64,...,262144)",
    )
    parser.add_argument("--repeats", type=_checked(_positive(int)), help="samples per method (10)")
    parser.add_argument("--warmup", type=_checked(_positive(int)), help="warm-up calls (2)")
    parser.add_argument(
        "--max-time",
        type=_checked(_positive(float)),
        help="seconds after which a slow method stops sampling, past 3 samples (1.0)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where torch and jax run: auto uses a GPU when one is visible",
    )
    parser.add_argument(
        "--cases",
        type=_checked(parse_groups),
        default=GROUPS,
        help="case groups beyond --shapes, comma-separated, 'all' (default) or 'none': "
        + ", ".join(GROUPS),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small shapes and few repeats, for smoke tests: not comparable with the targets",
    )
    parser.add_argument("--json", metavar="PATH", help="write results, machine and versions")
    parser.add_argument(
        "--markdown",
        metavar="JSON",
        help="do not time: render the docs tables from a recorded JSON (to standard output)",
    )
    parser.add_argument(
        "--into",
        metavar="MD",
        help="with --markdown: write the tables into this file between its bench-matrix lines",
    )
    parser.add_argument("--plot", metavar="PATH", help="write a PNG: ratio vs K, time per method")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _default_backends(device: str) -> tuple[str, ...]:
    return tuple(n for n in DEFAULT_BACKENDS if BACKENDS[n](device).unavailable() is None)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the parsed options ask for (``--quick`` fills the defaults)."""
    picked = {
        name: getattr(args, name) if getattr(args, name) is not None else pair[args.quick]
        for name, pair in _DEFAULTS.items()
    }
    shapes: tuple[Shape, ...] = picked["shapes"]
    return BenchConfig(
        backends=args.backends or _default_backends(args.device),
        shapes=shapes,
        sweep_total=picked["sweep_total"],
        sweep_ks=picked["sweep_ks"],
        plan=TimingPlan(
            repeats=max(picked["repeats"], 1),
            warmup=picked["warmup"],
            max_time_s=picked["max_time"],
            min_sample_s=5e-4 if args.quick else 2e-3,
        ),
        device=args.device,
        quick=args.quick,
        cases=args.cases,
    )


def _missing_packages(args: argparse.Namespace) -> list[str]:
    needed = ["rich"] + (["matplotlib"] if args.plot else [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _markdown(args: argparse.Namespace) -> int:
    """``--markdown JSON [--into MD]``: the docs tables from a recorded run."""
    import json
    from pathlib import Path

    from ._bench._markdown import insert_between_markers, render_markdown

    try:
        block = render_markdown(json.loads(Path(args.markdown).read_text(encoding="utf-8")))
        if args.into:
            target = Path(args.into)
            text = target.read_text(encoding="utf-8")
            target.write_text(insert_between_markers(text, block, args.into), encoding="utf-8")
        else:
            print(block, end="")
    except (OSError, ValueError, KeyError) as exc:
        print(f"evsoftmax bench --markdown: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the tables and write the JSON and plot asked for."""
    if args.markdown:
        return _markdown(args)
    if args.into:
        print("evsoftmax bench: --into goes with --markdown JSON", file=sys.stderr)
        return 2
    missing = _missing_packages(args)
    if missing:
        print(
            f"evsoftmax bench needs {' and '.join(missing)}, "
            f"which {'is' if len(missing) == 1 else 'are'} not installed; "
            f"install the benchmark extras with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    from ._bench._document import header, machine, write_json
    from ._bench._report import print_tables, progress_bar
    from ._bench._suite import config_dict, run_suite

    config = config_from_args(args)
    if args.suite == "attention":
        return _run_attention(args, config)
    with progress_bar(enabled=not args.no_progress) as progress:
        doc = run_suite(config, progress, header(config_dict(config)))
    doc["machine"] = machine()
    print_tables(doc)
    if args.json:
        write_json(doc, args.json)
    if args.plot:
        from ._bench._plot import write_plot

        write_plot(doc, args.plot)
    return 0


def _run_attention(args: argparse.Namespace, config: BenchConfig) -> int:
    """The attention suite (torch only): time, peak memory, table and JSON."""
    if importlib.util.find_spec("torch") is None:
        print("evsoftmax bench --suite attention needs torch", file=sys.stderr)
        return 2
    from ._bench._attention import CASES, QUICK_CASES, run_attention
    from ._bench._document import header, machine, write_json
    from ._bench._report import print_attention, progress_bar
    from ._bench._suite import config_dict

    cases = QUICK_CASES if config.quick else CASES
    device = "cuda" if args.device == "gpu" else "cpu"
    doc = header({**config_dict(config), "suite": "attention"})
    doc["command"] += " --suite attention" + (" --quick" if config.quick else "")
    with progress_bar(enabled=not args.no_progress) as progress:
        progress.begin(len(cases) * (config.plan.repeats + 1))
        doc["attention"] = run_attention(
            cases, config.plan, device, on_round=lambda: progress.step("attention")
        )
    doc["elapsed_s"] = doc["attention"]["elapsed_s"]
    doc["machine"] = machine()
    print_attention(doc)
    if args.json:
        write_json(doc, args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``evsoftmax bench`` as a function (used by ``benchmarks/run.py``)."""
    parser = argparse.ArgumentParser(prog="evsoftmax bench", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))
