"""Replicas: one shared FIFO queue, per-replica caps, a replica that dies mid-job, and a big batch."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from cmworker.errors import JobDropped
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.runtime.helpers import DEADLINE, Module, Replica, run_in_thread, wait_until


def test_two_replicas_share_the_queue_under_their_caps(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(replicas=2, max_concurrent_tasks=[2, 1])
    client = runtime.client()
    ids = client.batch_run([("echo", i) for i in range(30)])
    # Each replica runs more polling threads than its cap allows: the runtime must hold the extra GETs.
    with Replica(runtime, 0, slots=4, work=0.01) as first, Replica(runtime, 1, slots=3, work=0.01) as second:
        results = client.get_batch_result(ids, timeout=DEADLINE)
    assert results == [{"echo": i} for i in range(30)]
    assert sorted(first.served + second.served) == sorted(ids)
    assert first.served and second.served
    assert 1 <= runtime.record.max_held(0) <= 2 and runtime.record.max_held(1) == 1
    assert all(runtime.record.accepted(job_id) == 1 for job_id in ids)


def test_get_at_the_cap_waits_and_answers_204_after_the_hold(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(long_poll=0.2)
    runtime.submit("a")
    runtime.submit("b")
    module = Module(runtime)
    assert module.get_job()[0] == 200
    assert module.get_job()[0] == 204  # a job is queued, but this replica is at its cap of 1
    assert runtime.record.queued() == 1 and runtime.record.max_held(0) == 1


def test_a_get_waiting_at_the_cap_gets_a_job_as_soon_as_a_slot_frees(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    hold = 60.0
    runtime = make_runtime(long_poll=hold)
    first = runtime.submit("a")
    second = runtime.submit("b")
    holder = Module(runtime)
    assert holder.get_job()[0] == 200
    waiter = Module(runtime, timeout=hold + 10)
    thread, outcome = run_in_thread(waiter.get_job)
    wait_until(lambda: runtime.record.gets(0) == 2, what="the second GET to wait at the cap")
    assert holder.post_result(first, b"1").status == 204
    thread.join(DEADLINE)  # long before the hold expires
    assert not thread.is_alive()
    status, job = outcome["value"]
    assert status == 200 and job["jobId"] == second


def test_each_answer_of_a_capped_replica_lets_exactly_one_of_its_held_gets_through(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    """An answer wakes one GET of its replica, not all of them: each answer lets one of four held GETs
    take a job, long before their hold ends (a wake-up lost on the way would leave them held)."""
    hold = 60.0
    runtime = make_runtime(long_poll=hold, max_concurrent_tasks=2)
    ids = [runtime.submit("a") for _ in range(6)]
    holders = [Module(runtime) for _ in range(2)]
    held = [holder.get_job()[1]["jobId"] for holder in holders]  # type: ignore[index]
    waiters = [run_in_thread(Module(runtime, timeout=hold + 10).get_job) for _ in range(4)]
    wait_until(lambda: runtime.record.gets(0) == 6, what="four GETs held at the cap")
    poster = Module(runtime)
    taken: list[str] = []  # by the held GETs, in the order they got through
    for through in range(1, 5):
        assert poster.post_result(held.pop(0), b"1").status == 204
        wait_until(lambda through=through: sum(not thread.is_alive() for thread, _ in waiters) >= through,
                   what=f"answer {through} to let a held GET through")
        done = [outcome["value"] for thread, outcome in waiters if not thread.is_alive()]
        new = [job["jobId"] for _, job in done if job["jobId"] not in taken]
        assert len(done) == through and len(new) == 1 and runtime.record.max_held(0) == 2
        taken += new
        held += new
    assert sorted(runtime.record.held(0)) == sorted(held) and set(taken) == set(ids[2:])


def test_without_the_cap_a_replica_can_take_more_than_its_share(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(cap=False, max_concurrent_tasks=1)
    for _ in range(3):
        runtime.submit("a")
    module = Module(runtime)
    assert [module.get_job()[0] for _ in range(4)] == [200, 200, 200, 204]
    assert runtime.record.max_held(0) == 3  # what a test of client-side admission asserts on


def test_a_replica_killed_mid_job_then_restarted_gets_the_job_dropped(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(replicas=2)
    client = runtime.client()
    doomed = client.run("slow", {})
    # Replica 0 takes the job, then its container dies: the connection goes, no result ever comes.
    victim = Module(runtime, 0)
    assert victim.get_job()[1]["jobId"] == doomed  # type: ignore[index]
    victim.close()
    # Meanwhile replica 1 keeps serving the queue.
    with Replica(runtime, 1):
        assert client.map("echo", [1, 2, 3], timeout=DEADLINE) == [{"echo": 1}, {"echo": 2}, {"echo": 3}]
    assert client.status(doomed) == "running" and runtime.record.held(0) == [doomed]
    # The restarted replica 0 reports the restart first, as the SDK does; the runtime drops the job.
    restarted = Module(runtime, 0)
    assert restarted.restart_notification().json() == [doomed]
    with pytest.raises(JobDropped, match="replica 0"):
        client.get_result(doomed, timeout=DEADLINE)
    assert client.status(doomed) == "dropped"
    # ...and then serves new work like any replica.
    with Replica(runtime, 0):
        assert client.call("echo", "again", timeout=DEADLINE) == {"echo": "again"}
    assert runtime.record.accepted(doomed) == 0


def test_a_thousand_query_batch_is_answered_in_full(runtime: EmbeddedRuntime) -> None:
    client = runtime.client()
    ids = client.batch_run([("square", {"n": n}) for n in range(1000)])
    assert len(set(ids)) == 1000
    module = Module(runtime)
    for _ in range(1000):  # the simplest possible module client: one connection, GET, POST, repeat
        status, job = module.get_job()
        assert status == 200 and job is not None
        assert module.post_result(job["jobId"], json.dumps(job["query"]["n"] ** 2).encode()).status == 204
    assert client.get_batch_result(ids, timeout=DEADLINE) == [n * n for n in range(1000)]
    assert runtime.record.queued() == 0
    assert all(runtime.record.accepted(job_id) == 1 for job_id in ids)
