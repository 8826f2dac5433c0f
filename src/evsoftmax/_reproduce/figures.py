"""The PNG figures, analogous to the paper's Fig. 1 and Fig. 2 (matplotlib, no pyplot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from . import metric
from .data import SIDE
from .experiment import Results
from .normalizers import LABELS

__all__ = ["COLORS", "prior_figure", "wasserstein_figure"]

COLORS = {
    "softmax": "tab:orange",
    "sparsemax": "tab:red",
    "entmax15": "tab:blue",
    "ev_softmax": "tab:green",
}
_QUERIES = (("even", "tab:purple"), ("odd", "tab:gray"))


def prior_figure(results: Results, path: Path) -> None:
    """Fig. 1: per normalizer, the decoded image of every latent class and the prior bars.

    First seed only. Latent classes are sorted by the digit the classifier reads
    in their image (written under each image); the bars are ``p(z | even)``
    and ``p(z | odd)`` with ``epsilon = 0``.
    """
    latent = results.options.latent_classes
    rows = len(results.runs)
    figure = Figure(figsize=(1.0 * latent, 2.6 * rows), layout="constrained")
    grid = figure.add_gridspec(2 * rows, latent, height_ratios=[1.0, 1.3] * rows)
    for r, run in enumerate(results.runs):
        final = run.final
        digits = final.labels[0].argmax(axis=-1)
        order = np.argsort(digits, kind="stable")
        for column, z in enumerate(order):
            ax = figure.add_subplot(grid[2 * r, column])
            ax.imshow(final.images[0, z].reshape(SIDE, SIDE), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"→ {digits[z]}", fontsize=9)
            if column == 0:
                ax.set_ylabel(LABELS[run.name], fontsize=11, color=COLORS[run.name])
        bars = figure.add_subplot(grid[2 * r + 1, :])
        width = 0.4
        for q, (query, color) in enumerate(_QUERIES):
            bars.bar(
                np.arange(latent) + (q - 0.5) * width,
                final.prior[0, q, order],
                width,
                color=color,
                label=f"p(z | {query})",
            )
        bars.set_xlim(-0.5, latent - 0.5)
        bars.set_ylim(0, 1)
        bars.set_xticks(np.arange(latent), [f"z={z}" for z in order], fontsize=8)
        bars.set_xlabel("latent class z (sorted by the digit its image shows)", fontsize=8)
        bars.set_ylabel("prior p(z | y)", fontsize=9)
        w = final.wasserstein[0]
        tv = final.total_variation[0]
        bars.set_title(
            f"paper's W even {w[0]:.3f}, odd {w[1]:.3f}; TV even {tv[0]:.2f}, odd {tv[1]:.2f}",
            fontsize=9,
        )
        # Beside the bars, never over them.
        bars.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    figure.suptitle("Prior p(z | y) over the decoded latent classes (first seed)")
    _save(figure, path)


def wasserstein_figure(results: Results, path: Path) -> None:
    """Fig. 2: the paper's Wasserstein distance over training, mean ± standard error over seeds.

    The legend (beside the panels) names the normalizers and says what the
    shaded bands are.
    """
    from matplotlib.patches import Patch

    seeds = results.runs[0].curve.shape[1] if results.runs else 0
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for q, (ax, (query, _)) in enumerate(zip(axes, _QUERIES, strict=True)):
        for run in results.runs:
            mean, sem = metric.mean_and_sem(run.curve[:, :, q], axis=1)
            ax.plot(run.steps, mean, color=COLORS[run.name], label=LABELS[run.name])
            if np.isfinite(sem).all():
                ax.fill_between(
                    run.steps, mean - sem, mean + sem, color=COLORS[run.name], alpha=0.25
                )
        ax.set_title(f"query y = {query}")
        ax.set_xlabel("training iteration")
        ax.set_ylabel("paper's Wasserstein distance to the truth")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
    handles, _labels = axes[0].get_legend_handles_labels()
    band = Patch(color="gray", alpha=0.25, label=f"± standard error\nover {seeds} seeds")
    figure.legend(
        handles=[*handles, band], loc="outside right upper", title="mean over seeds", frameon=False
    )
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
