"""Jobs waiting for a worker, idle workers waiting for a job, and the hand-over of one to the other.

Submitting threads and the pool's loop both use it. One condition, ``lock``, guards the queue, the idle
workers, the pool's timer heap and the loop's planned wake-up: a submitting thread that finds a worker
idle and nothing queued hands the job over itself (one thread hop less per job), arming the job's
timers, and wakes the loop only when one of those is due before the loop means to wake anyway.

With ``prefetch`` a busy worker is sent its next job ahead: the job waits in the worker's socket and
starts the moment the worker has answered the current one, so the worker never waits for the parent
between jobs. Its deadline and memory watch start then; if the worker dies or is killed first, the job
goes back to the head of the queue, never having run. A prefetched job can no longer be cancelled.

A caller that must know a worker is free *before* it has a job to give (the replica's poll threads, which
ask the runtime for a job only then) takes a ``Ticket``: a promise of one idle worker, counted against
``available`` until the job it brought is submitted with it or the ticket is returned.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping

from cmworker.pool.jobs import Job
from cmworker.pool.options import PoolOptions
from cmworker.pool.slot import Slot


class Ticket:
    """One idle worker promised to a caller that has no job yet (``Dispatcher.reserve``)."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


class Dispatcher:
    """``pending`` jobs and ``idle`` workers, guarded by ``lock``.

    ``arm(slot, job, now)`` arms a starting job's timers and returns when the first is due;
    ``send(slot, job)`` sends a job to its worker and returns whether the loop must finish the send;
    ``wake()`` wakes the loop.
    """

    def __init__(self, options: PoolOptions, slots: Mapping[int, Slot], lock: threading.Condition,
                 clock: Callable[[], float], *, arm: Callable[[Slot, Job, float], float],
                 send: Callable[[Slot, Job], bool], wake: Callable[[], None]) -> None:
        self.options = options
        self.slots = slots
        self.lock = lock
        self.clock = clock
        self.arm, self.send, self.wake = arm, send, wake
        self.pending: collections.deque[Job] = collections.deque()
        self.idle: list[Slot] = []
        self.planned_wake = float("inf")  # when the loop means to wake next
        self.stopping = False             # the pool takes no more jobs
        self.stalled = False              # no worker will come (the pool is unhealthy)
        self.reserved = 0                 # open tickets: idle workers promised to jobs not yet here

    # -- any thread -----------------------------------------------------------------------------

    def submit(self, job: Job, ticket: Ticket | None = None) -> bool:
        """Hand ``job`` to an idle worker when nothing is queued before it, else queue it; ``ticket``, the
        promise of a worker taken for it, is spent.

        False when the pool no longer takes jobs.
        """
        with self.lock:
            self._close(ticket)
            if self.stopping:
                return False
            if self.idle and not self.pending:
                slot = self.idle.pop()
                wake = self.start(slot, job)
                # Sent before the lock is let go: from then on the loop may send this worker its next
                # job ahead (prefetch), which must not overtake this one in the worker's socket.
                wake = self.send(slot, job) or wake
            else:
                self.pending.append(job)
                wake = True
        if wake:
            self.wake()
        return True

    def cancel(self, job_id: str) -> bool:
        """Withdraw a job that is still queued; True when it was."""
        with self.lock:
            for job in self.pending:
                if job.id == job_id:
                    self.pending.remove(job)
                    self.lock.notify_all()
                    return True
        return False

    @property
    def available(self) -> int:
        """Workers that are idle and not yet promised to a queued job or an open ticket."""
        with self.lock:
            return self._free()

    def _free(self) -> int:
        return len(self.idle) - len(self.pending) - self.reserved

    def reserve(self, timeout: float | None) -> Ticket | None:
        """Wait for an idle worker and promise it to the caller; None after ``timeout``, or at once
        when the pool takes no more jobs."""
        with self.lock:
            self.lock.wait_for(lambda: self._free() > 0 or self.stopping or self.stalled, timeout)
            if self._free() <= 0 or self.stopping:
                return None
            self.reserved += 1
            return Ticket()

    def release(self, ticket: Ticket) -> None:
        """Give back a ticket that brought no job (one spent by ``submit`` is left alone)."""
        with self.lock:
            if self._close(ticket):
                self.lock.notify()

    def _close(self, ticket: Ticket | None) -> bool:
        """Spend ``ticket`` (caller holds the lock); True when it was still open."""
        if ticket is None or not ticket.open:
            return False
        ticket.open = False
        self.reserved -= 1
        return True

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()

    def stall(self) -> None:
        with self.lock:
            self.stalled = True
            self.lock.notify_all()

    # -- the loop -------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Start queued jobs on idle workers (or, with ``prefetch``, send them to busy ones)."""
        while True:
            with self.lock:
                if not self.pending:
                    return
                if self.idle:
                    slot, job = self.idle.pop(), self.pending.popleft()
                    self.start(slot, job)
                else:
                    busy = self._prefetch_slot()
                    if busy is None:
                        return
                    slot, job = busy, self.pending.popleft()
                    slot.next = job
            self.send(slot, job)

    def _prefetch_slot(self) -> Slot | None:
        """A busy worker that may be sent its next job already (caller holds the lock)."""
        if not self.options.prefetch or self.stopping:
            return None
        recycle = self.options.max_jobs_per_worker
        for slot in self.slots.values():
            if slot.state == "busy" and slot.next is None and not slot.answered and not slot.orphan \
                    and not slot.retiring and (not recycle or slot.jobs_done + 2 <= recycle):
                return slot
        return None

    def start(self, slot: Slot, job: Job) -> bool:
        """Mark ``slot`` busy with ``job`` and arm its timers (caller holds the lock).

        Returns whether the loop must be woken because a new timer is due before it plans to wake.
        """
        now = self.clock()
        slot.seq += 1
        slot.state, slot.job, slot.dispatched_at = "busy", job, now
        slot.answered, slot.streamed, slot.killed_for, slot.peak_rss = False, False, None, 0
        slot.output.start_job()
        return self.arm(slot, job, now) < self.planned_wake

    def start_next(self, slot: Slot) -> bool:
        """Start the job prefetched to ``slot``, now that it answered the one before; False if none."""
        with self.lock:
            if slot.next is None:
                return False
            job, slot.next = slot.next, None
            self.start(slot, job)
            return True

    def make_idle(self, slot: Slot) -> None:
        with self.lock:
            slot.state = "idle"
            self.idle.append(slot)
            self.lock.notify()  # one worker more: one waiting ``reserve`` can go on

    def remove_idle(self, slot: Slot) -> bool:
        """Take a worker that died out of the idle ones; True if it was idle."""
        with self.lock:
            if slot in self.idle:
                self.idle.remove(slot)
                return True
            return False

    def requeue_next(self, slot: Slot) -> None:
        """A dead worker's prefetched job goes back to the head of the queue, never having started."""
        with self.lock:
            if slot.next is not None:
                self.pending.appendleft(slot.next)
                slot.next = None
                self.lock.notify_all()

    def take_pending(self) -> list[Job]:
        """Every queued job, taken off the queue."""
        with self.lock:
            jobs = list(self.pending)
            self.pending.clear()
            return jobs
