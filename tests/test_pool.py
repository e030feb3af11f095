"""The misbehaving-job catalogue, each case run against real forked workers beside a well-behaved job.

Every case asserts the exact answer kind and details, that the neighbour's answer is right, that the
pool is back to full strength, and (through ``running_pool``) that no process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from cmworker.errors import AppLoadError, PoolUnhealthy
from cmworker.limits import JobLimits
from cmworker.pool.jobs import Job
from tests.pool_harness import running_pool, wait_gone

MiB = 2**20
pytestmark = pytest.mark.timeout(60)


@dataclass
class Case:
    function: str
    kind: str
    query: Any = None
    limits: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)   # must appear in the payload as given
    pidfile: bool = False                                   # the job writes a grandchild's pid


CATALOGUE = [
    Case("segfault", "worker_died", details={"signal": "SIGSEGV"}),
    Case("exit3", "worker_died", details={"exit_code": 3}),
    Case("sigkill_self", "worker_died", details={"signal": "SIGKILL"}),
    Case("sys_exit", "exception", details={"type": "SystemExit"}),
    Case("sleep_forever", "timeout", limits={"timeout": 0.3}, details={"timeout_s": 0.3}),
    Case("busy_ignoring_sigterm", "timeout", limits={"timeout": 0.3}, details={"timeout_s": 0.3}),
    Case("sleep_forever", "timeout", limits={"timeout": 5, "soft_timeout": 0.2},
         details={"timeout_s": 0.2, "soft": True}),
    Case("grandchild_sleeps", "timeout", query={"then": "hang"}, limits={"timeout": 0.5}, pidfile=True),
    Case("grandchild_sleeps", "ok", query={"then": "return"}, pidfile=True),
    Case("grandchild_allocates", "memory_limit", query={"bytes": 400 * MiB},
         limits={"memory_limit": 200 * MiB, "timeout": 20}, details={"limit_bytes": 200 * MiB}, pidfile=True),
    Case("allocate_fast", "memory_limit", query={"bytes": 2048 * MiB},
         limits={"memory_limit": 256 * MiB}, details={"limit_bytes": 256 * MiB}),
    Case("allocate_slowly", "memory_limit", query={"chunk": 8 * MiB, "pause": 0.01},
         limits={"memory_limit": 160 * MiB, "timeout": 20}, details={"limit_bytes": 160 * MiB}),
    Case("unencodable", "result_not_serializable"),
    Case("too_large", "result_too_large", query={"size": 5000}, limits={"max_result_size": 1000},
         details={"limit_bytes": 1000}),
    Case("raise_unpicklable", "exception", details={"type": "_Unpicklable"}),
    Case("raise_value_error", "exception", query=42, details={"type": "ValueError"}),
    Case("no_such_function", "unknown_function", details={"function": "no_such_function"}),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: f"{c.function}-{c.kind}")
def test_misbehaving_job_fails_alone(case: Case, tmp_path: Any) -> None:
    with running_pool() as h:
        neighbour = h.submit("neighbour", {"sleep": 0.3, "n": 7})
        query = case.query
        if case.pidfile:
            query = {**query, "pidfile": str(tmp_path / "grandchild.pid")}
        answer = h.run(case.function, query, **case.limits)

        assert answer.kind == case.kind, answer.body
        if case.kind != "ok":
            payload = h.payload(answer)
            assert payload["kind"] == case.kind
            assert payload.get("error") or payload.get("exception")
            for key, value in case.details.items():
                assert payload[key] == value, (key, payload)
            if case.kind == "memory_limit":
                assert payload["rss_bytes"] > payload["limit_bytes"]
        if case.pidfile:
            wait_gone({int((tmp_path / "grandchild.pid").read_text())})

        assert h.payload(h.wait(neighbour)) == {"neighbour": 7}
        h.wait_full_strength()
        assert h.payload(h.run("echo", "after")) == {"echo": "after", "job": "job-2"}


def test_worker_death_answer_carries_its_last_output() -> None:
    with running_pool() as h:
        payload = h.payload(h.run("exit3"))
        assert "about to exit" in payload["output"]
        assert "last words" in payload["output"]
        assert payload["pid"] > 0


def test_timeout_kill_reaches_a_job_that_ignores_sigterm() -> None:
    with running_pool(kill_grace=0.05) as h:
        answer = h.run("busy_ignoring_sigterm", timeout=0.2)
        assert answer.kind == "timeout"
        wait_gone({h.payload(answer)["pid"]})


def test_soft_timeout_lets_the_job_clean_up_and_answer() -> None:
    with running_pool() as h:
        answer = h.run("cleans_up_on_soft_timeout", soft_timeout=0.2, timeout=10)
        assert answer.kind == "ok"
        assert h.payload(answer) == "cleaned up"


def test_exception_answer_has_the_sdk_shape() -> None:
    with running_pool() as h:
        payload = h.payload(h.run("raise_value_error", 3))
        assert payload["exception"].startswith("bad value 3: Traceback (most recent call last)")
        assert "ValueError: bad value 3" in payload["exception"]
        assert payload["type"] == "ValueError"


def test_unknown_function_lists_the_known_ones() -> None:
    with running_pool() as h:
        payload = h.payload(h.run("nope"))
        assert "echo" in payload["known"] and "segfault" in payload["known"]
        assert "'nope'" in payload["error"]


def test_malformed_job_body_is_answered_invalid_input() -> None:
    with running_pool() as h:
        h.pool.submit(Job("bad", "echo", b"{not json", JobLimits()))
        answer = h.wait("bad")
        assert answer.kind == "invalid_input"
        assert "not valid JSON" in h.payload(answer)["error"]


def test_stream_delivers_items_then_a_clean_end() -> None:
    with running_pool() as h:
        job = h.submit("stream", {"n": 5})
        answer = h.wait(job)
        assert answer.kind == "ok" and answer.streamed and answer.body == b""
        assert [json.loads(i) for i in h.items[job]] == [{"i": i} for i in range(5)]


def test_stream_that_fails_midway_ends_with_stream_failed() -> None:
    with running_pool() as h:
        job = h.submit("stream", {"n": 3, "fail": True})
        answer = h.wait(job)
        assert answer.kind == "stream_failed" and answer.streamed
        payload = h.payload(answer)
        assert payload["items_sent"] == 3 and payload["type"] == "RuntimeError"
        assert len(h.items[job]) == 3


def test_workers_are_recycled_after_max_jobs() -> None:
    with running_pool(workers=1, max_jobs_per_worker=2) as h:
        pids = [h.payload(h.run("pid")) for _ in range(6)]
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
        assert len(set(pids)) == 3
        h.wait_full_strength()


def test_sys_exit_does_not_cost_the_worker() -> None:
    with running_pool(workers=1) as h:
        before = h.payload(h.run("pid"))
        assert h.run("sys_exit").kind == "exception"
        assert h.payload(h.run("pid")) == before


def test_idle_worker_killed_from_outside_is_replaced() -> None:
    with running_pool() as h:
        victim = h.pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while victim in h.pool.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        h.wait_full_strength()
        assert victim not in h.pool.worker_pids()
        assert h.run("echo", 1).kind == "ok"


def test_template_death_lets_running_jobs_finish_and_the_pool_recovers() -> None:
    """More cases in test_hostile_worker.py."""
    with running_pool() as h:
        job = h.submit("neighbour", {"sleep": 1.0, "n": 3})
        time.sleep(0.2)
        template = psutil.Process(h.pool.worker_pids()[0]).ppid()
        os.kill(template, signal.SIGKILL)
        answer = h.wait(job)
        assert (answer.kind, h.payload(answer)) == ("ok", {"neighbour": 3})
        h.wait_full_strength()
        assert h.run("echo", 2).kind == "ok"


def test_job_output_is_captured_with_its_job_id() -> None:
    with running_pool() as h:
        job = h.submit("exit3")
        h.wait(job)
        lines = [(o.job_id, o.stream, o.text) for o in h.output]
        assert (job, "stdout", "about to exit") in lines
        assert (job, "stderr", "last words") in lines


@pytest.mark.parametrize("lines", [3, 60_000])  # 60,000 lines fill the parent's 256 KiB read twice over
def test_every_line_a_job_prints_is_accounted_for_before_its_answer(lines: int) -> None:
    with running_pool() as h:
        job = h.submit("print_lines", {"n": lines})
        assert h.wait(job).kind == "ok"
        before = [o for o in h.output[:h.output_before[job]] if o.job_id == job]
        logged = [int(o.text.removeprefix("line ")) for o in before if not o.dropped]
        assert logged[:3] == [0, 1, 2] and logged == sorted(set(logged))  # in order; a flood drops some
        assert len(logged) + sum(o.dropped for o in before) == lines


def test_large_payload_in_and_out() -> None:
    with running_pool() as h:
        big = "y" * (20 * MiB)
        answer = h.run("echo", big)
        assert answer.kind == "ok"
        assert len(answer.body) > 20 * MiB
        assert h.payload(answer)["echo"] == big


def test_every_job_of_a_mixed_batch_is_answered_exactly_once() -> None:
    with running_pool(workers=2) as h:
        mix = [("echo", 1, "ok"), ("exit3", None, "worker_died"), ("raise_value_error", 0, "exception"),
               ("segfault", None, "worker_died"), ("unencodable", None, "result_not_serializable")]
        expected = {}
        for i in range(150):
            function, query, kind = mix[i % len(mix)]
            expected[h.submit(function, query)] = kind
        for job_id, kind in expected.items():
            assert h.wait(job_id).kind == kind
        h.wait_full_strength()


def test_close_with_grace_lets_running_jobs_finish() -> None:
    with running_pool() as h:
        job = h.submit("neighbour", {"sleep": 0.3, "n": 1})
        time.sleep(0.05)
        h.pool.close(grace=10)
        assert h.wait(job).kind == "ok"


def test_close_kills_what_outlives_the_grace_and_answers_shutdown() -> None:
    with running_pool() as h:
        job = h.submit("sleep_forever")
        time.sleep(0.1)
        h.pool.close(grace=0.1)
        answer = h.wait(job)
        assert answer.kind == "shutdown"
        late = h.submit("echo", 1)
        assert h.wait(late).kind == "shutdown"


def test_idle_pool_does_not_spin() -> None:
    with running_pool() as h:
        h.run("echo", 1)
        time.sleep(0.1)
        turns = h.pool.turns
        time.sleep(0.5)
        assert h.pool.turns == turns


def test_app_that_raises_at_import_fails_start_with_the_traceback() -> None:
    with pytest.raises(AppLoadError, match="broken at import time"), running_pool("crash_on_import.py"):
        pass


def test_app_that_segfaults_at_import_fails_start() -> None:
    with pytest.raises(AppLoadError, match="crashed while it was being imported"), \
            running_pool("segfault_on_import.py"):
        pass


def test_workers_dying_at_start_trip_the_crash_loop_breaker() -> None:
    with pytest.raises(PoolUnhealthy, match="died at start-up") as info, running_pool("dies_after_fork.py"):
        pass
    assert "exited with code 7" in str(info.value)


def test_a_queued_job_can_be_cancelled_and_a_running_one_cannot() -> None:
    with running_pool(workers=1) as h:
        running = h.submit("neighbour", {"sleep": 0.3, "n": 1})
        queued = h.submit("echo", "never")
        assert h.pool.cancel(queued)
        assert not h.pool.cancel(running)
        assert h.wait(running).kind == "ok"
        assert h.run("echo", "next").kind == "ok"
        assert queued not in h.answers


def test_closing_while_a_worker_is_being_respawned_leaves_nothing_behind() -> None:
    for _ in range(5):
        with running_pool(workers=1) as h:
            h.pool.submit(Job("crash", "exit3", b"{}", JobLimits()))
            h.wait("crash")
            # close() now races the respawn of the worker that just died
        # running_pool asserts that no process outlived the pool


def test_invalid_utf8_and_a_partial_last_line_of_a_dying_worker_are_kept() -> None:
    with running_pool() as h:
        job = h.submit("raw_bytes_then_die")
        payload = h.payload(h.wait(job))
        assert payload["exit_code"] == 5
        assert "bad bytes \ufffd\ufffd here" in payload["output"]
        assert payload["output"].endswith("no newline at the end")
        texts = [(o.stream, o.text) for o in h.output if o.job_id == job]
        assert ("stdout", "bad bytes \ufffd\ufffd here") in texts
        assert ("stderr", "no newline at the end") in texts


# -- prefetch (the executor's mode): a busy worker is sent its next job ahead ---------------------------


def test_a_prefetched_job_of_a_worker_that_dies_runs_on_its_replacement() -> None:
    with running_pool(workers=1, prefetch=True) as h:
        crash = h.submit("segfault")
        after = h.submit("pid")  # sent to the same worker while it runs the crash
        assert h.wait(crash).kind == "worker_died"
        answer = h.wait(after)
        assert answer.kind == "ok"
        assert h.payload(answer) == answer.pid != h.answers[crash][0].pid  # it ran on the replacement


def test_a_prefetched_job_is_timed_from_its_start_not_from_when_it_was_sent() -> None:
    with running_pool(workers=1, prefetch=True) as h:
        first = h.submit("neighbour", {"sleep": 0.6, "n": 1})
        second = h.submit("neighbour", {"sleep": 0.1, "n": 2}, timeout=0.5)  # waits 0.6 s in the socket
        assert h.wait(first).kind == "ok"
        assert (h.wait(second).kind, h.payload(h.answers[second][0])) == ("ok", {"neighbour": 2})


def test_a_prefetched_job_cannot_be_cancelled_and_a_queued_one_still_can() -> None:
    with running_pool(workers=1, prefetch=True) as h:
        running = h.submit("neighbour", {"sleep": 0.3, "n": 1})
        sent = h.submit("neighbour", {"sleep": 0.0, "n": 2})
        queued = h.submit("neighbour", {"sleep": 0.0, "n": 3})
        h.wait_sent(sent)
        assert not h.pool.cancel(sent) and h.pool.cancel(queued)
        assert h.wait(running).kind == h.wait(sent).kind == "ok"
        assert queued not in h.answers


def test_without_prefetch_a_busy_worker_is_sent_nothing() -> None:
    with running_pool(workers=1) as h:
        running = h.submit("neighbour", {"sleep": 0.3, "n": 1})
        queued = h.submit("neighbour", {"sleep": 0.0, "n": 2})
        time.sleep(0.1)
        assert h.started == [running] and h.pool.cancel(queued)
        assert h.wait(running).kind == "ok"


def test_finished_jobs_are_not_kept_alive_by_their_timers_until_the_deadline() -> None:
    with running_pool(workers=2) as h:
        for n in range(300):  # an hour's timeout and a memory watch each: two timers per job
            assert h.run("echo", {"n": n, "pad": "x" * 1000}, timeout=3600, memory_limit=2**30).kind == "ok"
        timers = h.pool.pending_timers()
        assert len(timers) < 300  # the cancelled ones are dropped in bulk, not kept for an hour
        assert all(t.args == () for t in timers if t.cancelled)  # and hold no job meanwhile


def test_closing_without_grace_answers_a_prefetched_job_once_as_shutdown() -> None:
    with running_pool(workers=1, prefetch=True) as h:
        running = h.submit("sleep_forever")
        sent = h.submit("echo", 1)
        h.wait_sent(sent)
        h.pool.close(grace=0.0)
        assert h.wait(running).kind == "shutdown"
        assert h.wait(sent).kind == "shutdown"  # never started, and answered: exactly once (checked on exit)


def test_workers_run_below_the_parents_cpu_priority_by_worker_nice() -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with running_pool(worker_nice=7) as h:
        h.wait_full_strength()
        assert {psutil.Process(pid).nice() for pid in h.pool.worker_pids()} == {min(19, own + 7)}
        assert psutil.Process(h.pool.template_pid).nice() == own  # only the workers
        h.run("exit3")  # and a replacement worker too
        h.wait_full_strength()
        assert {psutil.Process(pid).nice() for pid in h.pool.worker_pids()} == {min(19, own + 7)}
    with running_pool(worker_nice=0) as h:  # 0: the parent's priority
        h.wait_full_strength()
        assert {psutil.Process(pid).nice() for pid in h.pool.worker_pids()} == {own}
