"""Three holes, each shown first with real processes, and the rest of its class.

1. A call sent ahead to a busy worker (prefetch) that dies before starting it runs on the replacement
   worker; its future must be marked running once, not again when it is sent the second time
   (``concurrent.futures`` logs ``CRITICAL Future ... in unexpected state: RUNNING`` then).
2. Every documented attribute of an error (``WorkerDied.signal``/``exit_code``,
   ``MemoryLimitExceeded.rss_bytes``...) exists on every instance, ``None`` where it does not apply,
   however the error was made: raised in the parent, rebuilt from its payload, or unpickled.

Every wait has a deadline (``WAIT``); no test asserts a duration.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

import cmworker
from cmworker import MemoryLimitExceeded, WorkerDied
from cmworker.supervisor import Pool
from tests import executor_jobs as jobs
from tests.pool_harness import WAIT, descendants, wait_gone

MiB = 2**20
pytestmark = pytest.mark.timeout(90)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT}s: {what}"
        time.sleep(0.005)


@pytest.fixture
def futures_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """What ``concurrent.futures`` logs (it complains there, at CRITICAL, about misused futures)."""
    caplog.set_level(logging.DEBUG, logger="concurrent.futures")
    return caplog


def complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "concurrent.futures"]


def sent_ahead(executor: cmworker.Executor, queued: int) -> Callable[[], bool]:
    """True once the pool has sent a call ahead to its one busy worker and ``queued`` calls are left in
    its queue. The executor has no public view of its queue; the pool's ``available`` (idle workers
    minus queued jobs) is one."""
    pool = executor._calls.pool
    assert pool is not None
    return lambda: pool.available == -queued


# -- 1. a call sent ahead to a worker that dies -------------------------------------------------------

DEATHS = {
    "segfault": (WorkerDied, {"signal": "SIGSEGV"}),
    "exit": (WorkerDied, {"exit_code": 7}),
    "allocate": (MemoryLimitExceeded, {"limit_bytes": 128 * MiB}),
}


@pytest.mark.parametrize("how", list(DEATHS))
def test_a_call_sent_ahead_to_a_worker_that_dies_is_marked_running_once(
        tmp_path: Path, futures_log: pytest.LogCaptureFixture, how: str) -> None:
    """It runs on the replacement worker, its future is running from the first send, and nothing is
    marked twice: ``concurrent.futures`` has nothing to complain about."""
    go = tmp_path / "go"
    expected, details = DEATHS[how]
    with cmworker.Executor(1, memory_limit="128MiB") as one:
        dying = one.submit(jobs.die_on_signal, str(go), how)
        ahead = one.submit(jobs.pid)
        wait_until(ahead.running, "the second call was sent ahead to the busy worker")
        go.touch()
        with pytest.raises(expected) as died:
            dying.result(timeout=WAIT)
        assert {name: getattr(died.value, name) for name in details} == details
        assert ahead.result(timeout=WAIT) != died.value.pid  # ran, on the replacement
    assert complaints(futures_log) == []


def test_a_map_chunk_sent_ahead_to_a_worker_that_dies_is_marked_running_once(
        tmp_path: Path, futures_log: pytest.LogCaptureFixture) -> None:
    go = tmp_path / "go"
    with cmworker.Executor(1) as one:
        dying = one.submit(jobs.die_on_signal, str(go), "exit")
        results = one.map(jobs.square, range(5), chunksize=2)  # three chunks: one sent ahead, two queued
        wait_until(sent_ahead(one, queued=2), "the first chunk was sent ahead to the busy worker")
        go.touch()
        with pytest.raises(WorkerDied):
            dying.result(timeout=WAIT)
        assert list(results) == [0, 1, 4, 9, 16]
    assert complaints(futures_log) == []


def test_a_call_sent_again_after_its_worker_died_stays_running_and_cannot_be_cancelled(
        tmp_path: Path, futures_log: pytest.LogCaptureFixture) -> None:
    """Between the death and the second send the call waits in the queue again: it is still running
    (as in ``ProcessPoolExecutor``, a call sent to a worker counts as running), so ``cancel`` refuses."""
    go = tmp_path / "go"
    with cmworker.Executor(1) as one:
        dying = one.submit(jobs.die_on_signal, str(go), "segfault")
        ahead = one.submit(jobs.pid)
        wait_until(ahead.running, "the second call was sent ahead to the busy worker")
        go.touch()
        with pytest.raises(WorkerDied) as died:
            dying.result(timeout=WAIT)
        assert ahead.running() or ahead.done()
        assert not ahead.cancel() and not ahead.cancelled()
        assert ahead.result(timeout=WAIT) != died.value.pid
    assert complaints(futures_log) == []


def test_shutdown_cancelling_the_queue_then_a_death_runs_the_call_sent_ahead_once(
        tmp_path: Path, futures_log: pytest.LogCaptureFixture) -> None:
    """``shutdown(wait=False, cancel_futures=True)``, then the busy worker dies: the queued call was
    cancelled and never runs, the call sent ahead runs on a replacement, then the pool stops."""
    go, marker = tmp_path / "go", tmp_path / "queued-ran"
    before = descendants()
    one = cmworker.Executor(1)
    processes = descendants() - before
    dying = one.submit(jobs.die_on_signal, str(go), "segfault")
    ahead = one.submit(jobs.pid)
    queued = one.submit(jobs.touch, str(marker))
    wait_until(ahead.running, "the second call was sent ahead to the busy worker")
    one.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled() and not ahead.cancelled()
    go.touch()
    with pytest.raises(WorkerDied) as died:
        dying.result(timeout=WAIT)
    assert ahead.result(timeout=WAIT) != died.value.pid
    wait_gone(processes)
    wait_gone(descendants() - before)  # the replacement worker too
    assert not marker.exists()
    assert complaints(futures_log) == []


def _waits_for_the_pool_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked entering the pool's lock in ``Pool.submit``."""
    frame = sys._current_frames().get(thread.ident or -1)
    return (frame is not None and frame.f_code is threading.Condition.__enter__.__code__
            and frame.f_back is not None and frame.f_back.f_code is Pool.submit.__code__)


def test_a_call_sent_ahead_never_overtakes_the_call_its_worker_was_given(
        futures_log: pytest.LogCaptureFixture) -> None:
    """Two threads submit. The first call goes straight to the idle worker from its thread; the second,
    queued, may be sent ahead to that worker by the pool's thread. It must reach the worker after the
    first, or the worker runs it first and each future gets the other's result.

    The first thread is held where it has given the call to the worker and not yet sent it (a profile
    hook on ``Pool._send_run``) until the second call is queued and the pool has had two turns to send
    it ahead, or until the second thread waits for the pool's lock (what keeps the order)."""
    with cmworker.Executor(1) as one:
        pool = one._calls.pool
        assert pool is not None
        second: list[concurrent.futures.Future[str]] = []
        other = threading.Thread(target=lambda: second.append(one.submit(jobs.echo, "second")))

        def queued_or_waiting() -> bool:
            return pool.available == -1 or (_waits_for_the_pool_lock(other) and _waits_for_the_pool_lock(other))

        def hold_the_send(frame: FrameType, event: str, arg: object) -> None:
            if event == "call" and frame.f_code is Pool._send_run.__code__:
                other.start()
                wait_until(queued_or_waiting, "the second call was queued or waits for the pool's lock")
                if pool.available == -1:
                    turns = pool.turns
                    wait_until(lambda: pool.turns >= turns + 2, "the pool took two turns")

        sys.setprofile(hold_the_send)
        try:
            first = one.submit(jobs.echo, "first")
        finally:
            sys.setprofile(None)
        other.join(WAIT)
        assert (first.result(timeout=WAIT), second[0].result(timeout=WAIT)) == ("first", "second")
    assert complaints(futures_log) == []


def test_large_calls_sent_ahead_reach_the_worker_whole() -> None:
    """A call larger than the socket's buffer is partly sent and partly left for the pool's loop to
    flush; a call sent ahead to the same worker meanwhile must queue behind it, not into its middle."""
    with cmworker.Executor(1) as one:
        for size in (8 * MiB, 16 * MiB, 8 * MiB):
            given = one.submit(jobs.length, b"a" * size)
            ahead = one.submit(jobs.length, b"b" * (size + 1))
            assert (given.result(timeout=WAIT), ahead.result(timeout=WAIT)) == (size, size + 1)
