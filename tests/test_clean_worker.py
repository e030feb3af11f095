"""A clean worker for every job: what one job changes in its worker does not reach the next one.

One worker (``workers=1``), so the next job lands on the same worker: restorable state is put back and
the pid stays the same; a job that leaves what cannot be put back (a running thread, another user) gets
its worker replaced after its answer, so the next job runs on a fresh pid.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pool_harness import running_pool

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("what", ["cwd", "env", "umask", "ignore_sigalrm", "block_sigalrm", "stdout", "fd1"])
def test_state_a_job_leaves_is_put_back_before_the_next_job(what: str, tmp_path: Path) -> None:
    with running_pool("leftovers.py", workers=1) as h:
        before = h.payload(h.run("state", {}))
        assert h.payload(h.run("leave", {"what": what, "path": str(tmp_path)})) == what
        after = h.payload(h.run("state", {}))
        assert after == before  # the same pid too: put back in place, not by a new worker


@pytest.mark.parametrize("what", ["ignore_sigalrm", "block_sigalrm", "own_sigalrm_handler"])
def test_the_next_jobs_soft_timeout_fires_after_a_job_disabled_sigalrm(what: str) -> None:
    with running_pool("leftovers.py", workers=1) as h:
        h.run("leave", {"what": what})
        answer = h.run("sleep_for", 60, soft_timeout=0.3, timeout=15)
        assert answer.kind == "timeout"
        assert h.payload(answer)["soft"] is True


def test_an_alarm_a_job_leaves_set_does_not_interrupt_the_next_job() -> None:
    with running_pool("leftovers.py", workers=1) as h:
        h.run("leave", {"what": "alarm"})  # SIGALRM in 1 s
        answer = h.run("sleep_for", 2)
        assert answer.kind == "ok", answer.body


def test_the_next_job_sees_its_childs_exit_status_after_a_job_ignored_sigchld() -> None:
    with running_pool("leftovers.py", workers=1) as h:
        h.run("leave", {"what": "ignore_sigchld"})
        assert h.payload(h.run("child_exit_code")) == 3


def test_a_profiling_timer_a_job_leaves_running_does_not_kill_the_next_job() -> None:
    """Putting SIGPROF's handler back to its default without stopping the timer would kill the worker."""
    with running_pool("leftovers.py", workers=1) as h:
        h.run("leave", {"what": "profiler"})  # SIGPROF every 10 ms of CPU, to a handler put back to default
        answer = h.run("spin_for", 0.5)
        assert answer.kind == "ok", answer.body


def test_a_thread_a_job_leaves_running_does_not_kill_the_next_job() -> None:
    with running_pool("leftovers.py", workers=1) as h:
        first = h.payload(h.run("state", {}))["pid"]
        assert h.run("leave", {"what": "thread", "delay": 1.0}).kind == "ok"
        answer = h.run("sleep_for", 2)  # the thread would kill its worker 1 s from now
        assert answer.kind == "ok", answer.body
        assert answer.pid != first
        after = h.payload(h.run("state", {}))
        assert after["threads"] == 1
        h.wait_full_strength()


def test_a_job_queued_behind_a_job_that_leaves_a_thread_runs_on_a_fresh_worker() -> None:
    with running_pool("leftovers.py", workers=1, prefetch=True) as h:
        first = h.payload(h.run("state", {}))["pid"]
        leaver = h.submit("leave", {"what": "thread", "delay": 1.0})
        sleeper = h.submit("sleep_for", 2)  # sent ahead to the worker that is about to be replaced
        assert h.wait(leaver).kind == "ok"
        answer = h.wait(sleeper)
        assert answer.kind == "ok", answer.body
        assert answer.pid != first


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_a_job_that_changes_user_gets_its_worker_replaced() -> None:
    with running_pool("leftovers.py", workers=1) as h:
        before = h.payload(h.run("state", {}))
        assert h.run("leave", {"what": "uid"}).kind == "ok"
        after = h.run("state", {})
        assert after.kind == "ok"
        assert h.payload(after)["pid"] != before["pid"]
        assert os.stat(f"/proc/{h.payload(after)['pid']}").st_uid == os.geteuid()


def test_a_job_that_removes_its_workers_directory_gets_its_worker_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)  # the pool's processes start here
    with running_pool("leftovers.py", workers=1) as h:
        first = h.payload(h.run("pid"))
        assert h.run("leave", {"what": "rmdir_cwd"}).kind == "ok"
        after = h.run("pid")
        assert after.kind == "ok", after.body
        assert h.payload(after) != first
