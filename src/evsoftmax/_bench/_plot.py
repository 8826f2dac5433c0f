"""PNG plots: ratio to the native softmax against K (one panel per backend), time per method."""

from __future__ import annotations

import os
from typing import Any

from ._cases import PLAIN
from ._methods import BASELINE
from ._shapes import format_shape
from ._suite import FORWARD, FORWARD_BACKWARD

__all__ = ["write_plot"]

_STYLE = {FORWARD: "-", FORWARD_BACKWARD: "--"}


def _ok(row: dict[str, Any]) -> bool:
    return bool(row["samples_s"]) and row["ratio"] is not None


def _sweep_rows(doc: dict[str, Any], backend: str) -> list[dict[str, Any]]:
    """The K-sweep's rows of ``backend`` (every row when the run had no sweep)."""
    sweep = {tuple(s) for s in doc["config"]["sweep_shapes"]}
    rows = [r for r in doc["results"] if r["backend"] == backend and _ok(r)]
    in_sweep = [r for r in rows if tuple(r["shape"]) in sweep]
    return sorted(in_sweep or rows, key=lambda r: r["k"])


def _colours(doc: dict[str, Any]) -> dict[str, Any]:
    """One colour per method, the same in every panel."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    names = dict.fromkeys(r["method"] for r in doc["results"])
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


# Bar hatches tell the shapes apart (with a legend), in addition to the shading.
_HATCHES = ("", "///", "...", "xxx", "\\\\\\", "ooo")


def _ratio_panel(ax: Any, doc: dict[str, Any], backend: str, colours: dict[str, Any]) -> None:
    rows = [r for r in _sweep_rows(doc, backend) if r["method"] != BASELINE]
    for method in dict.fromkeys(r["method"] for r in rows):
        for mode in (FORWARD, FORWARD_BACKWARD):
            points = [
                (r["k"], r["ratio"]) for r in rows if (r["method"], r["mode"]) == (method, mode)
            ]
            if points:
                ks, ratios = zip(*points, strict=True)
                ax.plot(ks, ratios, _STYLE[mode], marker="o", ms=3, color=colours[method])
    info = doc["backends"][backend]
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("K (row length), constant total size")
    ax.set_ylabel(f"time ÷ {info['native_softmax']}\n(lower is better)")
    ax.set_title(f"{backend} ({info['device']}): ratio to its native softmax", fontsize=9)


def _time_panel(
    ax: Any, doc: dict[str, Any], backend: str, mode: str, colours: dict[str, Any]
) -> None:
    shapes = _shapes(doc)
    rows = [r for r in doc["results"] if r["backend"] == backend and r["mode"] == mode and _ok(r)]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if not rows:
        ax.text(0.5, 0.5, f"no {mode} timings", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    width = 0.8 / max(len(shapes), 1)
    index = {(tuple(r["shape"]), r["method"]): r["median_s"] * 1e3 for r in rows}
    for i, shape in enumerate(shapes):
        heights = [index.get((shape, m), 0.0) for m in methods]
        xs = [j + (i - (len(shapes) - 1) / 2) * width for j in range(len(methods))]
        ax.bar(
            xs,
            heights,
            width,
            color=[colours[m] for m in methods],
            alpha=_shade(i, len(shapes)),
            hatch=_HATCHES[i % len(_HATCHES)],
            edgecolor="black",
            linewidth=0.3,
        )
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("method (bold: the native softmax)")
    ax.set_ylabel(f"{mode} time\n(ms, median)")
    ax.set_title(f"{backend}: {mode} time per method and shape", fontsize=9)
    if BASELINE in methods:
        ax.get_xticklabels()[methods.index(BASELINE)].set_fontweight("bold")


def _shapes(doc: dict[str, Any]) -> list[tuple[int, ...]]:
    """The shapes of the time panels: the run's main shapes (else every shape timed)."""
    main = [tuple(s) for s in doc["config"]["shapes"]]
    return main or list(dict.fromkeys(tuple(r["shape"]) for r in doc["results"]))


def _shade(i: int, count: int) -> float:
    return 1.0 - 0.6 * i / max(count, 1)


def _legends(fig: Any, doc: dict[str, Any], colours: dict[str, Any]) -> None:
    """The figure's legends, below the panels (never over the data): methods, modes, shapes."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    methods = [Patch(color=colour, label=name) for name, colour in colours.items()]
    modes = [
        Line2D([], [], color="black", ls=_STYLE[FORWARD], label=FORWARD),
        Line2D([], [], color="black", ls=_STYLE[FORWARD_BACKWARD], label=FORWARD_BACKWARD),
        Line2D([], [], color="black", lw=0.8, label="native softmax (= 1)"),
    ]
    shapes = [
        Patch(
            facecolor="lightgray",
            alpha=_shade(i, len(_shapes(doc))),
            hatch=_HATCHES[i % len(_HATCHES)],
            edgecolor="black",
            label=format_shape(shape),
        )
        for i, shape in enumerate(_shapes(doc))
    ]
    legend = {"frameon": False, "fontsize": 8}
    fig.legend(handles=methods, title="method (colour)", loc="outside lower left", ncol=6, **legend)
    fig.legend(
        handles=modes, title="line style (ratio panels)", loc="outside lower center", **legend
    )
    fig.legend(handles=shapes, title="shape (bar hatch)", loc="outside lower right", **legend)


def write_plot(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the plots of ``doc`` as a PNG: per backend, ratio vs K and time per method.

    The legends sit below the panels: one colour per method (the same in every
    panel), the line style per mode, and a hatch per shape in the bar panels.
    Only the plain cases are plotted (the variants and baselines are in the tables).
    """
    import matplotlib

    doc = {**doc, "results": [r for r in doc["results"] if r.get("group", PLAIN) == PLAIN]}

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    backends = [b for b, info in doc["backends"].items() if info["status"] == "ok"]
    columns = max(len(backends), 1)
    fig, axes = plt.subplots(
        3, columns, figsize=(5.5 * columns, 13), squeeze=False, layout="constrained"
    )
    colours = _colours(doc)
    for j, backend in enumerate(backends):
        _ratio_panel(axes[0][j], doc, backend, colours)
        _time_panel(axes[1][j], doc, backend, FORWARD, colours)
        _time_panel(axes[2][j], doc, backend, FORWARD_BACKWARD, colours)
    _legends(fig, doc, colours)
    machine = doc.get("machine", {})
    where = ", ".join([str(machine.get("cpu", "")), *machine.get("gpus", [])])
    fig.suptitle(f"evsoftmax bench on {where} ({doc.get('created', '')})", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
