"""The jobs a replica holds, from the GET that hands one out to the POST that answers it, and the
answers waiting for that POST.

Every job the poll thread accepts enters the ``Ledger`` and leaves it only when its one answer has been
posted (or the runtime said it no longer knows the job): a job is never held twice.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from cmworker.pool.supervisor import Answer


@dataclass(eq=False)
class Held:
    """One job held here, from the GET that handed it out to the POST of its answer."""

    job_id: str
    function: str
    accepted: float
    stream: queue.SimpleQueue[Any] | None = None
    answered: bool = False  # its answer is made, and only its POST is left


@dataclass(eq=False)
class Outgoing:
    """One answer waiting for its POST."""

    job_id: str
    body: bytes | bytearray
    answer: Answer | None  # None for answers made here (bad input, shutting down): nothing more to log
    attempts: int = 0


class Ledger:
    """The jobs this replica holds (accepted from the runtime, not yet answered to it), and the answers
    waiting for their POST (the outbox), which the posters take in order.

    A job enters when the GET that brought it is read and leaves when its answer is posted; its worker is
    free again as soon as the answer is in the parent, so the ledger also holds the answers on their way.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, Held] = {}
        # One lock, two waits, so that a change wakes only the threads it concerns: an answer wakes one
        # poster, not every waiting thread (each needless wake-up costs the free CPU of a hand-off some
        # tens of microseconds, and the GIL a turn).
        self._lock = threading.Lock()
        self._posters = threading.Condition(self._lock)   # the posters, in next_answer
        self._changed = threading.Condition(self._lock)   # wait_below: a job left the ledger
        self._outbox: collections.deque[Outgoing] = collections.deque()
        self._closed = False
        self.posted = 0

    def accept(self, job_id: str, function: str) -> Held | None:
        """Record a job; ``None`` when it is already held (the runtime handed it out twice)."""
        with self._lock:
            if job_id in self._jobs:
                return None
            held = self._jobs[job_id] = Held(job_id, function, time.monotonic())
        return held

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._jobs

    def get(self, job_id: str) -> Held | None:
        with self._lock:
            return self._jobs.get(job_id)

    def release(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            self.posted += 1
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def running(self) -> int:
        """The jobs held whose answer is not made yet; the others are only being posted."""
        with self._lock:
            return sum(not held.answered for held in self._jobs.values())

    def wait_below(self, limit: int, timeout: float) -> bool:
        with self._lock:
            return self._changed.wait_for(lambda: len(self._jobs) < limit, timeout)

    def wait_empty(self, timeout: float) -> bool:
        return self.wait_below(1, timeout)

    # -- the outbox ---------------------------------------------------------------------------

    def queue_answer(self, outgoing: Outgoing) -> None:
        with self._lock:
            held = self._jobs.get(outgoing.job_id)
            if held is not None:
                held.answered = True
            self._outbox.append(outgoing)
            self._posters.notify()

    def next_answer(self) -> Outgoing | None:
        """A poster's wait: the next answer to post; None once closed and empty."""
        with self._lock:
            self._posters.wait_for(lambda: self._closed or bool(self._outbox))
            outgoing = self._outbox.popleft() if self._outbox else None
            if self._outbox:
                self._posters.notify()  # more waiting: the next poster's turn
            return outgoing

    def close_outbox(self) -> None:
        """Let the posters go once the outbox is empty."""
        with self._lock:
            self._closed = True
            self._posters.notify_all()
