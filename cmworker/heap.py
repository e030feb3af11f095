"""What glibc's allocator does with big buffers once they are freed: the parent gives them back, a worker
keeps them while it is busy.

glibc serves an allocation above its mmap threshold with a mapping of its own, unmapped when freed;
below it, from a heap that is trimmed only past a threshold of its own. Both thresholds move with the
sizes freed, so what a big job costs depends on the jobs before it.

- The parent (``return_big_buffers``) must stay small whatever passes through it: its RSS had stayed up
  to ~115 MB above its start after three 50 MB jobs. Fixed thresholds of 1 MiB make every big buffer a
  mapping of its own, returned when freed.
- A worker (``keep_big_buffers``) is where a big job's JSON is parsed and encoded. Given back after each
  job, its buffers are faulted in again, page by page, by the next: a 20 MB result took 54 ms to encode
  in a worker against 37 ms with the heap kept, and the whole job ~113 against ~90 ms. A worker keeps up
  to ``KEEP`` of freed heap and gives it back when it has had no job for ``IDLE_TRIM`` seconds. Only a
  pool whose jobs have no memory policy keeps it (``Run.keep_heap``): a job's memory must not count what
  earlier jobs left, and the parent's sampler could see it before the worker gave it back. A job with a
  policy that meets a kept heap all the same (a reload in ``cmworker dev``) starts with it given back
  (``trim``).

A no-op elsewhere than glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger("cmworker.poller")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
BIG = 1 << 20           # the parent: every buffer this big or bigger is returned when freed
KEEP = 128 << 20        # a worker: freed heap kept for the next job (a 20 MB echo frees ~80 MB)
KEEP_MMAP = 32 << 20    # a worker: buffers below this come from the heap (glibc's largest threshold)
IDLE_TRIM = 5.0         # seconds without a job after which a worker gives its kept heap back (a steady
                        # stream of one big job per worker every few seconds keeps it warm)

_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc


def _thresholds(mmap: int, trim: int) -> bool:
    libc = _c()
    return bool(libc) and bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))


def return_big_buffers() -> bool:
    """The parent's policy: fix glibc's thresholds at ``BIG``; True when they were set."""
    done = _thresholds(BIG, 2 * BIG)
    if not done:
        log.debug("could not fix the heap's thresholds: big jobs may leave the parent's memory high")
    return done


def keep_big_buffers() -> bool:
    """A worker's policy: keep up to ``KEEP`` of freed heap; True when set."""
    return _thresholds(KEEP_MMAP, KEEP)


def available() -> bool:
    """Whether this is glibc's allocator, whose thresholds these functions set."""
    return bool(_c())


def trim() -> None:
    """Give the freed heap back to the system now."""
    libc = _c()
    if libc:
        libc.malloc_trim(0)
