"""The work behind scripts/bench_e2e.py's apps, shared so cmworker, the SDK and the bare pool run identical code.

``e2e_cmworker.py`` and ``e2e_sdk.py`` import this module (their directory is on ``sys.path`` when they
are served), and so does the benchmark itself, for the bare ``multiprocessing.Pool`` and to time the
generator on its own. Nothing here imports cmworker or the SDK.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator


def spin(n: int) -> int:
    """Fixed pure-Python CPU work: ``n`` loop iterations (~100 ns each)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def spin_timed(n: int) -> list[float]:
    """``spin(n)``, answered with when it started and ended (``time.monotonic()``, system-wide) and the pid
    that ran it: from these the benchmark sees how long each worker sat idle between two jobs."""
    start = time.monotonic()
    spin(n)
    return [start, time.monotonic(), os.getpid()]


def nap_timed(ms: float) -> list[float]:
    """Sleep ``ms`` milliseconds, as a job that waits on an outside service does, answered like
    ``spin_timed``: [start, end, pid], so the benchmark sees each worker's idle time between two jobs."""
    start = time.monotonic()
    time.sleep(ms / 1e3)
    return [start, time.monotonic(), os.getpid()]


def blob(n: int) -> str:
    """A result of ``n`` characters from a small query (what it costs to build is the same for every client)."""
    return "x" * n


def items(n: int, gap: float = 0.0, stamp: str | None = None) -> Iterator[dict[str, int]]:
    """Yield ``n`` small items, ``gap`` seconds apart; with ``stamp``, write when it started, yielded
    item 0 and finished (``time.monotonic()``, which is system-wide) to that file as JSON, once done.

    The times are kept in memory and written after the last item, so writing them costs the stream nothing
    until its very end.
    """
    start = time.monotonic()
    first = None
    for i in range(n):
        if i == 0:
            first = time.monotonic()
        yield {"i": i}
        if gap:
            time.sleep(gap)
    end = time.monotonic()
    if stamp:
        with open(stamp, "w", encoding="utf-8") as f:
            json.dump({"start": start, "first": first, "end": end}, f)
