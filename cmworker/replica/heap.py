"""The parent's heap after big jobs: give their buffers back to the system when they are freed.

glibc serves an allocation above its mmap threshold with a mapping of its own, unmapped when freed;
below it, from a heap that is trimmed only past a threshold of its own. Both thresholds grow with the
sizes freed (up to 32 MiB and 64 MiB), so after one 50 MB job a 20 MB body comes from the heap and may
stay there: the parent's RSS had stayed up to ~115 MB above its start after three 50 MB jobs. Fixed
thresholds stop the growth: every buffer of 1 MiB or more is a mapping of its own, returned when freed.
A no-op elsewhere than glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("cmworker.poller")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
BIG = 1 << 20


def return_big_buffers() -> bool:
    """Fix glibc's thresholds at ``BIG``; True when they were set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, BIG)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * BIG))
    if not done:
        log.debug("could not fix the heap's thresholds: big jobs may leave the parent's memory high")
    return done
