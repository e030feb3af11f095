"""The heap of a worker between jobs (``cmworker.heap``): kept for the next job while jobs keep coming,
given back once the worker is idle, never counted against a job's memory limit, and kept only by pools
whose jobs have no memory policy."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

from cmworker import heap
from cmworker.config import load_config
from cmworker.replica.poller import Poller
from cmworker.replica.service import Service, discover
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS, WAIT, running_pool

MB = 10**6
pytestmark = pytest.mark.skipif(not heap.available(), reason="glibc's allocator only")


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def settle(pid: int, below: int, timeout: float = WAIT) -> int:
    """The worker's RSS once it is below ``below`` (or what it is at ``timeout``)."""
    deadline = time.monotonic() + timeout
    while (now := rss(pid)) >= below and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_a_worker_keeps_what_a_big_job_freed_while_busy_and_gives_it_back_once_idle() -> None:
    with running_pool("heap_app.py", workers=1) as pool:
        pool.pool.keep_heap = True
        assert pool.wait(pool.submit("blob", {"mb": 8})).kind == "ok"  # every job after this keeps
        [worker] = pool.pool.worker_pids()
        base = rss(worker)
        assert pool.wait(pool.submit("blob", {"mb": 80})).kind == "ok"
        kept = rss(worker)
        assert kept > base + 50 * MB, (base, kept)  # kept for the next job...
        after = settle(worker, below=base + 20 * MB)
        assert after < base + 20 * MB, (base, kept, after)  # ...and given back once idle (heap.IDLE_TRIM)


def test_a_job_with_a_memory_limit_is_not_charged_for_what_an_earlier_job_left() -> None:
    # 80 MB kept from the first job plus 150 MB of its own would pass 200 MiB: the kept heap is given back
    # before a job with a memory policy starts.
    with running_pool("heap_app.py", workers=1) as pool:
        pool.pool.keep_heap = True
        assert pool.wait(pool.submit("blob", {"mb": 8})).kind == "ok"
        assert pool.wait(pool.submit("blob", {"mb": 80})).kind == "ok"
        answer = pool.wait(pool.submit("bounded", {"mb": 150}, memory_limit=200 * 2**20))
        assert answer.kind == "ok", answer


@pytest.mark.parametrize(("app", "keeps"), [("heap_app.py", False), ("typed_app.py", True)])
def test_only_a_pool_whose_functions_have_no_memory_policy_keeps_the_heap(app: str, keeps: bool) -> None:
    flags = {"app": os.path.join(APPS, app), "workers": 1, "logging.stats_interval": "none", "worker_nice": 0}
    with EmbeddedRuntime(long_poll=0.5) as rt:
        poller = Poller(load_config(flags=flags, environ={}, cwd=APPS), Service(discover(rt.env(0))))
        thread = threading.Thread(target=poller.run, daemon=True)
        thread.start()
        try:
            # Once a job is answered the replica polls, and the policy was settled before it did.
            [answered] = rt.store.wait_finished([rt.submit("blob" if app == "heap_app.py" else "whoami", {"mb": 1})],
                                                WAIT)
            assert answered is not None and answered.answer is not None, answered
            assert poller.pool.keep_heap is keeps
        finally:
            poller.stop()
            thread.join(WAIT)
    assert not thread.is_alive()
