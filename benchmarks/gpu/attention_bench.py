"""GPU check of torch ev-attention's CUDA path: correctness, then time and memory vs SDPA flash.

Run on a machine with a CUDA GPU and triton (``run_gpu_checks.sh attention-bench`` does):

    python benchmarks/gpu/attention_bench.py --json gpu-out/attention-bench.json

1. Correctness: the Triton kernels (``adapters/torch/attention_cuda.py``) against
   the blocked torch algorithm (``adapters/torch/attention.py``, the path the CPU
   tests check against the float64 reference) on the same CUDA tensors, forward
   and the gradients of q, k, v: float16/bfloat16/float32, causal or not, a
   boolean key-padding mask, an additive mask, epsilon > 0, L != S. Records the
   largest error relative to the largest reference value, and the support sizes'
   largest difference.
2. Timings: ``ev_attention`` vs ``scaled_dot_product_attention`` restricted to
   the flash backend (``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``), for
   B*H in {8, 32}, L = S in {2048, 8192}, E = 64, float16 and bfloat16, causal
   or not; forward and forward + backward. Each pair is measured interleaved
   (ev, sdpa, ev, sdpa, ...) and the median of the rounds is kept. Peak memory:
   ``torch.cuda.max_memory_allocated`` above what the inputs hold, for one call.
3. Tile sweep: the forward and forward + backward of one large case under each
   ``--blocks`` configuration of the kernels (BLOCK_M x BLOCK_N x warps).

Every case runs on its own: a failure records its error in the JSON and the
script goes on. The JSON is rewritten after every case, so a run cut short by a
time limit still leaves what it measured. Target (DESIGN section 6):
ev_attention on GPU <= 1.5x SDPA (flash) time, O(L + S) memory.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def _events_ms(fn: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict:
    """Median milliseconds per function, the functions alternating within every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_events_ms(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_mib(fn: Callable[[], object]) -> float:
    """MiB allocated at the peak of one call of ``fn`` above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _inputs(bh: int, length: int, keys: int, feats: int, dtype: torch.dtype, grad: bool) -> Any:
    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = ((bh // 8 or 1, min(bh, 8), length, feats), (bh // 8 or 1, min(bh, 8), keys, feats))
    q = torch.randn(shapes[0], device="cuda", dtype=dtype, generator=g)
    k = torch.randn(shapes[1], device="cuda", dtype=dtype, generator=g)
    v = torch.randn(shapes[1], device="cuda", dtype=dtype, generator=g)
    return tuple(x.requires_grad_(grad) for x in (q, k, v))


def correctness_case(dtype: str, causal: bool, mask_kind: str | None, eps: float) -> dict:
    from evsoftmax.adapters.torch import attention as blocked
    from evsoftmax.adapters.torch import attention_cuda as kernels

    dt = getattr(torch, dtype)
    q, k, v = _inputs(16, 700, 900 if not causal else 700, 64, dt, True)
    mask = None
    if mask_kind == "bool":  # key padding: the last keys of the second batch entry
        mask = torch.ones(q.shape[0], 1, 1, k.shape[-2], dtype=torch.bool, device="cuda")
        mask[-1, ..., -150:] = False
    elif mask_kind == "additive":
        g = torch.Generator(device="cuda").manual_seed(1)
        mask = torch.randn(q.shape[-2], k.shape[-2], device="cuda", generator=g)
        mask = mask.masked_fill(mask < -1.0, -math.inf).to(dt)
    scale = 1.0 / math.sqrt(q.shape[-1])
    out, sizes = kernels.attention(q, k, v, mask, causal, scale, eps)
    want, want_sizes = blocked.attention(q, k, v, mask, causal, scale, eps)
    d_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), d_out)
    want_grads = torch.autograd.grad(want, (q, k, v), d_out)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()

    errors = {"out": rel(out, want)}
    errors.update({f"d{n}": rel(a, b) for n, a, b in zip("qkv", grads, want_grads, strict=True)})
    tol = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}[dtype]
    return {
        "relative_max_error": errors,
        "support_size_max_diff": (sizes - want_sizes).abs().max().item(),
        "finite": all(torch.isfinite(t).all().item() for t in (out, *grads)),
        "tolerance": tol,
        "ok": max(errors.values()) <= tol and bool(torch.isfinite(out).all()),
    }


def timing_case(bh: int, length: int, dtype: str, causal: bool, rounds: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import evsoftmax.torch as evt

    dt = getattr(torch, dtype)
    q, k, v = _inputs(bh, length, length, 64, dt, True)
    d_out = torch.randn_like(q)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def ev_fwd() -> object:
        with torch.no_grad():
            return evt.ev_attention(q, k, v, is_causal=causal)

    def sdpa_fwd() -> object:
        with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return sdpa(q, k, v, is_causal=causal)

    def ev_bwd() -> None:
        torch.autograd.grad(evt.ev_attention(q, k, v, is_causal=causal), (q, k, v), d_out)

    def sdpa_bwd() -> None:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.autograd.grad(sdpa(q, k, v, is_causal=causal), (q, k, v), d_out)

    ms = interleaved_ms(
        {"ev fwd": ev_fwd, "sdpa fwd": sdpa_fwd, "ev fwd+bwd": ev_bwd, "sdpa fwd+bwd": sdpa_bwd},
        rounds,
    )
    memory = {
        name: peak_mib(fn)
        for name, fn in (
            ("ev fwd", ev_fwd),
            ("sdpa fwd", sdpa_fwd),
            ("ev fwd+bwd", ev_bwd),
            ("sdpa fwd+bwd", sdpa_bwd),
        )
    }
    return {
        "median_ms": ms,
        "ratio_to_sdpa_flash": {
            "forward": ms["ev fwd"] / ms["sdpa fwd"],
            "forward+backward": ms["ev fwd+bwd"] / ms["sdpa fwd+bwd"],
        },
        "peak_MiB_above_inputs": memory,
        "LxS_matrix_MiB": bh * length * length * 4 / 2**20,
    }


def sweep_case(blocks: str, rounds: int) -> dict:
    from evsoftmax.adapters.torch import attention_cuda as kernels

    block_m, block_n, warps = (int(x) for x in blocks.split("x"))
    saved = dict(kernels.GPU_BLOCKS)
    kernels.GPU_BLOCKS[64] = (block_m, block_n, warps)
    try:
        return timing_case(32, 8192, "float16", False, rounds)
    finally:
        kernels.GPU_BLOCKS.clear()
        kernels.GPU_BLOCKS.update(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(ROOT / "gpu-out" / "attention-bench.json"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--lengths", default="2048,8192")
    parser.add_argument("--bh", default="8,32", help="batch * heads values")
    parser.add_argument("--blocks", default="64x64x4,128x64x8,64x128x4")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to do", file=sys.stderr)
        return 2
    import triton

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "method": f"median of {args.rounds} interleaved rounds of CUDA-event timings after 2 "
        "warm-up calls each; peak memory = max_memory_allocated above the allocation "
        "before one call",
        "correctness": [],
        "timings": [],
        "sweep": [],
    }
    failures = 0

    def record(section: str, params: dict, fn: Callable[[], dict]) -> None:
        nonlocal failures
        start = time.perf_counter()
        try:
            row = {**params, **fn()}
            failures += section == "correctness" and not row["ok"]
        except Exception as exc:  # recorded, and the next case runs
            failures += 1
            row = {
                **params,
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-2000:],
            }
        row["seconds"] = round(time.perf_counter() - start, 2)
        report[section].append(row)
        out.write_text(json.dumps(report, indent=1))
        if "ratio_to_sdpa_flash" in row:
            ratios, peak = row["ratio_to_sdpa_flash"], row["peak_MiB_above_inputs"]
            print(
                f"{section} {params}: ratio_to_sdpa forward {ratios['forward']:.2f}x, "
                f"fwd+bwd {ratios['forward+backward']:.2f}x; peak MiB ev {peak['ev fwd+bwd']:.0f} "
                f"sdpa {peak['sdpa fwd+bwd']:.0f}",
                flush=True,
            )
        else:
            print(section, json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)

    for dtype in ("float16", "bfloat16", "float32"):
        for causal in (False, True):
            for mask_kind, eps in ((None, 0.0), ("bool", 0.0), ("additive", 1e-3)):
                params = {"dtype": dtype, "causal": causal, "mask": mask_kind, "epsilon": eps}
                record(
                    "correctness",
                    params,
                    lambda p=params: correctness_case(
                        p["dtype"], p["causal"], p["mask"], p["epsilon"]
                    ),
                )
    for length in (int(x) for x in args.lengths.split(",")):
        for bh in (int(x) for x in args.bh.split(",")):
            for dtype in ("float16", "bfloat16"):
                for causal in (False, True):
                    params = {
                        "BH": bh,
                        "L": length,
                        "S": length,
                        "E": 64,
                        "dtype": dtype,
                        "causal": causal,
                    }
                    record(
                        "timings",
                        params,
                        lambda p=params: timing_case(
                            p["BH"], p["L"], p["dtype"], p["causal"], args.rounds
                        ),
                    )
                    torch.cuda.empty_cache()
    if not args.skip_sweep:
        for blocks in args.blocks.split(","):
            record(
                "sweep",
                {"blocks": blocks, "BH": 32, "L": 8192, "dtype": "float16"},
                lambda b=blocks: sweep_case(b, args.rounds),
            )
    print(f"wrote {out}; {failures} failed case(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
