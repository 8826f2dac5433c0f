"""PNG plots: ratio to the native softmax against K (one panel per backend), time per method."""

from __future__ import annotations

import os
from typing import Any

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


def _ratio_panel(ax: Any, doc: dict[str, Any], backend: str, colours: dict[str, Any]) -> None:
    rows = [r for r in _sweep_rows(doc, backend) if r["method"] != BASELINE]
    for method in dict.fromkeys(r["method"] for r in rows):
        for mode in (FORWARD, FORWARD_BACKWARD):
            points = [
                (r["k"], r["ratio"]) for r in rows if (r["method"], r["mode"]) == (method, mode)
            ]
            if points:
                ks, ratios = zip(*points, strict=True)
                label = method if mode == FORWARD else None
                ax.plot(
                    ks, ratios, _STYLE[mode], marker="o", ms=3, label=label, color=colours[method]
                )
    info = doc["backends"][backend]
    ax.axhline(1.0, color="black", lw=0.8, label=f"{info['native_softmax']} (= 1)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("K (row length), constant total size")
    ax.set_ylabel("time ÷ native softmax (lower is better)")
    ax.set_title(
        f"{backend} ({info['device']}): solid forward, dashed forward+backward", fontsize=9
    )
    ax.legend(fontsize=6, ncol=2)


def _time_panel(
    ax: Any, doc: dict[str, Any], backend: str, mode: str, colours: dict[str, Any]
) -> None:
    main = [tuple(s) for s in doc["config"]["shapes"]] or None
    rows = [r for r in doc["results"] if r["backend"] == backend and r["mode"] == mode and _ok(r)]
    shapes = main or list(dict.fromkeys(tuple(r["shape"]) for r in rows))
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
        shade = 1.0 - 0.6 * i / max(len(shapes), 1)
        ax.bar(
            xs,
            heights,
            width,
            color=[colours[m] for m in methods],
            alpha=shade,
            edgecolor="black",
            linewidth=0.3,
        )
        for x, h in zip(xs, heights, strict=True):
            if h > 0:
                ax.annotate(
                    format_shape(shape),
                    (x, h),
                    rotation=90,
                    fontsize=5,
                    ha="center",
                    va="bottom",
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.margins(y=0.25)
    ax.set_ylabel(f"{mode} time (ms, median)")
    ax.set_title(f"{backend}: {mode} time per method and shape", fontsize=9)
    if BASELINE in methods:
        ax.get_xticklabels()[methods.index(BASELINE)].set_fontweight("bold")


def write_plot(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the plots of ``doc`` as a PNG: per backend, ratio vs K and time per method."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    backends = [b for b, info in doc["backends"].items() if info["status"] == "ok"]
    columns = max(len(backends), 1)
    fig, axes = plt.subplots(3, columns, figsize=(5.5 * columns, 12), squeeze=False)
    colours = _colours(doc)
    for j, backend in enumerate(backends):
        _ratio_panel(axes[0][j], doc, backend, colours)
        _time_panel(axes[1][j], doc, backend, FORWARD, colours)
        _time_panel(axes[2][j], doc, backend, FORWARD_BACKWARD, colours)
    machine = doc.get("machine", {})
    where = ", ".join([str(machine.get("cpu", "")), *machine.get("gpus", [])])
    fig.suptitle(f"evsoftmax bench on {where} ({doc.get('created', '')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
