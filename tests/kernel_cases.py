"""Edge cases for the fused CuPy kernels, shared by the GPU tests and the CPU emulation tests.

Every DESIGN §4 rule the kernels implement appears here at least once, with row
lengths that exercise one warp, several warps, the whole register cache
(``CACHE_ITEMS * 1024`` entries) and the streamed tail beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evsoftmax.adapters.cupy.kernels import CACHE_ITEMS, MAX_THREADS

from . import reference
from .cupy_emulation import from_storage, to_storage

__all__ = ["CASES", "TOLERANCES", "Case", "expected_output", "stored"]

LONG = CACHE_ITEMS * MAX_THREADS + 808  # past the register cache: the streamed tail runs


@dataclass(frozen=True)
class Case:
    name: str
    x: np.ndarray
    axis: int = -1
    where: np.ndarray | None = None
    epsilon: float = 0.0


def _cases() -> list[Case]:
    rng = np.random.default_rng(20211206)
    normal = rng.normal(size=(5, 37))
    with_neg_inf = rng.normal(size=(4, 50))
    with_neg_inf[0, ::3] = -np.inf
    with_neg_inf[1, :] = -np.inf  # no valid entry
    with_neg_inf[2, 1:] = -np.inf  # a single valid entry
    bad = rng.normal(size=(4, 70))
    bad[0, 5] = np.nan
    bad[1, 9] = np.inf
    bad[2, 2] = -np.inf
    masked_nan = rng.normal(size=(3, 40))
    masked_nan[:, 7] = np.nan
    mask_nan = np.ones((1, 40), dtype=bool)
    mask_nan[0, 7] = False
    masked = rng.normal(size=(6, 33))
    mask = rng.random((6, 33)) < 0.6
    mask[3] = False  # a fully masked row
    constants = np.array([0.0, 1e-30, 3.3, -7e4, 1e30, -1e30])[:, None] * np.ones((1, 257))
    return [
        Case("worked example", np.array([[0.4, 1.4, -0.8]])),
        Case("normal rows", normal),
        Case("normal rows, epsilon", normal, epsilon=1e-6),
        Case("normal rows, large epsilon", normal, epsilon=0.5),
        Case("-inf entries and rows", with_neg_inf),
        Case("-inf entries, epsilon", with_neg_inf, epsilon=1e-6),
        Case("NaN and +inf rows", bad),
        Case("NaN and +inf rows, epsilon", bad, epsilon=1e-3),
        Case("masked NaN is ignored", masked_nan, where=mask_nan),
        Case("where mask", masked, where=mask),
        Case("where mask, epsilon", masked, where=mask, epsilon=1e-6),
        Case("where mask broadcast over rows", masked, where=mask[:1]),
        Case("constant rows", constants),
        Case("constant row of one", np.array([[2.5], [-1e30]])),
        Case("constant long row", np.full((2, LONG), 0.1)),
        Case("large fill value", np.array([[1.0, 2.0, -1e9, -1e9, 3.0]])),
        Case("long rows", rng.normal(size=(3, LONG))),
        Case("long rows, masked", rng.normal(size=(2, LONG)), where=rng.random(LONG) < 0.9),
        Case("multi-warp rows", rng.normal(scale=3.0, size=(3, 700))),
        Case("axis 0", rng.normal(size=(40, 3)), axis=0),
        Case("middle axis", rng.normal(size=(2, 45, 3)), axis=1),
        Case(
            "middle axis, masked",
            rng.normal(size=(2, 45, 3)),
            axis=1,
            where=rng.random((45, 1)) < 0.7,
        ),
    ]


CASES: tuple[Case, ...] = tuple(_cases())

# (rtol, atol) of kernel output vs the float64 reference, per storage dtype.
TOLERANCES = {
    "float16": (2e-3, 1e-4),
    "bfloat16": (1.6e-2, 1e-3),
    "float32": (2e-5, 1e-7),
    "float64": (1e-12, 1e-15),
}


def stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` as a kernel sees them (rounded to ``dtype``), in float64."""
    return from_storage(to_storage(values, dtype), dtype)


def _shift_rows(x: np.ndarray, axis: int, where: np.ndarray | None) -> np.ndarray:
    """``x`` minus the largest finite valid entry of its row (ev-softmax is shift invariant).

    ``reference.log_ev_softmax`` adds log-weights to the raw scores, which loses
    the log-normalizer next to scores such as 1e30; shifted rows keep it.
    """
    valid = np.isfinite(x) if where is None else np.isfinite(x) & where
    top = np.max(np.where(valid, x, -np.inf), axis=axis, keepdims=True)
    return x - np.where(np.isfinite(top), top, 0.0)


def expected_output(case: Case, dtype: str, mode: str) -> np.ndarray:
    """The float64 reference for a kernel ``mode`` on the case's input stored as ``dtype``."""
    x = stored(case.x, dtype)
    if mode == "support":
        return reference.support(x, case.axis, case.where)
    if mode == "log_probs":
        shifted = _shift_rows(x, case.axis, case.where)
        return reference.log_ev_softmax(shifted, case.axis, case.epsilon, case.where)
    return reference.ev_softmax(x, case.axis, case.epsilon, case.where)
