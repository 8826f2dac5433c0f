"""``evsoftmax bench --suite attention``: ev-attention against SDPA and the dense composition.

Torch on the CPU (or the GPU with ``--device gpu``). Three methods per case,
timed interleaved with :func:`._timing.interleaved` (forward, and forward plus
backward with a fixed cotangent):

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, the baseline;
* ``ev_attention``: :func:`evsoftmax.torch.ev_attention` (blocked, O(L + S));
* ``dense``: ``ev_softmax(q @ kᵀ · scale, where=mask) @ v``, the dense L x S composition.

Peak memory is measured in one fresh subprocess (:mod:`._attention_memory`):
peak resident memory beyond the inputs for each (case, method, mode).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ._memory import run_fresh
from ._timing import TimingPlan, interleaved

__all__ = [
    "CASES",
    "QUICK_CASES",
    "AttentionCase",
    "attention_methods",
    "mode_calls",
    "run_attention",
]

BASELINE = "sdpa"
FORWARD = "forward"
FORWARD_BACKWARD = "forward+backward"


@dataclass(frozen=True)
class AttentionCase:
    """One timed problem: ``(batch·heads, L, E)`` queries against ``S`` keys."""

    heads: int
    length: int
    keys: int
    features: int
    causal: bool

    @property
    def label(self) -> str:
        """``BHxLxSxE`` and the mask, for tables."""
        mask = "causal" if self.causal else "full"
        return f"{self.heads}x{self.length}x{self.keys}x{self.features} {mask}"


# DESIGN §6's target shape, causal and not.
CASES = tuple(AttentionCase(8, 2048, 2048, 64, causal) for causal in (False, True))
# Smoke-test sizes for --quick: they exercise the code, their ratios mean little.
QUICK_CASES = tuple(AttentionCase(2, 128, 128, 16, causal) for causal in (False, True))


def _inputs(case: AttentionCase, device: str, seed: int) -> tuple[Any, ...]:
    """Standard-normal q, k, v and the cotangent, float32, on ``device``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shapes = [(case.heads, n, case.features) for n in (case.length, case.keys, case.keys)]
    shapes.append((case.heads, case.length, case.features))
    return tuple(torch.randn(s, generator=gen).to(device) for s in shapes)


def attention_methods(case: AttentionCase) -> dict[str, Callable[..., Any]]:
    """``f(q, k, v)`` of every method, SDPA first."""
    import torch

    from .. import ev_softmax
    from ..torch import ev_attention

    scale = 1.0 / math.sqrt(case.features)

    def dense(q: Any, k: Any, v: Any) -> Any:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        where = None
        if case.causal:
            ones = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
            where = torch.tril(ones)
        return torch.matmul(ev_softmax(scores, axis=-1, where=where), v)

    def sdpa(q: Any, k: Any, v: Any) -> Any:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=case.causal)

    def ev(q: Any, k: Any, v: Any) -> Any:
        return ev_attention(q, k, v, is_causal=case.causal)

    return {BASELINE: sdpa, "ev_attention": ev, "dense": dense}


def mode_calls(
    fn: Callable[..., Any], inputs: tuple[Any, ...], sync: Callable[[], object]
) -> dict[str, Callable[[], None]]:
    """Zero-argument calls of ``fn`` per mode on ``inputs`` = ``(q, k, v, cotangent)``."""
    import torch

    q, k, v, g = inputs
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def forward() -> None:
        with torch.no_grad():
            fn(q, k, v)
        sync()

    def forward_backward() -> None:
        # Gradients are taken, not accumulated: each call does the same work.
        torch.autograd.grad(fn(*leaves), leaves, g)
        sync()

    return {FORWARD: forward, FORWARD_BACKWARD: forward_backward}


def _no_sync() -> None:
    pass


def _calls(
    case: AttentionCase, device: str, seed: int
) -> dict[tuple[str, str], Callable[[], object]]:
    """Zero-argument synchronised calls per (method, mode)."""
    import torch

    inputs = _inputs(case, device, seed)
    sync = torch.cuda.synchronize if device != "cpu" else _no_sync
    return {
        (name, mode): call
        for name, fn in attention_methods(case).items()
        for mode, call in mode_calls(fn, inputs, sync).items()
    }


def _check(case: AttentionCase, device: str, seed: int) -> dict[str, Any]:
    """Largest difference between ev_attention and the dense composition (a sanity check).

    Both are float32 and may put a score within rounding of its row's mean on
    different sides of it, so a difference of about ``1/S`` is expected.
    """
    q, k, v, _g = _inputs(case, device, seed)
    methods = attention_methods(case)
    a, b = methods["ev_attention"](q, k, v), methods["dense"](q, k, v)
    return {"case": case.label, "max_abs_diff": float((a - b).abs().max())}


def _memory(cases: tuple[AttentionCase, ...], device: str, seed: int) -> list[dict[str, Any]]:
    """Peak memory of every (case, method, mode), measured in a fresh subprocess."""
    if device != "cpu" or not sys.platform.startswith("linux"):
        return []
    request = json.dumps({"cases": [asdict(c) for c in cases], "seed": seed})
    done = run_fresh(["-m", f"{__package__}._attention_memory", request], 600)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return [{"error": f"memory subprocess failed: {tail[0]}"}]
    return list(json.loads(done.stdout))


def run_attention(
    cases: tuple[AttentionCase, ...],
    plan: TimingPlan,
    device: str = "cpu",
    seed: int = 0,
    memory: bool = True,
    on_round: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Time every case and method; the result document's ``attention`` part."""
    import torch

    start = time.perf_counter()
    results, checks = [], []
    for case in cases:
        checks.append(_check(case, device, seed))
        measured = interleaved(_calls(case, device, seed), plan, on_round)
        for (name, mode), m in measured.items():
            baseline = measured[BASELINE, mode]
            results.append(
                {
                    "case": case.label,
                    **asdict(case),
                    "method": name,
                    "mode": mode,
                    "median_s": m.median,
                    "samples_s": m.samples,
                    "calls_per_sample": m.number,
                    "ratio": m.median / baseline.median if baseline.samples else math.nan,
                    "error": m.error,
                }
            )
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "results": results,
        "checks": checks,
        "memory": _memory(cases, device, seed) if memory else [],
        "elapsed_s": time.perf_counter() - start,
    }
