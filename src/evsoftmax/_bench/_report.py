"""The terminal side: a ``rich`` progress bar while running, ratio tables at the end."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._methods import BASELINE, COPY
from ._shapes import format_shape
from ._suite import FORWARD, FORWARD_BACKWARD

__all__ = ["CHECK_TOLERANCE", "RichProgress", "print_attention", "print_tables", "progress_bar"]

# float32 probabilities from two correct formulas agree to a few ulps of 1.
CHECK_TOLERANCE = 1e-5

# Short column names for the tables; the caption spells them out.
_LABELS = {
    "ev_softmax": "ev",
    "ev_softmax_eps": "ev ε",
    "reference": "ref",
    "reference_eps": "ref ε",
    "entmax.sparsemax": "entmax\nsparsemax",
    "entmax.entmax15": "entmax\nentmax15",
}
# Wide enough for every column when the output is not a terminal (a file, a pipe, CI logs).
_PIPE_WIDTH = 160


class RichProgress:
    """:class:`._suite.Progress` on a ``rich`` progress bar."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._task: Any = None

    def begin(self, total: int) -> None:
        self._task = self._progress.add_task("starting", total=total)

    def step(self, description: str) -> None:
        self._progress.update(self._task, advance=1, description=description)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[RichProgress]:
    """A progress bar on standard error (silent when ``enabled`` is false)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    console = Console(stderr=True, quiet=not enabled)
    with Progress(*columns, console=console, transient=True) as progress:
        yield RichProgress(progress)


def _ratio(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if row["error"] is not None and not row["samples_s"]:
        return "[red]error[/red]"
    ratio = row["ratio"]
    if ratio is None or not math.isfinite(ratio):
        return "n/a"
    colour = "green" if ratio <= 1.3 else "yellow" if ratio <= 2.5 else "red"
    digits = 2 if ratio < 10 else 1 if ratio < 100 else 0
    return f"[{colour}]{ratio:.{digits}f}×[/{colour}]"  # noqa: RUF001


def _ms(row: dict[str, Any] | None) -> str:
    return (
        "" if row is None or not math.isfinite(row["median_s"]) else f"{row['median_s'] * 1e3:.3g}"
    )


def _percent(row: dict[str, Any] | None) -> str:
    if row is None or not math.isfinite(row["copy_fraction"]):
        return ""
    return f"{100 * row['copy_fraction']:.0f}%"


def _new_table(title: str, caption: str) -> Any:
    """A left-titled, captioned table in the suite's style."""
    from rich import box
    from rich.table import Table

    return Table(
        title=title,
        caption=caption,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )


def _table(doc: dict[str, Any], backend: str, mode: str) -> Any:
    rows = [r for r in doc["results"] if r["backend"] == backend and r["mode"] == mode]
    if not rows:
        return None
    info = doc["backends"][backend]
    keys = [k for k in info["methods"] if k not in (BASELINE, COPY)]
    keys = [k for k in keys if any(r["method"] == k for r in rows)]
    table = _new_table(
        f"{backend} ({info['device']}), {mode}: time ÷ {info['native_softmax']}",
        "ev = evsoftmax.ev_softmax; ref = the paper's composition (softmax × 1{x ≥ mean}, "  # noqa: RUF001
        "renormalised); ε = " + f"{doc['config']['epsilon']:g}; BW = bytes moved ÷ time, "
        "as % of a same-size copy's",
    )
    table.add_column("shape", justify="right")
    table.add_column("softmax\nms", justify="right")
    for key in keys:
        table.add_column(_LABELS.get(key, key), justify="right")
    table.add_column("ev\nBW", justify="right")
    index = {(tuple(r["shape"]), r["method"]): r for r in rows}
    for shape in dict.fromkeys(tuple(r["shape"]) for r in rows):
        table.add_row(
            format_shape(shape),
            _ms(index.get((shape, BASELINE))),
            *(_ratio(index.get((shape, key))) for key in keys),
            _percent(index.get((shape, "ev_softmax"))),
        )
    return table


def print_tables(doc: dict[str, Any], console: Any = None) -> None:
    """Print one ratio table per backend and mode, then skipped backends and errors."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=_PIPE_WIDTH)
    for backend, info in doc["backends"].items():
        if info["status"] != "ok":
            console.print(f"{backend}: {info['status']} ({info['reason']})", style="dim")
            continue
        for mode in (FORWARD, FORWARD_BACKWARD):
            table = _table(doc, backend, mode)
            if table is not None:
                console.print(table)
    for row in doc["results"]:
        if row["error"] is not None:
            shape = format_shape(row["shape"])
            where = f"{row['backend']} {shape} {row['method']} {row['mode']}"
            console.print(f"{where}: {row['error']}", style="red", markup=False)
    for check in doc["checks"]:
        diff = check["max_abs_diff"]
        if diff is None or diff > CHECK_TOLERANCE:
            where = f"{check['backend']} {format_shape(check['shape'])}"
            found = check["error"] if diff is None else f"max |difference| {diff:.3g}"
            console.print(
                f"{where}: {check['method']} disagrees with {check['against']}: {found}",
                style="red",
                markup=False,
            )
    console.print(f"{doc['elapsed_s']:.0f} s in all", style="dim")


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def print_attention(doc: dict[str, Any], console: Any = None) -> None:
    """Print the attention suite's table: time ÷ SDPA and peak MiB per case and mode."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=_PIPE_WIDTH)
    part = doc["attention"]
    methods = list(dict.fromkeys(r["method"] for r in part["results"]))
    others = [m for m in methods if m != "sdpa"]
    peaks = {
        (m["case"], m["method"], m["mode"]): m["peak_mib"] for m in part["memory"] if "case" in m
    }
    table = _new_table(
        f"torch ({part['device']}, {part['threads']} threads), float32: time ÷ "
        "scaled_dot_product_attention"
        + (" (quick: smoke-test sizes)" if doc["config"]["quick"] else ""),
        "case = batch·heads x L x S x E; dense = ev_softmax(q kᵀ·scale, where=mask) @ v; "
        "peak = resident MiB beyond the inputs (fresh process)",
    )
    table.add_column("case", justify="right")
    table.add_column("mode", justify="left")
    table.add_column("sdpa\nms", justify="right")
    for name in others:
        table.add_column(name, justify="right")
    for name in methods:
        table.add_column(f"peak\n{name}", justify="right")
    index = {(r["case"], r["method"], r["mode"]): r for r in part["results"]}
    for case, mode in dict.fromkeys((r["case"], r["mode"]) for r in part["results"]):
        table.add_row(
            case,
            mode,
            _ms(index.get((case, "sdpa", mode))),
            *(_ratio(index.get((case, name, mode))) for name in others),
            *(_mib(peaks.get((case, name, mode))) for name in methods),
        )
    console.print(table)
    for row in part["results"]:
        if row["error"] is not None:
            console.print(
                f"{row['case']} {row['method']} {row['mode']}: {row['error']}",
                style="red",
                markup=False,
            )
    for entry in part["memory"]:
        if "error" in entry:
            console.print(entry["error"], style="red", markup=False)
    for check in part["checks"]:
        console.print(
            f"{check['case']}: max |ev_attention - dense| {check['max_abs_diff']:.3g}", style="dim"
        )
    console.print(f"{doc['elapsed_s']:.0f} s in all", style="dim")
