"""Peak memory of the fast paths: at most one output-sized buffer beyond input and output.

Each measurement runs in a fresh Python process (``evsoftmax._bench._memory``,
which the benchmark's ``memory`` group shares): NumPy's allocations through
``tracemalloc``, torch's through the peak resident set size.
"""

from __future__ import annotations

import pytest

from evsoftmax._bench._memory import MEMORY_TARGET, numpy_peak_ratios, torch_peak_ratio

from .cpu_kernels import require_cpu_kernels

# The output itself plus at most one more buffer of its size (DESIGN section 6).
LIMIT = MEMORY_TARGET
_NUMPY_CASES = ("axis=0", "axis=0, where", "log, where broadcast", "float32 transposed")


@pytest.fixture(autouse=True)
def _kernels():
    require_cpu_kernels()


def test_numpy_peak_memory_is_at_most_one_extra_output():
    ratios = numpy_peak_ratios(_NUMPY_CASES, (512, 1024))
    assert set(ratios) == set(_NUMPY_CASES)
    for name, ratio in ratios.items():
        assert ratio <= LIMIT, (name, ratio)


@pytest.mark.parametrize(
    ("dtype", "dim", "masked"),
    [("float32", 0, False), ("float32", 1, True), ("float16", 1, False), ("bfloat16", 0, True)],
)
def test_torch_peak_memory_is_at_most_one_extra_output(dtype, dim, masked):
    pytest.importorskip("torch", reason="the torch measurement needs torch")
    ratio = torch_peak_ratio(dtype, dim, masked, (2048, 4096))
    assert ratio <= LIMIT, ratio
