"""Keep freed buffers in the process between timed calls (glibc's ``mallopt``).

By default glibc serves allocations above a threshold with fresh ``mmap`` pages
and returns them to the OS on ``free``; it also trims the top of the heap and
grows it in small steps. Every call that allocates a multi-MB output then
page-faults its pages anew, and whether it does depends on the heap's history,
not on the code timed: on the 2-core machine an XLA program's time at
4096x1024 switched between 1.8 ms and 6.5 ms from run to run. The suite
therefore raises these thresholds and turns off mmap-served blocks (a 32 MiB
buffer, float64 at 4096x1024, is at the largest threshold glibc accepts: its
compiled torch forward+backward measured 25 ms with them, 5 ms without, for
ours and the peer alike) before any framework is imported, for every method
and backend alike, and records that it did.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameters and the largest mmap threshold it accepts on 64-bit.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TRIM_THRESHOLD = 2**31 - 1
_TOP_PAD = 256 * 1024 * 1024


def keep_freed_memory() -> str | None:
    """Raise glibc's thresholds and top pad, no mmap-served blocks; what was set, or None.

    Call it before importing the frameworks (their threads' arenas are set up
    then). None on platforms without glibc's ``mallopt`` (nothing is changed).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = {
        "M_MMAP_THRESHOLD": (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX),
        # Buffers of 32 MiB and more (a float64 4096x1024 array) are at that largest
        # threshold and would still be mapped afresh on every call: no mmap chunks.
        "M_MMAP_MAX": (_M_MMAP_MAX, 0),
        "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        "M_TOP_PAD": (_M_TOP_PAD, _TOP_PAD),
    }
    done = [f"{name}={value}" for name, (key, value) in settings.items() if mallopt(key, value)]
    return f"glibc mallopt {', '.join(done)} (freed buffers stay in the process)" if done else None
