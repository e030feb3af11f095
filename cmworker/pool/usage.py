"""What a job used and what it may see of its limits, measured in the worker itself (worker side).

Peak memory for every job, cheaply: Linux keeps a process's RSS high-water mark (``VmHWM``) and resets
it to the current RSS when ``5`` is written to ``/proc/self/clear_refs``. The worker does that as a job
starts (one ``write``, ~1 us) and reads ``/proc/self/status`` once it is over (~8 us), so every
answer carries the worker's own peak RSS during the job, exact to the page, without the parent
sampling anything. Processes the job started are not in it: the parent's sampler covers them
(``enforce.py``). Where ``clear_refs`` cannot be written (some sandboxes) the mark is the worker's
peak since it started, an upper bound.

The same read gives the worker's RSS after the job: above the job's ``max_worker_memory`` the worker
says it is unfit for another job (``Retiring``, as for any state it cannot put back) and exits after
its answer; a new worker takes its place. ``RunLimits`` (sent by the
parent just before a job's ``Run``) brings the job's hard timeout, for ``cmworker.remaining()``, and its
soft memory limit; the parent sends ``SOFT_MEMORY_SIGNAL`` when the job's process tree passes that
limit, and the handler raises ``MemoryLimitExceeded`` in the job, as SIGALRM raises ``JobTimeout``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from types import FrameType

from cmworker.app import deadlines
from cmworker.errors import MemoryLimitExceeded
from cmworker.pool.messages import Run, RunLimits, Usage
from cmworker.units import describe_size, format_size

SOFT_MEMORY_SIGNAL = signal.SIGRTMIN + 6 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR1


def _open(path: str, flags: int) -> int | None:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError:
        return None


def _kib_after(status: bytes, key: bytes) -> int:
    at = status.find(key)
    if at < 0:
        return 0
    end = status.find(b"kB", at)
    try:
        return int(status[at + len(key):end]) * 1024
    except ValueError:
        return 0


class JobWatch:
    """One per worker: the limits of the job it runs, and its memory."""

    def __init__(self, in_job: Callable[[], bool]) -> None:
        self._in_job = in_job
        self._clear_refs = _open("/proc/self/clear_refs", os.O_WRONLY)
        self._status = _open("/proc/self/status", os.O_RDONLY)
        self._pending: RunLimits | None = None
        self.soft_memory_limit = 0
        self.max_worker_memory = 0
        signal.signal(SOFT_MEMORY_SIGNAL, self._on_soft_memory)

    def expect(self, limits: RunLimits) -> None:
        """The limits of the next job, which come just before its ``Run``."""
        self._pending = limits

    def begin(self, run: Run) -> None:
        limits, self._pending = self._pending, None
        if limits is not None and limits.seq != run.seq:
            limits = None
        deadlines.begin(limits.timeout if limits else None, run.soft_timeout)
        self.soft_memory_limit = limits.soft_memory_limit if limits else 0
        self.max_worker_memory = limits.max_worker_memory if limits else 0
        if self._clear_refs is not None:
            try:
                os.write(self._clear_refs, b"5")
            except OSError:  # not allowed here: the mark stays the worker's lifetime peak
                os.close(self._clear_refs)
                self._clear_refs = None

    def end(self, seq: int) -> Usage:
        """The job is over (and cleaned up): what it used."""
        deadlines.end()
        self.soft_memory_limit = 0
        if self._status is None:
            return Usage(seq)
        status = b""
        with contextlib.suppress(OSError):
            status = os.pread(self._status, 8192, 0)
        return Usage(seq, _kib_after(status, b"VmHWM:"), _kib_after(status, b"VmRSS:"))

    def too_big(self, usage: Usage) -> list[str]:
        """Why this worker must be replaced after the job it just ran, for its memory (none: it need not)."""
        most, self.max_worker_memory = self.max_worker_memory, 0
        if not most or usage.rss <= most:
            return []
        return [f"the job left the worker at {describe_size(usage.rss)} of memory, over max_worker_memory = "
                f"{format_size(most)}"]

    def _on_soft_memory(self, signum: int, frame: FrameType | None) -> None:
        limit = self.soft_memory_limit
        if limit and self._in_job():
            self.soft_memory_limit = 0  # once per job
            raise MemoryLimitExceeded(f"the job's memory passed its soft limit of {format_size(limit)}",
                                      limit_bytes=limit, soft=True)
