"""Draw docs/img/normalizers.png: softmax, sparsemax, 1.5-entmax and ev-softmax side by side.

Run from the repository root: ``python docs/scripts/normalizers_figure.py``
(needs matplotlib). The numbers come from evsoftmax itself on NumPy arrays.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import evsoftmax as evs

OUT = Path(__file__).resolve().parents[1] / "img" / "normalizers.png"
MAPS = {
    "softmax": evs.softmax,
    "sparsemax": evs.sparsemax,
    "1.5-entmax": evs.entmax15,
    "ev-softmax": evs.ev_softmax,
}
COLORS = ["#9e9e9e", "#1f77b4", "#2ca02c", "#d62728"]
WORKED = np.array([0.4, 1.4, -0.8])
CLASSES = np.arange(12)
BIMODAL = 4.0 * np.exp(-((CLASSES - 3) ** 2) / 2) + 2.6 * np.exp(-((CLASSES - 8) ** 2) / 2)


def grouped_bars(ax, scores: np.ndarray, title: str) -> None:
    width = 0.8 / len(MAPS)
    for i, ((name, fn), color) in enumerate(zip(MAPS.items(), COLORS, strict=True)):
        offset = (i - (len(MAPS) - 1) / 2) * width
        ax.bar(np.arange(scores.size) + offset, fn(scores), width, label=name, color=color)
    ax.set_xticks(np.arange(scores.size))
    ax.set_xlabel("class")
    ax.set_ylabel("probability")
    ax.set_title(title)


def support_sizes(ax) -> None:
    scores = np.random.default_rng(0).normal(size=50)
    scales = np.logspace(-2, 1.5, 80)
    for (name, fn), color in zip(MAPS.items(), COLORS, strict=True):
        sizes = [(fn(c * scores) > 0).sum() for c in scales]
        ax.plot(scales, sizes, label=name, color=color, lw=2)
    ax.set_xscale("log")
    ax.set_xlabel("scale c of the scores (c · v, 50 classes)")
    ax.set_ylabel("number of non-zero probabilities")
    ax.set_title("(c) sparsity against the scale of the scores")


def main() -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), gridspec_kw={"width_ratios": [1, 2.2, 1.6]})
    grouped_bars(axes[0], WORKED, "(a) worked example v = (0.4, 1.4, -0.8)")
    grouped_bars(axes[1], BIMODAL, "(b) bimodal scores: two bumps, at classes 3 and 8")
    support_sizes(axes[2])
    axes[0].legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
