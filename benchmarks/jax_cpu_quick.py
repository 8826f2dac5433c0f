"""Quick JAX timing: jitted ev-softmax vs jitted ``jax.nn.softmax``, forward and grad.

Three candidates: ``jax.nn.softmax``; ``ev_softmax`` (the JAX adapter); and
``core``, the array-API core (a plain ``jnp.where`` composition) under ``jit``.

Ratios are measured interleaved in one run (every repetition times each
function once, in turn), so machine-wide slowdowns hit both sides alike; the
reported figure is the median over repetitions of the per-repetition ratio.

    python benchmarks/jax_cpu_quick.py [--reps 30] [--inner 5] [--json out.json]

The gradient is that of the scalar loss ``sum(f(x) * c)`` for a fixed random
``c``. Nothing here asserts a time: this is a report, not a test. For steadier
figures on a busy machine, pin one core and one thread:
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
taskset -c 1 python benchmarks/jax_cpu_quick.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from evsoftmax._bench._allocator import keep_freed_memory

# Before the framework is imported, as `evsoftmax bench` does (see its docs).
keep_freed_memory()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import evsoftmax as evs  # noqa: E402
from evsoftmax import _core  # noqa: E402

SHAPES = ((4096, 1024), (64, 32000), (16, 262144))


def _candidates(c: jax.Array) -> dict[str, dict[str, Callable[[jax.Array], Any]]]:
    def loss(f: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
        return lambda x: jnp.sum(f(x) * c)

    def core(x: jax.Array) -> jax.Array:
        return _core.ev_softmax(x, axis=x.ndim - 1, epsilon=0.0, where=None, xp=jnp)

    normalizers = {"softmax": jax.nn.softmax, "ev_softmax": evs.ev_softmax, "core": core}
    return {
        "forward": {k: jax.jit(f) for k, f in normalizers.items()},
        "grad": {k: jax.jit(jax.grad(loss(f))) for k, f in normalizers.items()},
    }


def _time(fun: Callable[[jax.Array], Any], x: jax.Array, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        out = fun(x)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / inner


def measure(shape: tuple[int, int], reps: int, inner: int) -> dict[str, Any]:
    """Median times and median interleaved ratios (ev_softmax / softmax) for one shape."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    c = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    result: dict[str, Any] = {"shape": list(shape)}
    for mode, funs in _candidates(c).items():
        for fun in funs.values():
            jax.block_until_ready(fun(x))  # compile and warm up
        ratios: dict[str, list[float]] = {k: [] for k in funs if k != "softmax"}
        times: dict[str, list[float]] = {k: [] for k in funs}
        for _ in range(reps):
            rep = {k: _time(f, x, inner) for k, f in funs.items()}
            for k, t in rep.items():
                times[k].append(t)
            for k in ratios:
                ratios[k].append(rep[k] / rep["softmax"])
        result[mode] = {f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()}
        for k, r in ratios.items():
            result[mode][f"{k}_ratio_median"] = statistics.median(r)
            result[mode][f"{k}_ratio_min"] = min(r)
            result[mode][f"{k}_ratio_max"] = max(r)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    results = []
    for shape in SHAPES:
        r = measure(shape, args.reps, args.inner)
        results.append(r)
        for mode in ("forward", "grad"):
            m = r[mode]
            print(
                f"{shape!s:>14} {mode:>7}: softmax {m['softmax_ms']:8.3f} ms, "
                f"ev_softmax {m['ev_softmax_ms']:8.3f} ms, "
                f"ratio median {m['ev_softmax_ratio_median']:.2f} "
                f"(min {m['ev_softmax_ratio_min']:.2f}, max {m['ev_softmax_ratio_max']:.2f}); "
                f"core ratio median {m['core_ratio_median']:.2f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"jax": jax.__version__, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
