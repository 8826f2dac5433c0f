"""Standalone CuPy benchmark of the fused ev-softmax kernels (needs a CUDA GPU).

For each shape and dtype it times, with CUDA events (``cupyx.profiler.benchmark``,
median of many calls, inputs rotated through more memory than the L2 cache
holds so every call reads device memory):

* ``copy``: a device-to-device copy of the input (the bandwidth ceiling: bytes
  read plus bytes written over time);
* ``ev_softmax`` / ``log_ev_softmax``: the adapter's fused kernels;
* ``fused_softmax``: a softmax kernel written the same way (one block per row,
  the same register cache and reductions), the like-for-like baseline;
* ``cupyx_softmax``: ``cupyx.scipy.special.softmax``;
* backward: ``ev_softmax_jvp`` (the VJP ``p * (g - <p, g>)``, which is also
  softmax's backward) against the same expression composed from CuPy operations.

It also checks the results against the array-API core in float64 (after
poisoning the memory the output is allocated from, so an unwritten element
shows up as NaN) and records the peak extra device memory of a call and the
kernels' register and local-memory use. Run from the repository root::

    PYTHONPATH=src python benchmarks/gpu/cupy_bench.py --json cupy-bench.json

The ratios it prints are the GPU targets of DESIGN §6: forward >= 80 % of the
copy bandwidth and <= 1.1x the native softmax.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from evsoftmax.adapters.cupy import kernels

SHAPES = ((8192, 8192), (64, 128000))
DTYPES = ("float32", "bfloat16", "float16")
ROTATE_BYTES = 512 * 2**20  # several times any L2 cache: each call reads from device memory

SOFTMAX_KERNEL = "fused_softmax"
SOFTMAX_BODY = """\
// Softmax along the last axis, built like ev_softmax_forward: one block per row,
// EV_CACHE entries per thread kept in registers, block-wide reductions.
__device__ ev_acc_t ev_block_max(ev_acc_t value) {
    __shared__ ev_acc_t partial[EV_WARP];
    const int lane = threadIdx.x % EV_WARP, warp = threadIdx.x / EV_WARP;
    for (int offset = EV_WARP / 2; offset > 0; offset /= 2) {
        const ev_acc_t other = __shfl_xor_sync(0xffffffffu, value, offset);
        value = other > value ? other : value;
    }
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    if (warp == 0) {
        value = lane < (int)(blockDim.x / EV_WARP) ? partial[lane] : -EV_INF;
        for (int offset = EV_WARP / 2; offset > 0; offset /= 2) {
            const ev_acc_t other = __shfl_xor_sync(0xffffffffu, value, offset);
            value = other > value ? other : value;
        }
        if (lane == 0) partial[0] = value;
    }
    __syncthreads();
    return partial[0];
}

extern "C" __global__ void __launch_bounds__(EV_MAX_THREADS, 1) fused_softmax(
    const ev_store_t* __restrict__ x, ev_store_t* __restrict__ out, const long long length) {
    const long long start = (long long)blockIdx.x * length;
    const long long nthreads = blockDim.x;
    const long long first_streamed = threadIdx.x + EV_CACHE * nthreads;
    ev_acc_t cached[EV_CACHE];
    ev_acc_t row_max = -EV_INF;
#pragma unroll
    for (int j = 0; j < EV_CACHE; ++j) {
        const long long k = threadIdx.x + j * nthreads;
        cached[j] = k < length ? ev_load(x[start + k]) : -EV_INF;
        row_max = cached[j] > row_max ? cached[j] : row_max;
    }
    for (long long k = first_streamed; k < length; k += nthreads) {
        const ev_acc_t v = ev_load(x[start + k]);
        row_max = v > row_max ? v : row_max;
    }
    row_max = ev_block_max(row_max);
    ev_acc_t total = (ev_acc_t)0;
#pragma unroll
    for (int j = 0; j < EV_CACHE; ++j)
        if (threadIdx.x + j * nthreads < length) total += EV_EXP(cached[j] - row_max);
    for (long long k = first_streamed; k < length; k += nthreads)
        total += EV_EXP(ev_load(x[start + k]) - row_max);
    const ev_acc_t scale = (ev_acc_t)1 / ev_block_sum(total);
#pragma unroll
    for (int j = 0; j < EV_CACHE; ++j) {
        const long long k = threadIdx.x + j * nthreads;
        if (k < length) out[start + k] = ev_store(EV_EXP(cached[j] - row_max) * scale);
    }
    for (long long k = first_streamed; k < length; k += nthreads)
        out[start + k] = ev_store(EV_EXP(ev_load(x[start + k]) - row_max) * scale);
}
"""


def softmax_source(dtype: str) -> str:
    """CUDA source of the like-for-like softmax kernel for ``dtype``."""
    return kernels.common_source(dtype) + "\n" + SOFTMAX_BODY


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``"8192x8192,64x128000"`` -> ``((8192, 8192), (64, 128000))``."""
    shapes = []
    for item in text.split(","):
        rows, _, length = item.strip().lower().partition("x")
        shapes.append((int(rows), int(length)))
    return tuple(shapes)


# ------------------------------------------------------------------ device side


def _cupy() -> Any:
    import cupy

    return cupy


def _device_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class PeakMemory:
    """A CuPy memory hook recording the peak of the bytes allocated while it is active."""

    def __init__(self) -> None:
        cupy = _cupy()

        class Hook(cupy.cuda.MemoryHook):  # type: ignore[misc,name-defined]
            name = "evsoftmax-peak"

            def __init__(self) -> None:
                self.current = 0
                self.peak = 0

            def malloc_postprocess(self, **kw: Any) -> None:
                self.current += kw["mem_size"]
                self.peak = max(self.peak, self.current)

            def free_postprocess(self, **kw: Any) -> None:
                self.current -= kw["mem_size"]

        self.hook = Hook()

    def measure(self, fn: Callable[[], Any]) -> int:
        with self.hook:
            result = fn()
            _cupy().cuda.Device().synchronize()
        del result
        return int(self.hook.peak)


def median_ms(fn: Callable[[], Any], repeat: int, warmup: int) -> float:
    """Median device time of ``fn()`` in milliseconds (CUDA events)."""
    from cupyx.profiler import benchmark

    result = benchmark(fn, n_repeat=repeat, n_warmup=warmup)
    return float(np.median(result.gpu_times) * 1e3)


def _rotating(arrays: list[Any]) -> Callable[[], Any]:
    """A function returning the next array of ``arrays`` on each call."""
    state = {"i": -1}

    def next_array() -> Any:
        state["i"] = (state["i"] + 1) % len(arrays)
        return arrays[state["i"]]

    return next_array


def _poisoned_call(fn: Callable[[], Any], shape: tuple[int, int], dtype: Any) -> Any:
    """Call ``fn`` after leaving a NaN-filled block of the output's size in CuPy's pool."""
    cupy = _cupy()
    cupy.get_default_memory_pool().free_all_blocks()
    poison = cupy.full(shape, np.nan, dtype=dtype)
    del poison
    return fn()


def _relative_error(out: Any, expected: Any) -> float:
    cupy = _cupy()
    diff = out.astype(cupy.float64) - expected
    finite = cupy.isfinite(expected)
    if not bool(cupy.array_equal(cupy.isfinite(out), finite)):
        return math.inf
    return float(cupy.linalg.norm(diff[finite]) / cupy.linalg.norm(expected[finite]))


def _kernel_attributes(kernel: Any) -> dict[str, Any]:
    attrs = ("num_regs", "local_size_bytes", "shared_size_bytes", "max_threads_per_block")
    try:
        return {name: int(getattr(kernel, name)) for name in attrs}
    except Exception as exc:  # attributes need the compiled kernel
        return {"error": f"{type(exc).__name__}: {exc}"}


def bench_case(shape: tuple[int, int], dtype_name: str, repeat: int, warmup: int) -> dict[str, Any]:
    """Every timing, ratio and check for one shape and dtype."""
    cupy = _cupy()
    import array_api_compat

    from evsoftmax import _core
    from evsoftmax.adapters.cupy import adapter

    xp = array_api_compat.array_namespace(cupy.empty(1))
    dtype = _device_dtype(dtype_name)
    nbytes = math.prod(shape) * dtype.itemsize
    n_inputs = max(1, math.ceil(ROTATE_BYTES / nbytes))
    rng = cupy.random.default_rng(0)
    inputs = [rng.standard_normal(shape, dtype=cupy.float32).astype(dtype) for _ in range(n_inputs)]
    cotangent = rng.standard_normal(shape, dtype=cupy.float32).astype(dtype)
    out = cupy.empty(shape, dtype=dtype)
    x = _rotating(inputs)
    softmax_kernel = cupy.RawKernel(softmax_source(dtype_name), SOFTMAX_KERNEL)
    threads = kernels.block_threads(shape[1])

    def fused_softmax() -> Any:
        result = cupy.empty(shape, dtype=dtype)
        softmax_kernel((shape[0],), (threads,), (x(), result, np.int64(shape[1])))
        return result

    def ev(mode: str) -> Callable[[], Any]:
        fn = getattr(adapter, mode)
        return lambda: fn(x(), axis=1, epsilon=0.0, where=None, xp=xp)

    probs = [ev("ev_softmax")() for _ in range(n_inputs)]
    p = _rotating(probs)
    methods: dict[str, Callable[[], Any]] = {
        "copy": lambda: cupy.copyto(out, x()),
        "ev_softmax": ev("ev_softmax"),
        "log_ev_softmax": ev("log_ev_softmax"),
        "fused_softmax": fused_softmax,
        "ev_softmax_jvp": lambda: adapter.ev_softmax_jvp(p(), cotangent, axis=1, xp=xp),
        "composed_jvp": lambda: (q := p()) * (cotangent - (q * cotangent).sum(1, keepdims=True)),
    }
    try:
        from cupyx.scipy.special import softmax as cupyx_softmax

        cupyx_softmax(inputs[0], axis=1)
        methods["cupyx_softmax"] = lambda: cupyx_softmax(x(), axis=1)
    except Exception as exc:
        print(f"  cupyx softmax unavailable for {dtype_name}: {exc}", file=sys.stderr)

    times = {name: median_ms(fn, repeat, warmup) for name, fn in methods.items()}
    copy_gbps = 2 * nbytes / times["copy"] / 1e6
    row: dict[str, Any] = {
        "shape": list(shape),
        "dtype": dtype_name,
        "bytes": nbytes,
        "inputs_rotated": n_inputs,
        "median_ms": times,
        "copy_GBps": copy_gbps,
    }
    for name in ("ev_softmax", "log_ev_softmax", "fused_softmax", "cupyx_softmax"):
        if name in times:
            row[f"{name}_fraction_of_copy_bandwidth"] = 2 * nbytes / times[name] / 1e6 / copy_gbps
    row["ev_softmax_vs_fused_softmax"] = times["ev_softmax"] / times["fused_softmax"]
    if "cupyx_softmax" in times:
        row["ev_softmax_vs_cupyx_softmax"] = times["ev_softmax"] / times["cupyx_softmax"]
    # The backward reads two arrays and writes one.
    row["jvp_fraction_of_copy_bandwidth"] = 3 * nbytes / times["ev_softmax_jvp"] / 1e6 / copy_gbps
    row["jvp_vs_composed"] = times["ev_softmax_jvp"] / times["composed_jvp"]

    first = inputs[0]
    got = _poisoned_call(
        lambda: adapter.ev_softmax(first, axis=1, epsilon=0.0, where=None, xp=xp), shape, dtype
    )
    expected = _core.ev_softmax(first.astype(cupy.float64), axis=1, epsilon=0.0, where=None, xp=xp)
    row["relative_error_vs_float64_core"] = _relative_error(got, expected)
    tangent = _poisoned_call(
        lambda: adapter.ev_softmax_jvp(got, cotangent, axis=1, xp=xp), shape, dtype
    )
    expected_jvp = _core.ev_softmax_jvp(
        got.astype(cupy.float64), cotangent.astype(cupy.float64), axis=1, xp=xp
    )
    row["jvp_relative_error_vs_float64_core"] = _relative_error(tangent, expected_jvp)
    peak = PeakMemory().measure(
        lambda: adapter.ev_softmax(first, axis=1, epsilon=0.0, where=None, xp=xp)
    )
    row["peak_allocated_over_output_bytes"] = peak / nbytes
    row["kernels"] = {
        "ev_softmax_forward": _kernel_attributes(
            adapter.forward_kernel(dtype_name, "probs", False)
        ),
        "ev_softmax_jvp": _kernel_attributes(adapter.jvp_kernel(dtype_name)),
        "fused_softmax": _kernel_attributes(softmax_kernel),
        "threads_per_block": threads,
    }
    return row


def environment() -> dict[str, Any]:
    cupy = _cupy()
    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(cupy.cuda.Device().id)
    return {
        "device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "multiprocessors": props["multiProcessorCount"],
        "l2_bytes": props["l2CacheSize"],
        "cupy": cupy.__version__,
        "cuda_runtime": runtime.runtimeGetVersion(),
        "cuda_driver": runtime.driverGetVersion(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'shape':>12} {'dtype':>9} {'copy GB/s':>10} {'ev ms':>8} {'%copy':>6} "
        f"{'vs fused':>8} {'vs cupyx':>8} {'jvp %copy':>9} {'rel err':>8}"
    )
    for r in rows:
        if "error" in r:
            print(f"{'x'.join(map(str, r['shape'])):>12} {r['dtype']:>9}  failed: {r['error']}")
            continue
        cupyx = r.get("ev_softmax_vs_cupyx_softmax", math.nan)
        print(
            f"{'x'.join(map(str, r['shape'])):>12} {r['dtype']:>9} {r['copy_GBps']:10.0f} "
            f"{r['median_ms']['ev_softmax']:8.3f} "
            f"{100 * r['ev_softmax_fraction_of_copy_bandwidth']:5.0f}% "
            f"{r['ev_softmax_vs_fused_softmax']:8.2f} {cupyx:8.2f} "
            f"{100 * r['jvp_fraction_of_copy_bandwidth']:8.0f}% "
            f"{r['relative_error_vs_float64_core']:8.1e}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=parse_shapes, default=SHAPES, help="e.g. 8192x8192")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=100, help="timed calls per method")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)

    rows = []
    for shape in args.shapes:
        for dtype in args.dtypes.split(","):
            print(f"{shape} {dtype} ...", file=sys.stderr, flush=True)
            try:
                rows.append(bench_case(shape, dtype.strip(), args.repeat, args.warmup))
            except Exception as exc:  # one failing case (say, no bfloat16) keeps the others
                rows.append({"shape": list(shape), "dtype": dtype, "error": repr(exc)})
            _cupy().get_default_memory_pool().free_all_blocks()
    doc = {"environment": environment(), "results": rows}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=2)
    print_table(rows)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
