"""Quick CPU check of the torch eager fast path against ``torch.softmax`` (ratios, one run).

Runs every variant interleaved, in a new random order each round, so that
machine load and cache state hit all of them alike, and reports the median
time of each as a ratio to the softmax baseline of the same kind (forward, or
forward + backward).

    python benchmarks/torch_cpu_quick.py                 # wall clock, default threads
    python benchmarks/torch_cpu_quick.py --cpu-time -t 1  # thread CPU time, one thread
    python benchmarks/torch_cpu_quick.py --json out.json
    python benchmarks/torch_cpu_quick.py --compile        # both sides under torch.compile

``--cpu-time`` (with one thread) counts only the CPU time of the benchmarking
thread, which is steadier than wall clock on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable

from evsoftmax._bench._allocator import keep_freed_memory

# Before the framework is imported, as `evsoftmax bench` does (see its docs).
keep_freed_memory()

import torch  # noqa: E402

import evsoftmax as evs  # noqa: E402
import evsoftmax.torch as evt  # noqa: E402

SHAPES = ((4096, 1024), (64, 32000), (16, 262144))


def _variants(x: torch.Tensor, eps: float) -> dict[str, Callable[[], object]]:
    xg = x.detach().clone().requires_grad_(True)
    grad = torch.randn_like(x)

    def backward(y: torch.Tensor) -> None:
        y.backward(grad)
        xg.grad = None

    return {
        "softmax": lambda: torch.softmax(x, -1),
        "ev_softmax": lambda: evt.ev_softmax(x, -1, eps),
        "evs.ev_softmax": lambda: evs.ev_softmax(x, epsilon=eps),
        "log_softmax": lambda: torch.log_softmax(x, -1),
        "log_ev_softmax": lambda: evt.log_ev_softmax(x, -1, eps),
        "softmax fwd+bwd": lambda: backward(torch.softmax(xg, -1)),
        "ev_softmax fwd+bwd": lambda: backward(evt.ev_softmax(xg, -1, eps)),
        "log_softmax fwd+bwd": lambda: backward(torch.log_softmax(xg, -1)),
        "log_ev_softmax fwd+bwd": lambda: backward(evt.log_ev_softmax(xg, -1, eps)),
    }


def _compiled_variants(x: torch.Tensor, eps: float) -> dict[str, Callable[[], object]]:
    """The same comparisons inside ``torch.compile`` (Inductor), forward and forward+backward."""
    xg = x.detach().clone().requires_grad_(True)
    grad = torch.randn_like(x)
    softmax = torch.compile(lambda v: torch.softmax(v, -1), fullgraph=True)
    ev = torch.compile(lambda v: evt.ev_softmax(v, -1, eps), fullgraph=True)

    def backward(y: torch.Tensor) -> None:
        y.backward(grad)
        xg.grad = None

    return {
        "softmax": lambda: softmax(x),
        "ev_softmax": lambda: ev(x),
        "softmax fwd+bwd": lambda: backward(softmax(xg)),
        "ev_softmax fwd+bwd": lambda: backward(ev(xg)),
    }


def _baseline(name: str) -> str:
    log = "log_" if "log_" in name else ""
    return f"{log}softmax" + (" fwd+bwd" if "fwd+bwd" in name else "")


def measure(
    fns: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` rounds (shuffled order) after a warm-up."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)  # a new order every round: no variant always follows the same one
        for name, fn in order:
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("-n", "--repeats", type=int, default=40)
    parser.add_argument("--cpu-time", action="store_true", help="thread CPU time, not wall")
    parser.add_argument("--epsilon", type=float, nargs="+", default=[0.0, 1e-6])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", default=None)
    parser.add_argument("--compile", action="store_true", help="compare inside torch.compile")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    dtype = getattr(torch, args.dtype)
    results = []
    torch.manual_seed(0)
    for shape in SHAPES:
        x = torch.randn(shape, dtype=dtype)
        for eps in args.epsilon:
            variants = _compiled_variants(x, eps) if args.compile else _variants(x, eps)
            med = measure(variants, args.repeats, clock)
            ratios = {k: v / med[_baseline(k)] for k, v in med.items()}
            results.append({"shape": shape, "epsilon": eps, "median_s": med, "ratio": ratios})
            shown = ", ".join(f"{k} {r:.2f}" for k, r in ratios.items() if k != "softmax")
            print(f"{shape} eps={eps:g} softmax {med['softmax'] * 1e3:.2f} ms | {shown}")
            sys.stdout.flush()
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "clock": "thread_time" if args.cpu_time else "perf_counter",
        "repeats": args.repeats,
        "dtype": args.dtype,
        "compiled": args.compile,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
