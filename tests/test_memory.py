"""Peak memory of the fast paths: at most one output-sized buffer beyond input and output.

Each measurement runs in a fresh Python process: NumPy's allocations through
``tracemalloc`` (NumPy reports its data buffers to it), torch's through the peak
resident set size (``ru_maxrss``), which only a new process starts from the
current footprint. The inputs are built in place, so that no freed temporary
raises the peak before the call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .cpu_kernels import require_cpu_kernels

# The output itself plus at most one more buffer of its size (DESIGN section 6).
LIMIT = 2.0

_NUMPY = """
import json, tracemalloc
import numpy as np
import evsoftmax

x = np.empty((512, 1024), dtype=np.float64)
x[...] = np.random.default_rng(0).standard_normal(x.shape)
mask = np.random.default_rng(1).random(x.shape) > 0.3
evsoftmax.ev_softmax(x[:4], axis=0)  # warm up
cases = {
    "axis=0": lambda: evsoftmax.ev_softmax(x, axis=0),
    "axis=0, where": lambda: evsoftmax.ev_softmax(x, axis=0, where=mask),
    "log, where broadcast": lambda: evsoftmax.log_ev_softmax(x, where=mask[:1]),
    "float32 transposed": lambda: evsoftmax.ev_softmax(x32.T, axis=1),
}
x32 = x.astype(np.float32)
ratios = {}
tracemalloc.start()
for name, call in cases.items():
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    out = call()
    ratios[name] = (tracemalloc.get_traced_memory()[1] - before) / out.nbytes
    del out
print(json.dumps(ratios))
"""

_TORCH = """
import json, resource, sys
import torch
import evsoftmax.torch as evt

dtype, dim, masked = getattr(torch, sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
shape = (2048, 4096)
x = torch.empty(shape, dtype=dtype)
x.normal_()
mask = None
if masked:
    mask = torch.empty(shape, dtype=torch.bool)
    mask.view(torch.uint8).random_(0, 2)
evt.ev_softmax(x[:8, :8], dim=dim, where=None if mask is None else mask[:8, :8])  # warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = evt.ev_softmax(x, dim=dim, where=mask)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps((after - before) * 1024 / (out.numel() * out.element_size())))
"""


def _run(source: str, *args: str) -> object:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _kernels():
    require_cpu_kernels()


def test_numpy_peak_memory_is_at_most_one_extra_output():
    ratios = _run(_NUMPY)
    assert isinstance(ratios, dict)
    for name, ratio in ratios.items():
        assert ratio <= LIMIT, (name, ratio)


@pytest.mark.parametrize(
    ("dtype", "dim", "masked"),
    [("float32", 0, False), ("float32", 1, True), ("float16", 1, False), ("bfloat16", 0, True)],
)
def test_torch_peak_memory_is_at_most_one_extra_output(dtype, dim, masked):
    pytest.importorskip("torch", reason="the torch measurement needs torch")
    ratio = _run(_TORCH, dtype, str(dim), "1" if masked else "0")
    assert isinstance(ratio, float)
    assert ratio <= LIMIT, ratio
