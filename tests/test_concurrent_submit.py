"""Jobs sent to one worker back to back reach it whole and in order (real workers, prefetch on).

A thread that hands a job straight to an idle worker must have sent it before the loop may send that
worker its next job ahead: otherwise the worker runs them in the other order and each answer goes to
the other's caller. Seen with the Executor (prefetch) and three submitting threads: 24 to 127 of 9,000
results swapped between callers. And a job too big for the socket's buffer waits in the worker's
outbox: the next one must queue behind it, not be written into the middle of it (seen: the worker read
garbage, the calls never returned).
"""

from __future__ import annotations

import threading

import pytest

import cmworker
from tests import executor_jobs as jobs
from tests.pool_harness import WAIT

pytestmark = pytest.mark.timeout(120)

THREADS, CALLS = 3, 1500


def test_each_caller_gets_the_result_of_its_own_call_when_threads_submit_at_once() -> None:
    wrong: list[tuple[object, object]] = []
    with cmworker.Executor(1) as ex:
        def caller(tag: int) -> None:
            for i in range(CALLS):
                sent = (tag, i)
                got = ex.submit(jobs.echo, sent).result(timeout=WAIT)
                if got != sent:
                    wrong.append((sent, got))

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 4)
        assert not any(thread.is_alive() for thread in threads)
    assert wrong == []


def test_a_job_sent_ahead_queues_behind_a_big_one_still_being_sent() -> None:
    with cmworker.Executor(1) as ex:
        for _ in range(3):
            big, next_one = b"a" * (8 * 2**20), b"b" * (3 * 2**20 + 7)
            first, second = ex.submit(jobs.length, big), ex.submit(jobs.length, next_one)
            assert (first.result(timeout=WAIT), second.result(timeout=WAIT)) == (len(big), len(next_one))
