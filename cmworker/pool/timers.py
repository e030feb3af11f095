"""What wakes the supervisor loop: its timers, and a doorbell for other threads.

Job deadlines, kill escalations, memory samples and respawn backoff are all timers in one heap; the loop
sleeps in ``select`` until the earliest, or until a submitting thread rings the bell. A submitting thread
that starts a job arms its timers itself, so the heap is guarded by a lock: the pool's, which guards its
queue too (a reentrant one, taken again here by a caller that holds it).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

# Once this many cancelled timers wait in the heap, and they are most of it, the heap is rebuilt
# without them.
_REBUILD_AFTER = 64


class Timer:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        """Never fire; and drop the references now, not when ``when`` comes (a job's timeout may be an
        hour away, and its timer holds the job, body included)."""
        self.cancelled = True
        self.callback, self.args = _never, ()


def _never(*args: Any) -> None:
    pass


class Timers:
    """A heap of ``Timer``s by due time, guarded by ``lock``."""

    def __init__(self, lock: threading.Condition, clock: Callable[[], float]) -> None:
        self.lock, self.clock = lock, clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cancelled = 0  # cancelled entries still in the heap

    def after(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        return self.push(self.clock() + delay, callback, args)

    def push(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> Timer:
        timer = Timer(when, callback, args)
        with self.lock:
            heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def cancel(self, timers: Iterable[Timer]) -> None:
        """Cancel; once most of the heap is cancelled entries, rebuild it without them (it would
        otherwise grow by a job's timers until their deadlines pass)."""
        with self.lock:
            for timer in timers:
                if not timer.cancelled:
                    timer.cancel()
                    self._cancelled += 1
            if self._cancelled > _REBUILD_AFTER and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    @property
    def next_when(self) -> float:
        """When the earliest timer is due (``inf`` when there is none)."""
        with self.lock:
            return self._heap[0][0] if self._heap else float("inf")

    def fire_due(self) -> None:
        """Run the callbacks of the timers due now (outside the lock), earliest first."""
        now = self.clock()
        due = []
        with self.lock:
            while self._heap and self._heap[0][0] <= now:
                timer = heapq.heappop(self._heap)[2]
                if timer.cancelled:
                    self._cancelled = max(0, self._cancelled - 1)
                due.append(timer)
        for timer in due:
            if not timer.cancelled:
                timer.callback(*timer.args)

    def pending(self) -> list[Timer]:
        """Every timer still in the heap, cancelled ones that are yet to be dropped included."""
        with self.lock:
            return [entry[2] for entry in self._heap]


class Doorbell:
    """A pipe that the loop's ``select`` watches beside the timers, so another thread can wake it."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self._rung = False

    def ring(self) -> None:
        if not self._rung:
            self._rung = True
            with contextlib.suppress(BlockingIOError, OSError):  # OSError: the pool closed meanwhile
                os.write(self._write_fd, b"\0")

    def answer(self, mask: int) -> None:
        """The loop woke on the bell. Drain first, then clear the flag: a ring in between is never lost,
        because the loop looks at the queue after this."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 4096)
        self._rung = False

    def close(self) -> None:
        for fd in (self.fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
