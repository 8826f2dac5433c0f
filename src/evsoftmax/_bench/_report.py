"""The terminal side: a ``rich`` progress bar while running, ratio tables at the end."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._cases import PLAIN
from ._markdown import ratio_text
from ._methods import BASELINE, COPY
from ._shapes import format_shape
from ._suite import FORWARD, FORWARD_BACKWARD
from ._targets import FAIL, PASS

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
    return f"[{colour}]{ratio_text(ratio)}[/{colour}]"


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
    rows = [
        r
        for r in doc["results"]
        if r["backend"] == backend and r["mode"] == mode and r["group"] == PLAIN
    ]
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


_VERDICT_STYLE = {PASS: "green", FAIL: "bold red"}


def _judged(ratio: float | None, verdict: str) -> str:
    style = _VERDICT_STYLE.get(verdict, "dim")
    return f"[{style}]{ratio_text(ratio)} {verdict}[/{style}]"


def _matrix_table(doc: dict[str, Any], backend: str) -> Any:
    """Every cell of ``backend`` with a target: both medians, the ratio, target, verdict."""
    rows = [r for r in doc["results"] if r["backend"] == backend and r["target"] is not None]
    if not rows:
        return None
    table = _new_table(
        f"{backend}: every case against its target (DESIGN section 6)"
        + (" — quick: smoke-test sizes, not comparable" if doc["config"]["quick"] else ""),
        "ratio = ours ÷ peer, medians of one interleaved run; the peer is the native "
        "softmax of the same layout (of the -inf-filled input for `where`, log_softmax for "
        "log ε) or, for the baselines, the entmax package's map",
    )
    for name in ("case", "ours ÷ peer", "mode", "peer ms", "ours ms", "ratio", "target"):
        table.add_column(name, justify="left" if name in ("ours ÷ peer", "mode") else "right")
    for r in rows:
        peer = {"median_s": r["peer_median_s"]}
        table.add_row(
            r["case"],
            f"{r['method']} ÷ {r['peer']}",
            r["mode"],
            _ms(peer),
            _ms(r),
            _judged(r["ratio"], r["verdict"]),
            f"≤ {ratio_text(r['target'])}",
        )
    return table


def _memory_table(doc: dict[str, Any]) -> Any:
    if not doc.get("memory"):
        return None
    table = _new_table(
        "peak memory of the fast paths, fresh process per case",
        "peak = extra memory during the call ÷ the output's bytes (tracemalloc for NumPy, "
        "peak RSS for torch); the output itself counts as 1",
    )
    for name in ("backend", "case", "peak ÷ output", "target"):
        table.add_column(name, justify="right" if name != "case" else "left")
    for m in doc["memory"]:
        peak = "[red]error[/red]" if m["error"] else _judged(m["ratio"], m["verdict"])
        table.add_row(m["backend"], m["case"], peak, f"≤ {ratio_text(m['target'])}")
    return table


def print_tables(doc: dict[str, Any], console: Any = None) -> None:
    """Print per backend its ratio tables and its case matrix; then memory, skips and errors."""
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=_PIPE_WIDTH)
    if doc.get("notice"):
        console.print(doc["notice"], style="bold yellow", markup=False)
    for backend, info in doc["backends"].items():
        if info["status"] != "ok":
            console.print(f"{backend}: {info['status']} ({info['reason']})", style="dim")
            continue
        tables = [_table(doc, backend, mode) for mode in (FORWARD, FORWARD_BACKWARD)]
        for table in (*tables, _matrix_table(doc, backend)):
            if table is not None:
                console.print(table)
    memory = _memory_table(doc)
    if memory is not None:
        console.print(memory)
    for m in doc.get("memory", []):
        if m["error"] is not None:
            console.print(
                f"memory {m['backend']} {m['case']}: {m['error']}", style="red", markup=False
            )
    for row in doc["results"]:
        if row["error"] is not None:
            where = f"{row['backend']} {row['case']} {row['method']} {row['mode']}"
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
