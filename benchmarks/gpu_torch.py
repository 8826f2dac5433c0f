"""GPU check for the torch CUDA path (Triton kernels): tests, then timings, written as JSON.

Run on a machine with a CUDA GPU, triton and this package's test dependencies:

    python benchmarks/gpu_torch.py                      # tests + timings
    python benchmarks/gpu_torch.py --skip-tests --out benchmarks/results/gpu_torch.json

1. Runs the CUDA tests (``tests/test_torch_cuda.py``) and the Triton interpreter
   tests with pytest; a failure stops the script unless ``--keep-going``.
2. For each shape and dtype, times (median of CUDA-event timings, warm):
   ``torch.softmax`` forward, ev-softmax forward (epsilon 0 and 1e-6), both
   forward + backward, and a device-to-device copy of the same tensor. Reports
   ratios to softmax and the achieved bandwidth (bytes read + written per
   forward) as a fraction of the copy's.

Targets (DESIGN section 6): ev-softmax forward >= 80 % of copy bandwidth and
<= 1.1x torch.softmax.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

SHAPES = ((8192, 8192), (64, 128000))
DTYPES = ("float32", "bfloat16")
ROOT = Path(__file__).resolve().parents[1]


def cuda_time(fn: Callable[[], object], repeats: int = 50, warmup: int = 10) -> float:
    """Median milliseconds of ``fn`` on the current stream, measured with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run_tests(keep_going: bool) -> dict[str, int]:
    results = {}
    for name, env in (
        ("tests/test_torch_cuda.py", {}),
        ("tests/test_torch_triton.py", {"TRITON_INTERPRET": "1"}),
    ):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name]
        done = subprocess.run(command, cwd=ROOT, env={**_environ(), **env}, check=False)
        results[name] = done.returncode
        if done.returncode and not keep_going:
            raise SystemExit(f"{name} failed (exit {done.returncode})")
    return results


def _environ() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT / 'src'}:{env.get('PYTHONPATH', '')}"
    env["EVSOFTMAX_TEST_BACKENDS"] = "torch"
    return env


def measure(shape: tuple[int, int], dtype: torch.dtype) -> dict[str, object]:
    import evsoftmax.torch as evt

    x = torch.randn(shape, device="cuda", dtype=dtype)
    grad = torch.randn_like(x)
    xg = x.clone().requires_grad_(True)
    copy_out = torch.empty_like(x)

    def fwd_bwd(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            f(xg).backward(grad)
            xg.grad = None

        return run

    ms = {
        "copy": cuda_time(lambda: copy_out.copy_(x)),
        "softmax": cuda_time(lambda: torch.softmax(x, -1)),
        "ev_softmax": cuda_time(lambda: evt.ev_softmax(x)),
        "ev_softmax_eps": cuda_time(lambda: evt.ev_softmax(x, epsilon=1e-6)),
        "log_softmax": cuda_time(lambda: torch.log_softmax(x, -1)),
        "log_ev_softmax_eps": cuda_time(lambda: evt.log_ev_softmax(x, epsilon=1e-6)),
        "softmax fwd+bwd": cuda_time(fwd_bwd(lambda v: torch.softmax(v, -1))),
        "ev_softmax fwd+bwd": cuda_time(fwd_bwd(lambda v: evt.ev_softmax(v, epsilon=1e-6))),
    }
    moved = 2 * x.numel() * x.element_size()  # one read + one write
    bandwidth = {k: moved / (v * 1e-3) / 1e9 for k, v in ms.items() if "bwd" not in k}
    return {
        "shape": list(shape),
        "dtype": str(dtype).removeprefix("torch."),
        "median_ms": ms,
        "GB_per_s": bandwidth,
        "fraction_of_copy_bandwidth": {k: v / bandwidth["copy"] for k, v in bandwidth.items()},
        "ratio_to_softmax": {
            "forward": ms["ev_softmax"] / ms["softmax"],
            "forward_eps": ms["ev_softmax_eps"] / ms["softmax"],
            "log_forward_eps": ms["log_ev_softmax_eps"] / ms["log_softmax"],
            "forward+backward": ms["ev_softmax fwd+bwd"] / ms["softmax fwd+bwd"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--keep-going", action="store_true", help="time even if tests fail")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to do", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "src"))
    tests = {} if args.skip_tests else run_tests(args.keep_going)
    results = []
    for shape in SHAPES:
        for name in DTYPES:
            row = measure(shape, getattr(torch, name))
            results.append(row)
            ratios = ", ".join(f"{k} {v:.2f}x" for k, v in row["ratio_to_softmax"].items())  # type: ignore[attr-defined]
            frac = row["fraction_of_copy_bandwidth"]["ev_softmax"]  # type: ignore[index]
            print(f"{shape} {name}: {ratios}; forward at {frac:.0%} of copy bandwidth")
    import triton

    device = torch.cuda.get_device_name()
    report = {
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "tests_exit_codes": tests,
        "method": "median of 50 CUDA-event timings after 10 warm-up calls; bandwidth = "
        "(read + write of the tensor) / time",
        "results": results,
    }
    slug = device.lower().replace(" ", "-")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu_torch_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
