"""Run the evsoftmax benchmark suite: the same code and options as ``evsoftmax bench``.

    python benchmarks/run.py --quick
    python benchmarks/run.py --json benchmarks/results/cpu.json --plot benchmarks/results/cpu.png

See ``benchmarks/README.md`` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

import sys

from evsoftmax._cli_bench import main

if __name__ == "__main__":
    sys.exit(main())
