"""What a job used and what it may see of its limits, measured in the worker itself (worker side).

Peak memory for every job, cheaply: Linux keeps a process's RSS high-water mark (``VmHWM``) and resets
it to the current RSS when ``5`` is written to ``/proc/self/clear_refs``. The worker does that as a job
starts (one ``write``, ~1 us) and reads it back once it is over (``getrusage``, ~1 us), so every
answer carries the worker's own peak RSS during the job, exact to the page, without the parent
sampling anything. The processes the job started are covered the same way, free: the kernel keeps the
peak RSS of the largest child a process has reaped (``RUSAGE_CHILDREN``), and the worker reaps all of
them (it is their subreaper); when that number grew during the job, a process of the job reached it.
A child smaller than one of an earlier job on the same worker is not seen this way, and children are
counted one at a time, not summed: for a job with a memory limit the parent's sampler adds the totals
of the whole process tree (``enforce.py``). Where ``clear_refs`` cannot be written (some sandboxes)
the worker's mark is its peak since it started, an upper bound.

With a ``max_worker_memory`` the worker also reads its RSS after the job (``/proc/self/statm``): above
it, it says it is unfit for another job (``Retiring``, as for any state it cannot put back) and exits
after its answer; a new worker takes its place. ``RunLimits`` (sent by the parent just before a job's
``Run``) brings the job's hard timeout, for ``cmworker.remaining()``, and its soft memory limit and
``max_worker_memory``; the parent sends ``SOFT_MEMORY_SIGNAL`` when the job's process tree passes that
limit, and the handler raises ``MemoryLimitExceeded`` in the job, as SIGALRM raises ``JobTimeout``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Callable
from types import FrameType

from cmworker import heap
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


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _own_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
        self._statm = _open("/proc/self/statm", os.O_RDONLY)
        self._start_peak = 0
        self._pending: RunLimits | None = None
        self._children_peak = 0
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
        if limits is not None and (limits.memory_limit or limits.soft_memory_limit or limits.max_worker_memory):
            heap.trim()  # what earlier jobs left in the heap is not this job's to count against its limits
        if self._clear_refs is not None:
            try:
                os.write(self._clear_refs, b"5")
            except OSError:  # not allowed here: the mark stays the worker's lifetime peak
                os.close(self._clear_refs)
                self._clear_refs = None
        self._start_peak = _own_peak()

    def end(self, seq: int) -> Usage:
        """The job is over (and cleaned up): what it used."""
        deadlines.end()
        self.soft_memory_limit = 0
        if self.max_worker_memory:
            heap.trim()  # the worker's size after the job, not with the heap it keeps for the next
        # The largest process the worker ever reaped (the job's, and their descendants, whoever reaped
        # them): when it grew during this job, a process of this job reached it.
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        child_peak = children if children > self._children_peak else 0
        self._children_peak = max(self._children_peak, children)
        # getrusage's ru_maxrss is the mark, or a higher peak the kernel kept for the process (on some
        # kernels, of a thread that exited). Above where it stood at the start, it is the job's peak. Else,
        # if the worker's RSS now is well below it, it may be that older peak: then VmHWM in
        # /proc/self/status says (~15 us cold, against ~1 us for getrusage, so only then).
        own = _own_peak()
        rss = self._resident() if own <= self._start_peak or self.max_worker_memory else 0
        if own <= self._start_peak and own > rss + 2**20 and self._status is not None:
            with contextlib.suppress(OSError):
                own = _kib_after(os.pread(self._status, 8192, 0), b"VmHWM:")
        return Usage(seq, max(own, child_peak), rss if self.max_worker_memory else 0)

    def _resident(self) -> int:
        if self._statm is None:
            return 0
        try:
            return int(os.pread(self._statm, 128, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return 0

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
