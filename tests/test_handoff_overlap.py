"""The next GET goes out beside the POST of the answer before it: faults that strike while the two overlap
leave every job with exactly one answer, or, when the replica itself dies, on the runtime's list of the
jobs it dropped (the restart notification), never both and never neither.

To hold a POST open, the runtime trickles the head of its reply to it (the answer is recorded first); with
a runtime that does not cap the replica, the GETs beside it bring jobs at once. Real ``cmworker run``
processes, a real runtime on loopback HTTPS.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import cmworker_run, wait_gone

WAIT = 60.0
CONFIG = """
[limits]
timeout = "20s"
kill_grace = "50ms"
"""


@pytest.fixture
def runtime() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime(long_poll=1.0, cap=False) as rt:
        yield rt


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def answered_once(rt: EmbeddedRuntime, job_id: str) -> bytes:
    snap = rt.store.wait_finished([job_id], WAIT)[0]
    assert snap is not None and snap.answer is not None, f"job {job_id} was not answered"
    assert rt.record.accepted(job_id) == 1, rt.record.result_posts(job_id)
    return snap.answer


def start_overlap(rt: EmbeddedRuntime, n: int = 12) -> list[str]:
    """Queue ``n`` jobs of 0.2 s; the replies to the first two answers trickle for ~2 s each."""
    rt.spoil_next("result", "trickle_head", 2, interval=0.1)
    return [rt.submit("neighbour", {"sleep": 0.2, "n": i}) for i in range(n)]


def wait_for_overlap(rt: EmbeddedRuntime, ids: list[str]) -> None:
    """Until an answer is recorded while its POST is still open and later jobs are held beside it."""
    def overlap() -> bool:
        answered = [s for s in rt.record.jobs() if s.answer is not None]
        open_posts = [s for s in answered if len(rt.record.result_posts(s.id)) == 1]
        return bool(open_posts) and len(rt.record.held(0)) > 0 and len(answered) < len(ids)
    until(overlap, "no GET overlapped a POST")


def test_a_worker_crash_while_a_get_and_a_post_overlap(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with cmworker_run(runtime, tmp_path, CONFIG) as proc:
        ids = start_overlap(runtime)
        wait_for_overlap(runtime, ids)
        crash = runtime.submit("segfault")
        for i, job_id in enumerate(ids):
            assert json.loads(answered_once(runtime, job_id)) == {"neighbour": i}
        assert json.loads(answered_once(runtime, crash))["kind"] == "worker_died"
        assert proc.poll() is None


def test_a_runtime_restart_while_a_get_and_a_post_overlap(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with cmworker_run(runtime, tmp_path, CONFIG) as proc:
        ids = start_overlap(runtime)
        wait_for_overlap(runtime, ids)
        runtime.restart()  # the trickling reply and the GETs beside it are cut off
        for i, job_id in enumerate(ids):
            assert json.loads(answered_once(runtime, job_id)) == {"neighbour": i}
        assert proc.poll() is None


def test_sigterm_while_a_get_and_a_post_overlap(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with cmworker_run(runtime, tmp_path, CONFIG) as proc:
        ids = start_overlap(runtime, 30)
        wait_for_overlap(runtime, ids)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    taken = [s for s in runtime.record.jobs() if s.replica is not None]
    assert taken and len(taken) < len(ids)  # some were never taken: the drain stopped the GETs
    for snap in taken:  # each taken job answered once: its own result, or `shutdown`
        answer = json.loads(answered_once(runtime, snap.id))
        assert answer.get("kind") in (None, "shutdown"), answer
    assert runtime.record.held(0) == []


def test_sigterm_while_only_an_answer_is_being_posted_says_no_job_is_running(runtime: EmbeddedRuntime,
                                                                           tmp_path: Path) -> None:
    """A job whose answer is made is not running any more, though it is held until its POST returns."""
    with cmworker_run(runtime, tmp_path, CONFIG) as proc:
        runtime.spoil_next("result", "trickle_head", 1, interval=0.1)
        job = runtime.submit("neighbour", {"sleep": 0, "n": 0})
        answered_once(runtime, job)  # recorded by the runtime; the poster still reads its reply
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    log = (tmp_path / "run.log").read_text()
    assert "stopping: no job is running" in log and "finishing running jobs" not in log, log[-2000:]


def test_a_replica_killed_while_a_get_and_a_post_overlap_is_told_exactly_the_jobs_it_dropped(
        runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with cmworker_run(runtime, tmp_path, CONFIG) as proc:
        ids = start_overlap(runtime, 30)
        wait_for_overlap(runtime, ids)
        tree = {proc.pid, *(child.pid for child in psutil.Process(proc.pid).children(recursive=True))}
        for pid in tree:  # the parent first, then its template and workers: the container dies
            os.kill(pid, signal.SIGKILL)
        proc.wait(WAIT)
        wait_gone(tree)
    time.sleep(0.2)  # a request cut off by the kill is settled by the runtime's handler thread
    dropped = set(runtime.record.held(0))
    assert dropped, "the kill found no job held"
    assert runtime.record.restart_notifications(0) == [[]]  # the first replica's, at its start
    answered = {s.id for s in runtime.record.jobs() if s.answer is not None}
    again = tmp_path / "again"
    again.mkdir()
    with cmworker_run(runtime, again, CONFIG):
        until(lambda: len(runtime.record.restart_notifications(0)) == 2, "no restart notification")
        assert set(runtime.record.restart_notifications(0)[1]) == dropped
        for job_id in ids:  # the rest are served by the new replica, each answered once
            if job_id not in dropped and job_id not in answered:
                answered_once(runtime, job_id)
    for job_id in answered:
        assert runtime.record.accepted(job_id) == 1
