"""Peak resident memory of the attention methods, run as ``python -m`` in a fresh process.

Argument: JSON ``{"cases": [AttentionCase fields...], "seed": int}``. Prints a
JSON list: per (case, method, mode) the peak resident set beyond what the
process held just before the call (inputs made, freed memory handed back to
the OS with ``malloc_trim``), in MiB. The peak is reset before each call by
writing 5 to ``/proc/self/clear_refs`` (Linux), and read from ``VmHWM``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ._memory import peak_rss_growth


def _peak_mib(call: Any) -> float:
    """Peak resident MiB that ``call()`` adds to the process."""
    return peak_rss_growth(call) / 2**20


def main(argv: list[str]) -> None:
    from ._attention import AttentionCase, _inputs, _no_sync, attention_methods, mode_calls

    request = json.loads(argv[0])
    out = []
    for fields in request["cases"]:
        case = AttentionCase(**fields)
        inputs = _inputs(case, "cpu", request["seed"])
        for name, fn in attention_methods(case).items():
            fn(*inputs[:3])  # warm-up: lazily allocated state is not the method's peak
            for mode, call in mode_calls(fn, inputs, _no_sync).items():
                peak = _peak_mib(call)
                out.append({"case": case.label, "method": name, "mode": mode, "peak_mib": peak})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
