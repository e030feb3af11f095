"""A job's limits, parent side: its deadline, its memory, and how it is killed — with its stack first.

``Enforcer.arm`` runs when a job starts and arms its timers; the rest runs on the pool's loop:

    hard timeout ──────┐
    memory over limit ─┴─► dump_then_kill: DUMP_SIGNAL to the worker (it writes every thread's stack to
                           its stderr and dies), SIGTERM (timeout) or SIGSTOP (memory) to the job's other
                           processes, and a timer of ``kill_grace``:
                             worker gone first ─► the timeout/memory answer, with the stack; SIGKILL the
                                                  rest (the worker's socket closing says it is gone)
                             timer first ───────► the same answer with what came of the stack; SIGKILL
    soft memory limit ───► SOFT_MEMORY_SIGNAL to the worker once: MemoryLimitExceeded inside the job

The dump is what lets an answer say where the job was ("ran past its timeout of 30s in solve() at
app.py:42"). It adds at most ``kill_grace`` before the kill: a job that blocks the signal, or is stuck
in the kernel, is killed when the timer fires, and answered without a stack.

Peak memory: the worker reports, with every answer (``Usage``; ``usage.py``), its own peak RSS during
the job and that of the largest process the job started and it reaped; for a job with a memory limit
the sampler adds the totals of its process tree. ``Answer.max_rss`` is the highest of these. Jobs
without a memory limit get no timer for it: a timer per job would wake the loop for every job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from cmworker.errors import JobError, JobTimeout, MemoryLimitExceeded
from cmworker.pool import processes
from cmworker.pool.jobs import Job
from cmworker.pool.messages import Usage
from cmworker.pool.options import PoolOptions
from cmworker.pool.slot import Slot
from cmworker.pool.stack import DUMP_SIGNAL
from cmworker.pool.timers import Timers
from cmworker.pool.usage import SOFT_MEMORY_SIGNAL
from cmworker.units import describe_size, format_duration, format_size

log = logging.getLogger("cmworker.supervisor")

MakeError = Callable[[str, dict[str, Any]], JobError]


class Enforcer:
    """Arms each job's timers and acts on them; ``fail`` answers a job (the pool's ``_fail``)."""

    def __init__(self, options: PoolOptions, timers: Timers, slots: Mapping[int, Slot],
                 fail: Callable[[Slot, JobError], None]) -> None:
        self.options = options
        self._timers = timers
        self._slots = slots
        self._fail = fail

    def arm(self, slot: Slot, job: Job, now: float) -> float:
        """Arm the timers of a job starting now (the caller holds the lock); when the first is due."""
        slot.dumping = None
        slot.soft_memory_sent = False
        lim = job.limits
        earliest = float("inf")
        if lim.timeout:
            timer = self._timers.push(now + lim.timeout, self.on_hard_timeout, (slot, job))
            slot.timers.append(timer)
            earliest = timer.when
        watched = [limit for limit in (lim.memory_limit, lim.soft_memory_limit) if limit]
        if watched:
            slot.oom_count = processes.oom_kill_count()
            timer = self._timers.push(now + processes.next_sample(min(watched)), self.sample_memory, (slot, job))
            slot.timers.append(timer)
            earliest = min(earliest, timer.when)
        return earliest

    # -- timeout and memory ---------------------------------------------------------------------

    def on_hard_timeout(self, slot: Slot, job: Job) -> None:
        if slot.job is not job or slot.answered or slot.dumping is not None:
            return
        timeout = job.limits.timeout or 0.0

        def error(where: str, extra: dict[str, Any]) -> JobError:
            return JobTimeout(f"function {job.function!r} ran past its timeout of {format_duration(timeout)}"
                              f"{where} and was killed", timeout_s=timeout, pid=slot.pid, **extra)

        self.dump_then_kill(slot, job, "timeout", error, signal.SIGTERM)

    def sample_memory(self, slot: Slot, job: Job) -> None:
        if slot.job is not job or slot.answered or slot.pid is None or slot.dumping is not None:
            return
        lim = job.limits
        tree = processes.job_processes(slot.pid)
        used = sum(processes.rss(p) for p in tree)
        slot.peak_rss = max(slot.peak_rss, used)
        limit = lim.memory_limit or 0
        if limit and used > limit:
            def error(where: str, extra: dict[str, Any]) -> JobError:
                return MemoryLimitExceeded(
                    f"function {job.function!r} used {describe_size(used)} of memory, over its limit of "
                    f"{format_size(limit)}{where}, and was killed", limit_bytes=limit, rss_bytes=used,
                    pid=slot.pid, **extra)

            # The job's other processes are stopped, not asked to end: they must not grow meanwhile.
            self.dump_then_kill(slot, job, "memory", error, signal.SIGSTOP, tree)
            return
        soft = lim.soft_memory_limit or 0
        if soft and not slot.soft_memory_sent and used > soft:
            slot.soft_memory_sent = True
            _signal(slot.pid, SOFT_MEMORY_SIGNAL)
        headroom = [x - used for x in (limit, 0 if slot.soft_memory_sent else soft) if x]
        delay = processes.next_sample(min(headroom)) if headroom else processes.next_sample(limit - used)
        slot.timers.append(self._timers.after(delay, self.sample_memory, slot, job))

    def dump_then_kill(self, slot: Slot, job: Job, reason: str, error: MakeError, others: int,
                       tree: list[int] | None = None) -> None:
        """Ask the worker for its stack (it dies after writing it), signal the job's other processes with
        ``others``, and answer once the worker is gone or ``kill_grace`` has passed, whichever is first."""
        slot.killed_for = reason
        slot.state = "killing"
        slot.dumping = error
        grace = self.options.kill_grace
        if slot.pid is None or grace <= 0:
            self._dump_overdue(slot, job)
            return
        tree = processes.job_processes(slot.pid) if tree is None else tree
        # The worker's socket closes when it dies, after the dump is written: answer then, rather than
        # when the template reports the death (several ms later).
        slot.on_closed = lambda closed: self._dump_overdue(closed, job)
        _signal(slot.pid, DUMP_SIGNAL)
        for pid in tree:
            if pid != slot.pid:
                _signal(pid, others)
        slot.timers.append(self._timers.after(grace, self._dump_overdue, slot, job))

    def _dump_overdue(self, slot: Slot, job: Job) -> None:
        """The worker died of its dump (its socket closed) or did not in time: answer with what came of the
        stack, and kill whatever is left of the job."""
        slot.on_closed = None
        if slot.job is not job or slot.answered:
            return
        slot.drain_output()
        self._fail(slot, slot.death_error())
        slot.kill(signal.SIGKILL)

    # -- what the worker reported -----------------------------------------------------------------

    def on_usage(self, slot: Slot, usage: Usage) -> None:
        """The worker's own peak RSS during the job (it judges ``max_worker_memory`` itself: ``usage.py``)."""
        slot.peak_rss = max(slot.peak_rss, usage.peak_rss)

    # -- other kills ------------------------------------------------------------------------------

    def kill_job(self, slot: Slot, reason: str, sig: int, tree: list[int] | None = None) -> None:
        """Kill the job's process group (and stray descendants); escalate to SIGKILL after the grace."""
        slot.killed_for = reason
        slot.state = "killing"
        slot.kill(sig, tree)
        if sig != signal.SIGKILL:
            self._timers.after(self.options.kill_grace, self._escalate, slot)

    def _escalate(self, slot: Slot) -> None:
        if slot.state == "killing":
            slot.kill(signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
