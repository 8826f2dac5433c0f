"""evsoftmax's sparsemax / entmax15 / entmax_bisect against the ``entmax`` package (torch CPU).

Every variant runs interleaved, in a new random order each round, so that
machine load and cache state hit all of them alike; the report gives, per
shape and map, the median time of evsoftmax divided by the package's
(forward, and forward + backward). Target (DESIGN section 6): <= 0.33.

    python benchmarks/baselines_vs_entmax.py                # float32, default threads
    python benchmarks/baselines_vs_entmax.py --rounds 30 -t 1
    python benchmarks/baselines_vs_entmax.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable

import entmax
import torch

import evsoftmax as evs

SHAPES = ((4096, 128), (1024, 1024), (64, 32000))

MAPS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "sparsemax": (lambda x: evs.sparsemax(x), lambda x: entmax.sparsemax(x, dim=-1)),
    "entmax15": (lambda x: evs.entmax15(x), lambda x: entmax.entmax15(x, dim=-1)),
    "entmax_bisect": (
        lambda x: evs.entmax_bisect(x, alpha=1.5),
        lambda x: entmax.entmax_bisect(x, alpha=1.5, dim=-1),
    ),
}


def _variants(x: torch.Tensor) -> dict[tuple[str, str, str], Callable[[], object]]:
    xg = x.detach().clone().requires_grad_(True)
    grad = torch.randn_like(x)

    def both(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def run() -> None:
            fn(xg).backward(grad)
            xg.grad = None

        return run

    out: dict[tuple[str, str, str], Callable[[], object]] = {}
    for name, (ours, theirs) in MAPS.items():
        out[name, "fwd", "evsoftmax"] = lambda f=ours: f(x)
        out[name, "fwd", "entmax"] = lambda f=theirs: f(x)
        out[name, "fwd+bwd", "evsoftmax"] = both(ours)
        out[name, "fwd+bwd", "entmax"] = both(theirs)
    return out


def _measure(variants: dict, rounds: int, min_time: float) -> dict:
    times: dict = {key: [] for key in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(rounds):
        keys = list(variants)
        random.shuffle(keys)
        for key in keys:
            fn, n, start = variants[key], 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < min_time or n == 0:
                fn()
                n += 1
            times[key].append(elapsed / n)
    return {key: statistics.median(t) for key, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--min-time", type=float, default=0.02, help="seconds per sample")
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    report = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}")
    print(f"{'shape':>12} {'map':>14} {'kind':>8} {'evsoftmax':>11} {'entmax':>11} {'ratio':>6}")
    for shape in SHAPES:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
        medians = _measure(_variants(x), args.rounds, args.min_time)
        for name in MAPS:
            for kind in ("fwd", "fwd+bwd"):
                ours, theirs = medians[name, kind, "evsoftmax"], medians[name, kind, "entmax"]
                row = {
                    "shape": shape,
                    "map": name,
                    "kind": kind,
                    "evsoftmax_s": ours,
                    "entmax_s": theirs,
                    "ratio": ours / theirs,
                }
                report.append(row)
                print(
                    f"{shape!s:>12} {name:>14} {kind:>8} {ours * 1e3:9.3f}ms "
                    f"{theirs * 1e3:9.3f}ms {ours / theirs:6.2f}"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
