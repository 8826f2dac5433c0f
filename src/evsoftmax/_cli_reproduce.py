"""``evsoftmax reproduce``: the paper's experiments at small scale, on CPU.

``evsoftmax reproduce cvae`` trains the paper's conditional VAE (Sec. 4.1) on
scikit-learn's bundled 8x8 digits with softmax, sparsemax, entmax-1.5 and
ev-softmax, and prints how close each prior gets to the true digit
distribution. See ``docs/reproduction.md`` for the recorded run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from ._reproduce.options import DEFAULT, NORMALIZERS, QUICK, SPARSE_LOSSES

NAME = "reproduce"
HELP = "Reproduce the paper's experiments at small scale on CPU (cvae: the CVAE of Sec. 4.1)."

EXPERIMENTS = ("cvae",)
_REQUIRED = {
    "torch": "torch",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "rich": "rich",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``evsoftmax reproduce``."""
    parser.add_argument("experiment", choices=EXPERIMENTS, help="the experiment to run")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.seeds} seeds, {QUICK.steps} steps: under a minute on 2 CPU cores",
    )
    parser.add_argument(
        "--seeds", type=int, help=f"number of seeds (default {DEFAULT.seeds}; {QUICK.seeds} quick)"
    )
    parser.add_argument(
        "--steps", type=int, help=f"training steps per normalizer (default {DEFAULT.steps})"
    )
    parser.add_argument(
        "--normalizers",
        nargs="+",
        choices=NORMALIZERS,
        metavar="NAME",
        help=f"normalizers to compare (default all: {' '.join(NORMALIZERS)})",
    )
    parser.add_argument(
        "--sparse-loss",
        choices=SPARSE_LOSSES,
        help="stand-in for the KL of sparsemax/entmax-1.5: the paper's smoothed KL "
        "(default) or their Fenchel-Young losses",
    )
    parser.add_argument(
        "--threads", type=int, help=f"torch CPU threads (default {DEFAULT.threads})"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write the PNG figures here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def missing_dependencies() -> list[str]:
    """The pip names of the required packages that are not importable."""
    return [pip for module, pip in _REQUIRED.items() if importlib.util.find_spec(module) is None]


def run(args: argparse.Namespace) -> int:
    """Run the experiment, print the table, write the JSON and figures asked for."""
    missing = missing_dependencies()
    if missing:
        print(
            f"evsoftmax reproduce needs {', '.join(missing)}: "
            'pip install ".[reproduce]" (from a clone of the repository)',
            file=sys.stderr,
        )
        return 1
    from ._reproduce.main import main

    return main(args)
