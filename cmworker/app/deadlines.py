"""The deadlines of the job running in this worker, for the job itself to see (worker side).

The parent owns every deadline and enforces it (``cmworker.pool.supervisor``); this module only tells
the job what they are. The worker sets them when a job starts (``begin``): the hard deadline is the
job's ``timeout`` counted from the moment the worker starts the job, which is at or just after the
moment the parent armed its own timer, so what ``remaining()`` reports is never later than the kill.

Three ways to read them, all the same numbers: ``cmworker.remaining()`` (anywhere in the job, an
``Executor`` call too), ``Context.remaining()``, and the context dict's ``deadline``/``softDeadline``
(Unix timestamps, present only when the job has that deadline).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["begin", "context_keys", "end", "remaining"]

# Monotonic deadlines of the job running now (None: no such deadline, or no job).
_hard: float | None = None
_soft: float | None = None


def begin(timeout: float | None, soft_timeout: float | None, start: float | None = None) -> None:
    """A job starts now (or at monotonic ``start``) with these limits (seconds; None or 0: none)."""
    global _hard, _soft
    now = time.monotonic() if start is None else start
    _hard = now + timeout if timeout else None
    _soft = now + soft_timeout if soft_timeout else None


def end() -> None:
    global _hard, _soft
    _hard = _soft = None


def remaining(soft: bool = False) -> float | None:
    """Seconds until the running job's hard deadline (``soft=True``: its soft one), never below 0;
    ``None`` when the job has no such deadline, or outside a job."""
    deadline = _soft if soft else _hard
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def context_keys() -> dict[str, Any]:
    """The job's deadlines as Unix timestamps, for the context dict: only those it has."""
    if _hard is None and _soft is None:
        return {}
    shift = time.time() - time.monotonic()
    keys: dict[str, Any] = {}
    if _hard is not None:
        keys["deadline"] = _hard + shift
    if _soft is not None:
        keys["softDeadline"] = _soft + shift
    return keys
