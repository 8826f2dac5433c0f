"""``evsoftmax demo``: the worked example on every installed backend."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "Show ev-softmax on the paper's worked example on every installed backend."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options yet."""


def run(args: argparse.Namespace) -> int:
    """Placeholder, replaced in this same change."""
    return 1
