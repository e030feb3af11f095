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


@dataclass(eq=False)
class Outgoing:
    """One answer waiting for its POST."""

    job_id: str
    body: bytes
    answer: Answer | None  # None for answers made here (bad input, shutting down): nothing more to log
    attempts: int = 0


class Ledger:
    """The jobs this replica holds (accepted from the runtime, not yet answered to it), and the answers
    waiting for their POST.

    Both live under one lock because the poll thread waits for either: a free place to take a job, or an
    answer to post. When every worker is busy the next place frees up only once an answer is posted, so
    the poll thread posts it itself and asks for the next job straight after, on the same connection: no
    thread stands between the POST and the GET. The posters take every other answer, and all of them
    while the poll thread is inside a GET or a POST.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, Held] = {}
        # One lock, three waits, so that a change wakes only the thread it concerns: an answer wakes the
        # poll thread or one poster, not every waiting thread (each needless wake-up costs the free CPU
        # of a hand-off some tens of microseconds, and the GIL a turn).
        self._lock = threading.Lock()
        self._poll = threading.Condition(self._lock)      # the poll thread, in poll_turn
        self._posters = threading.Condition(self._lock)   # the posters, in next_answer
        self._changed = threading.Condition(self._lock)   # wait_below: a job left the ledger
        self._outbox: collections.deque[Outgoing] = collections.deque()
        self._poll_waiting = False
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
            self._poll.notify()
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    @property
    def poll_waiting(self) -> bool:
        """True while the poll thread waits in ``poll_turn`` (the answer that frees a place is then its)."""
        return self._poll_waiting

    def wait_below(self, limit: int, timeout: float) -> bool:
        with self._lock:
            return self._changed.wait_for(lambda: len(self._jobs) < limit, timeout)

    def wait_empty(self, timeout: float) -> bool:
        return self.wait_below(1, timeout)

    # -- the outbox ---------------------------------------------------------------------------

    def queue_answer(self, outgoing: Outgoing) -> None:
        with self._lock:
            self._outbox.append(outgoing)
            self._hand_on()

    def _hand_on(self) -> None:
        """Wake the one thread whose turn the head of the outbox is (caller holds the lock)."""
        if not self._outbox:
            return
        if self._poll_waiting and not self._outbox[0].attempts:
            self._poll.notify()
        else:
            self._posters.notify()

    def poll_turn(self, limit: int, timeout: float) -> Outgoing | bool:
        """The poll thread's wait: True when fewer than ``limit`` jobs are held (it may ask for one), else
        an answer to post when one is waiting (first attempts only; retries are the posters' business),
        False after ``timeout``."""
        def ready() -> bool:
            return len(self._jobs) < limit or bool(self._outbox and not self._outbox[0].attempts)

        with self._lock:
            self._poll_waiting = True
            try:
                self._poll.wait_for(ready, timeout)
                if len(self._jobs) < limit:
                    return True
                if self._outbox and not self._outbox[0].attempts:
                    return self._outbox.popleft()
                return False
            finally:
                self._poll_waiting = False
                self._hand_on()  # what is left is the posters'

    def next_answer(self) -> Outgoing | None:
        """A poster's wait: the next answer the poll thread is not waiting to take; None once closed."""
        def ready() -> bool:
            return self._closed or bool(self._outbox and (not self._poll_waiting or self._outbox[0].attempts))

        with self._lock:
            self._posters.wait_for(ready)
            outgoing = self._outbox.popleft() if self._outbox else None
            self._hand_on()  # more waiting: the next poster's turn, or the poll thread's
            return outgoing

    def close_outbox(self) -> None:
        """Let the posters go once the outbox is empty."""
        with self._lock:
            self._closed = True
            self._posters.notify_all()
