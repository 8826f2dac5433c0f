"""evsoftmax's sparsemax / entmax15 / entmax_bisect against the ``entmax`` package (torch CPU).

The benchmark suite's ``baselines`` group alone (one timing code: the suite's
interleaved medians): per shape (4096x128, 1024x1024, 64x32000) and map, the
median time of evsoftmax's map divided by the package's, forward and
forward+backward, beside the target (DESIGN section 6: <= 0.33, 3x faster).
The same as ``evsoftmax bench --backends torch --shapes none --sweep-total 0
--cases baselines``; further options are passed on:

    python benchmarks/baselines_vs_entmax.py
    python benchmarks/baselines_vs_entmax.py --repeats 20 --json out.json
"""

from __future__ import annotations

import sys

from evsoftmax._cli_bench import main

BASELINES = (
    "--backends",
    "torch",
    "--shapes",
    "none",
    "--sweep-total",
    "0",
    "--cases",
    "baselines",
)

if __name__ == "__main__":
    sys.exit(main([*BASELINES, *sys.argv[1:]]))
