"""ev_attention at L = S = 24576 stays within 1 GiB beyond its inputs (DESIGN §6).

The dense score matrix alone would be 24576² float32 = 2.25 GiB, so the limit
fails any path that forms it. Each backend runs in a fresh subprocess (so the
peak is the call's, not the test session's): NumPy's peak is what
``tracemalloc`` traces during the call (NumPy reports its buffers to it);
torch's is the growth of the peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) over the resident set just before the call. The
output is checked on a few rows against a float64 reference written from the
math (scores of one row, threshold = their mean, softmax over the entries at or
above it), on rows whose scores all lie at least 1e-4 from their mean, so
float32 rounding cannot move an entry across the threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .backends import selected

LENGTH = 24576
FEATURES = 64
LIMIT_BYTES = 1 << 30

# Shared by both children: inputs, and the measured call's output on the chosen rows.
_COMMON = """
import json, sys
import numpy as np
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((1, {n}, {e}), dtype=np.float32) for _ in range(3))
"""

_NUMPY = """
import tracemalloc
import evsoftmax
evsoftmax.ev_attention(q[:, :8], k[:, :8], v[:, :8])  # imports and caches outside the peak
tracemalloc.start()
out = evsoftmax.ev_attention(q, k, v)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
out = np.asarray(out)
"""

_TORCH = """
import ctypes, pathlib
import torch
import evsoftmax.torch as evt
def status(field):
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
evt.ev_attention(tq[:, :8], tk[:, :8], tv[:, :8])  # imports, thread pools, kernel loaded
ctypes.CDLL(None).malloc_trim(0)
pathlib.Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
with torch.no_grad():
    out = evt.ev_attention(tq, tk, tv)
peak = status("VmHWM") - before
out = out.numpy()
"""

_REPORT = """
rows = json.loads(sys.argv[1])
print(json.dumps({"peak": peak, "rows": out[0, rows].astype(float).tolist()}))
"""


def _reference_rows(rows):
    """float64 ev-attention of query ``rows`` from the math, and the smallest tie gap."""
    rng = np.random.default_rng(0)
    q, k, v = (
        rng.standard_normal((1, LENGTH, FEATURES), dtype=np.float32).astype(np.float64)
        for _ in range(3)
    )
    scores = q[0, rows] @ k[0].T / np.sqrt(FEATURES)
    mean = scores.mean(-1, keepdims=True)
    weights = np.where(scores >= mean, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
    probs = weights / weights.sum(-1, keepdims=True)
    return probs @ v[0], np.abs(scores - mean).min(-1)


def _tie_free_rows(count=4, gap=1e-4):
    """The first ``count`` of a fixed spread of rows whose scores keep ``gap`` from the mean."""
    candidates = [0, 1, 4097, 12288, 20000, LENGTH - 2, LENGTH - 1, 777, 9999, 15000]
    _, gaps = _reference_rows(candidates)
    rows = [r for r, g in zip(candidates, gaps, strict=True) if g > gap][:count]
    assert len(rows) >= 2, "no tie-free rows among the candidates"
    return rows


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_long_sequence_stays_within_a_gibibyte(backend):
    if backend not in selected():
        pytest.skip(f"runs in the {backend} session (EVSOFTMAX_TEST_BACKENDS)")
    if backend == "torch":
        pytest.importorskip("torch")
    body = _COMMON.format(n=LENGTH, e=FEATURES) + (_NUMPY if backend == "numpy" else _TORCH)
    rows = _tie_free_rows()
    done = subprocess.run(
        [sys.executable, "-c", body + _REPORT, json.dumps(rows)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peak = result["peak"]
    assert peak < LIMIT_BYTES, f"{backend} peak {peak / 2**20:.0f} MiB beyond the inputs"
    want, _ = _reference_rows(rows)
    np.testing.assert_allclose(np.array(result["rows"]), want, rtol=1e-4, atol=1e-5)
