"""Instruments: when a process exits, when a pool is back to strength, CPU used, percentiles."""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
import time
from collections.abc import Iterator, Sequence

import psutil

from cmworker.pool.supervisor import Pool
from poolbench.peers import WAIT, BenchError


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class ExitWatcher:
    """Records when each watched process exits, from a thread blocked on their pidfds (no polling).

    A pidfd becomes readable the moment its process terminates, before anyone reaps it: the kernel's own
    "the process is gone", also for processes that are not our children (cmworker's workers are the
    template's). Open it before the process can die.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.exited: dict[int, float] = {}
        self._fds: dict[int, int] = {}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                self._fds[os.pidfd_open(pid)] = pid
        self._cond = threading.Condition()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="exit-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        waiting = dict(self._fds)
        while waiting:
            ready, _, _ = select.select([*waiting, self._stop_r], [], [])
            now = time.monotonic()
            if self._stop_r in ready:
                return
            with self._cond:
                for fd in ready:
                    self.exited[waiting.pop(fd)] = now
                self._cond.notify_all()

    def wait(self, pid: int, timeout: float = WAIT) -> float:
        """When ``pid`` exited (by ``time.monotonic()``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self.exited, timeout):
                raise BenchError(f"process {pid} did not exit within {timeout:g} s")
            return self.exited[pid]

    def __enter__(self) -> ExitWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self._stop_w, b"\0")
        self._thread.join()
        for fd in (*self._fds, self._stop_r, self._stop_w):
            os.close(fd)


def until_full(pool: Pool, pause: float = 0.0) -> float:
    """Poll ``pool.available`` until every worker is idle again; the moment that was first seen.

    With ``pause=0`` the loop only yields (``time.sleep(0)`` releases the GIL each turn), so the pool's
    thread is not starved while the moment is caught within a few microseconds.
    """
    deadline = time.monotonic() + WAIT
    while pool.available < pool.options.workers:
        if time.monotonic() > deadline:
            raise BenchError(f"the pool did not get back to {pool.options.workers} idle workers within {WAIT:g} s")
        time.sleep(pause)
    return time.monotonic()


def until_gone(pool: Pool, pid: int) -> None:
    """Wait until the pool has dropped worker ``pid``: it heard from the template that it was reaped."""
    deadline = time.monotonic() + WAIT
    while pid in pool.worker_pids():
        if time.monotonic() > deadline:
            raise BenchError(f"the pool still lists worker {pid} after {WAIT:g} s")
        time.sleep(0.001)


# Where to pin this process (caller and pool threads) and every descendant (workers, template, managers).
PLACEMENTS = {"one CPU": ({0}, {0}), "split": ({0}, {1})}


def available_placements() -> list[str]:
    cpus = os.sched_getaffinity(0)
    return [name for name, (here, there) in PLACEMENTS.items() if here | there <= cpus]


def _pin(here: set[int], there: set[int]) -> None:
    for thread in psutil.Process().threads():
        os.sched_setaffinity(thread.id, here)
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            for thread in proc.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, there)


@contextlib.contextmanager
def placed(placement: str) -> Iterator[None]:
    """Pin every thread of this process and of its descendants for a while; ``free`` pins nothing."""
    if placement not in PLACEMENTS:
        yield
        return
    everything = os.sched_getaffinity(0)
    _pin(*PLACEMENTS[placement])
    try:
        yield
    finally:
        _pin(everything, everything)


def children_cpu() -> float:
    """User + system CPU seconds used so far by every live descendant of this process."""
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def leftover_processes() -> list[psutil.Process]:
    """Live descendants, but for loky's resource tracker (it lives until this process exits, by design)."""
    left = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(proc.cmdline()):
                left.append(proc)
    return left
