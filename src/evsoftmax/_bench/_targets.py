"""DESIGN section 6's targets as numbers, and the verdict of one measured ratio.

A ratio is ours ÷ the peer's median time (or peak ÷ output size for memory);
lower is better and a cell passes when it is at most its target. A ``--quick``
run's small shapes are for smoke tests: its cells say so instead of passing or
failing.
"""

from __future__ import annotations

import math

__all__ = [
    "BASELINE_TARGET",
    "FAIL",
    "MISSING",
    "PASS",
    "QUICK_NOTICE",
    "SMOKE",
    "TARGETS",
    "verdict",
]

# Time ÷ the native softmax of the same case, per backend (eager torch and JAX
# forward and forward+backward alike).
TARGETS: dict[str, float] = {"numpy": 1.0, "torch": 1.3, "torch-compile": 1.15, "jax": 1.3}
# evsoftmax's sparsemax / entmax15 / entmax_bisect ÷ the entmax package's: 3x faster.
BASELINE_TARGET = 0.33

PASS, FAIL, MISSING, SMOKE = "pass", "fail", "n/a", "smoke test"
QUICK_NOTICE = (
    "--quick: small shapes and few samples, for smoke tests only; "
    "the ratios are not comparable with the targets"
)


def verdict(ratio: float | None, target: float, quick: bool = False) -> str:
    """``"pass"`` when ``ratio <= target``, ``"fail"`` above it, ``"n/a"`` without a ratio.

    A ``quick`` run is never judged: ``"smoke test"``.

    Examples
    --------
    >>> verdict(1.2, 1.3), verdict(1.31, 1.3), verdict(None, 1.3), verdict(0.5, 1.3, quick=True)
    ('pass', 'fail', 'n/a', 'smoke test')
    """
    if ratio is None or not math.isfinite(ratio):
        return MISSING
    if quick:
        return SMOKE
    return PASS if ratio <= target else FAIL
