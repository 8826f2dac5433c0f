"""``evsoftmax reproduce``: the paper's experiments at small scale, on CPU.

``evsoftmax reproduce cvae`` trains the paper's conditional VAE (Sec. 4.1),
``ssvae`` its semi-supervised VAE (Table 2) and ``vqvae`` a VQ-VAE with an
autoregressive prior (Table 3) on scikit-learn's bundled 8x8 digits, and
``seq2seq`` a small encoder-decoder Transformer on generated copy / reverse /
sort tasks (Table 4), each with softmax, sparsemax, entmax-1.5 and
ev-softmax; ``all`` runs the four. See ``docs/reproduction.md`` for the
recorded runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from ._reproduce.options import NORMALIZERS, SPARSE_LOSSES, VARIANTS

NAME = "reproduce"
HELP = (
    "Reproduce the paper's experiments at small scale on CPU "
    "(cvae: Sec. 4.1, ssvae: Table 2, vqvae: Table 3, seq2seq: Table 4)."
)

EXPERIMENTS = ("cvae", "ssvae", "vqvae", "seq2seq", "all")
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
        help="2 seeds and few steps: under a minute per experiment on 2 CPU cores",
    )
    parser.add_argument(
        "--seeds", type=int, help="number of seeds (default: cvae 5, others 3; 2 with --quick)"
    )
    parser.add_argument(
        "--steps", type=int, help="training steps per normalizer and seed (default: the preset's)"
    )
    parser.add_argument(
        "--normalizers",
        nargs="+",
        choices=NORMALIZERS,
        metavar="NAME",
        help=f"normalizers to compare (default all: {' '.join(NORMALIZERS)})",
    )
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        help="cvae only: the paper's recipe with a relaxed one-hot z (relaxed, default) "
        "or exact marginalization over the posterior's support (exact)",
    )
    parser.add_argument(
        "--sparse-loss",
        choices=SPARSE_LOSSES,
        help="cvae only: stand-in for the KL of sparsemax/entmax-1.5: the paper's smoothed KL "
        "(default) or their Fenchel-Young losses",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="write the results (with every option of the run) as JSON; with 'all', one "
        "document holding every experiment",
    )
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
