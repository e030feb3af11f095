"""The hostile world: user code runs in the worker, so the worker's socket to the parent is untrusted.

Every attack here is a real job on a real worker (tests/apps/hostile.py) that writes to its own socket,
found the way a hostile job finds it, beside a well-behaved job on the other worker. A frame out of
protocol ends the worker that sent it and nothing else: its job is answered ``worker_died`` with a cause
naming the break, the neighbour's job is answered normally, and the next job runs.

The template's death is the other half: jobs running when it dies go on in their (orphaned) workers and
are answered, and a new template serves what comes next.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
from typing import Any

import psutil
import pytest

from cmworker.errors import PoolUnhealthy
from cmworker.pool import messages as m
from tests.pool_harness import Harness, running_pool, wait_gone

pytestmark = pytest.mark.timeout(90)

# (attack, words the answer's cause must contain)
ATTACKS = [
    ("garbage", "unknown message tag 238"),
    ("undecodable", "undecodable Result"),
    ("oversized", "a frame of 4294967280 bytes"),
    ("forged_exited", "an Exited message"),
    ("forged_spawned", "a Spawned message"),
    ("forged_template_ready", "a TemplateReady message"),
    ("forged_template_failed", "a TemplateFailed message"),
    ("forged_run", "a Run message"),
    ("second_ready", "a Ready message"),
    ("result_for_another_job", "a Result for job"),
    ("failure_of_unknown_kind", "a Failure of unknown kind 'ok'"),
]


def start_neighbour(h: Harness, sleep: float = 1.0, n: int = 7) -> str:
    """A well-behaved job, running on one worker before the attack starts on the other."""
    job = h.submit("neighbour", {"sleep": sleep, "n": n})
    h.wait_sent(job)
    return job


def assert_neighbour_answered(h: Harness, job: str, n: int = 7) -> Any:
    answer = h.wait(job)
    assert answer.kind == "ok", answer.body
    assert h.payload(answer)["neighbour"] == n
    return answer


def assert_pool_serves_again(h: Harness) -> None:
    h.wait_full_strength()
    answer = h.run("echo", "after")
    assert (answer.kind, h.payload(answer)) == ("ok", {"echo": "after"})


@pytest.mark.parametrize(("attack", "named"), ATTACKS, ids=[a for a, _ in ATTACKS])
def test_a_frame_out_of_protocol_ends_only_the_worker_that_sent_it(attack: str, named: str) -> None:
    with running_pool("hostile.py") as h:
        neighbour = start_neighbour(h)
        answer = h.wait(h.submit("attack", {"attack": attack}))

        assert answer.kind == "worker_died", answer.body
        payload = h.payload(answer)
        assert "broke cmworker's protocol" in payload["error"] and named in payload["error"], payload
        assert payload["pid"] == answer.pid
        wait_gone({answer.pid})
        assert assert_neighbour_answered(h, neighbour).pid != answer.pid
        assert_pool_serves_again(h)


@pytest.mark.parametrize("forged_first", [False, True], ids=["pid known first", "forged Ready first"])
def test_a_ready_message_forged_at_fork_names_no_process_the_pool_would_kill(
        monkeypatch: pytest.MonkeyPatch, forged_first: bool) -> None:
    """A worker's pid comes from the template only: a fork hook of the app that forges a Ready naming
    another process gets its workers killed as they start (until the crash-loop breaker stops it), and
    that other process is never signalled — also when the forged Ready arrives before the template has
    said whose it is (a CI run once saw the pool start with such workers)."""
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        monkeypatch.setenv("CMWORKER_TEST_VICTIM", str(victim.pid))
        if forged_first:
            monkeypatch.setenv("CMWORKER_TEST_HOLD_SPAWNED", "1")
        with pytest.raises(PoolUnhealthy, match="broke cmworker's protocol"), running_pool("forges_ready.py"):
            pass
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_an_exited_message_forged_at_fork_on_the_control_socket_fails_no_job() -> None:
    """A fork hook of the app runs in each new worker while it still holds the template's control socket:
    what it sends there does not come from the template, and is dropped."""
    with running_pool("forges_exited_at_fork.py") as h:
        neighbour = start_neighbour(h, 1.5)
        assert h.run("exit_now").kind == "worker_died"  # its replacement's fork hook forges the Exited
        h.wait_full_strength()
        assert_neighbour_answered(h, neighbour)
        assert_pool_serves_again(h)


def test_a_second_answer_from_a_job_ends_its_worker_and_answers_nothing_twice() -> None:
    """The job answered itself first; the worker's own answer is then one too many."""
    with running_pool("hostile.py") as h:
        neighbour = start_neighbour(h)
        answer = h.wait(h.submit("answer_twice"))
        assert (answer.kind, h.payload(answer)) == ("ok", "first")  # its own job: its own choice
        wait_gone({answer.pid})
        assert_neighbour_answered(h, neighbour)
        assert_pool_serves_again(h)


def test_a_frame_written_after_the_answer_ends_the_idle_worker() -> None:
    with running_pool("hostile.py") as h:
        neighbour = start_neighbour(h)
        answer = h.wait(h.submit("frame_after_answer", {"delay": 0.3}))
        assert (answer.kind, h.payload(answer)) == ("ok", "answered")
        wait_gone({answer.pid})  # killed once its stray frame came, while it had no job
        assert_neighbour_answered(h, neighbour)
        assert_pool_serves_again(h)


def test_a_job_prefetched_behind_a_protocol_breaker_runs_on_another_worker() -> None:
    with running_pool("hostile.py", prefetch=True) as h:
        neighbour = start_neighbour(h, sleep=1.5)
        hostile = h.submit("attack", {"attack": "result_for_another_job", "then_sleep": 0.5})
        h.wait_sent(hostile)
        behind = h.submit("pid")  # both workers busy: sent ahead to one of them
        h.wait_sent(behind)
        assert h.wait(hostile).kind == "worker_died"
        answer = h.wait(behind)
        assert answer.kind == "ok" and answer.pid != h.answers[hostile][0].pid
        assert_neighbour_answered(h, neighbour)
        assert_pool_serves_again(h)


# -- the checks themselves, byte by byte -----------------------------------------------------------


def worker_reader() -> m.FrameReader:
    return m.FrameReader(m.WORKER_MESSAGES, m.MAX_FRAME, "a worker")


def frame_bytes(message: m.Message) -> bytes:
    return b"".join(bytes(p) for p in m.frame(message))


def test_a_kind_a_worker_may_not_send_is_refused_from_its_header_alone() -> None:
    header = frame_bytes(m.Exited(1, 9, 0, 0.0))[:m.HEADER.size]
    with pytest.raises(m.ProtocolError, match="an Exited message, which a worker may not send"):
        worker_reader().feed(header)


def test_a_frame_longer_than_the_limit_is_refused_before_its_body_is_awaited() -> None:
    with pytest.raises(m.ProtocolError, match=f"a frame of {m.MAX_FRAME + 1} bytes, over the limit of 1GiB"):
        worker_reader().feed(struct.pack("!IB", m.MAX_FRAME + 1, m.Result.tag))


@pytest.mark.parametrize(("raw", "named"), [
    (struct.pack("!IB", 2, m.Result.tag) + b"xx", "undecodable Result"),
    (struct.pack("!IB", 17, m.StreamEnd.tag) + b"x" * 17, "undecodable StreamEnd"),
    (struct.pack("!IB", 18, m.Failure.tag) + struct.pack("!QdB", 1, 0.0, 5) + b"ok", "undecodable Failure"),
    (struct.pack("!IB", 3, m.Ready.tag) + b"\xff\xfe\xfd", "undecodable Ready"),
])
def test_a_body_that_does_not_decode_is_refused_by_kind(raw: bytes, named: str) -> None:
    with pytest.raises(m.ProtocolError, match=named):
        worker_reader().feed(raw)


@pytest.mark.parametrize("message", [m.Run("f", b"{}", 0, 0.0, 10, seq=2**40), m.Result(b"1", 0.5, seq=7),
                                     m.Failure("timeout", b"{}", 0.5, seq=8), m.Chunk(b"[]", seq=9),
                                     m.StreamEnd(0.5, seq=10)], ids=lambda message: type(message).__name__)
def test_the_jobs_number_travels_with_every_message_about_it(message: m.Message) -> None:
    [back] = m.FrameReader().feed(frame_bytes(message))
    assert back.seq == message.seq  # type: ignore[attr-defined]


@pytest.mark.parametrize(("packet", "named"), [
    (b"\x00\x00", "too short for a header"),
    (m.pack_packet(m.Spawned(1, 2))[:-1], "announcing 8"),
    (m.pack_packet(m.Spawned(1, 2)) + b"x", "announcing 8"),
    (m.pack_packet(m.Ready(5)), "a Ready message, which the template may not send"),
])
def test_a_control_packet_out_of_protocol_is_refused(packet: bytes, named: str) -> None:
    with pytest.raises(m.ProtocolError, match=named):
        m.unpack_packet(packet, m.TEMPLATE_MESSAGES, "the template")


# -- the template's death ----------------------------------------------------------------------------


def kill_template(h: Harness) -> int:
    template = h.pool.template_pid
    assert template is not None
    os.kill(template, signal.SIGKILL)
    return template


def test_jobs_running_when_the_template_is_killed_finish_and_are_answered() -> None:
    with running_pool("hostile.py") as h:
        first, second = start_neighbour(h, 1.5, 1), start_neighbour(h, 1.5, 2)
        workers = set(h.pool.worker_pids())
        old = kill_template(h)
        assert_neighbour_answered(h, first, 1)
        assert_neighbour_answered(h, second, 2)
        wait_gone(workers | {old})  # the orphaned workers retire once their jobs are answered
        assert h.pool.template_pid != old
        assert_pool_serves_again(h)
        assert not set(h.pool.worker_pids()) & workers


def test_a_job_prefetched_to_an_orphaned_worker_runs_there_and_is_answered() -> None:
    with running_pool("hostile.py", workers=1, prefetch=True) as h:
        first = start_neighbour(h, 1.0, 1)
        second = h.submit("neighbour", {"sleep": 0.0, "n": 2})
        h.wait_sent(second)  # already in the worker's socket
        worker = h.pool.worker_pids()[0]
        kill_template(h)
        assert assert_neighbour_answered(h, first, 1).pid == worker
        assert assert_neighbour_answered(h, second, 2).pid == worker
        wait_gone({worker})
        assert_pool_serves_again(h)


def test_idle_workers_of_a_dead_template_are_replaced() -> None:
    with running_pool("hostile.py") as h:
        h.wait_full_strength()
        workers = set(h.pool.worker_pids())
        kill_template(h)
        wait_gone(workers)
        assert_pool_serves_again(h)


def test_a_worker_that_dies_after_its_template_is_answered_worker_died_with_the_cause() -> None:
    with running_pool("hostile.py") as h:
        neighbour = start_neighbour(h, 1.0)
        dying = h.submit("sleep_then_exit", {"sleep": 1.0, "code": 3})
        h.wait_sent(dying)
        kill_template(h)
        answer = h.wait(dying)
        assert answer.kind == "worker_died"
        error = h.payload(answer)["error"]
        assert "'sleep_then_exit'" in error and "template" in error and "exit status is unknown" in error
        assert_neighbour_answered(h, neighbour)
        assert_pool_serves_again(h)


def test_a_job_on_an_orphaned_worker_is_still_held_to_its_timeout() -> None:
    with running_pool("hostile.py") as h:
        job = h.submit("sleep_forever", timeout=1.5)
        h.wait_sent(job)
        kill_template(h)
        answer = h.wait(job)
        assert answer.kind == "timeout"
        wait_gone({answer.pid})
        assert_pool_serves_again(h)


def test_a_job_that_kills_its_own_template_is_answered() -> None:
    with running_pool("hostile.py") as h:
        answer = h.run("kill_template")
        assert (answer.kind, h.payload(answer)) == ("ok", "killed")
        wait_gone({answer.pid})
        assert_pool_serves_again(h)


def test_a_replacement_template_that_cannot_start_makes_the_pool_unhealthy_not_silent(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app imported once, then every replacement template dies importing it: the job running on an
    orphan is still answered, and a job queued behind is answered too, instead of waiting forever."""
    monkeypatch.setenv("CMWORKER_TEST_IMPORTED", str(tmp_path / "imported"))
    with running_pool("imports_once.py", workers=1) as h:
        running = h.submit("nap", {"sleep": 1.0})
        h.wait_sent(running)
        kill_template(h)
        queued = h.submit("nap", {"sleep": 0.0})
        assert h.wait(running).kind == "ok"
        answer = h.wait(queued)
        assert answer.kind == "worker_died" and "template" in h.payload(answer)["error"]
        assert h.pool.unhealthy is not None


def test_a_worker_replaced_leaves_no_fd_behind_in_the_parent() -> None:
    """Each worker costs the parent a socket, two pipes and a pidfd: all go with the worker."""
    with running_pool("hostile.py", workers=1, max_jobs_per_worker=1) as h:
        h.run("pid")
        h.wait_full_strength()
        before = psutil.Process().num_fds()
        for _ in range(30):
            assert h.run("pid").kind == "ok"
        h.wait_full_strength()
        assert psutil.Process().num_fds() <= before


def test_no_orphaned_worker_outlives_a_pool_closed_meanwhile() -> None:
    with running_pool("hostile.py") as h:
        job = start_neighbour(h, 30.0)
        workers = set(h.pool.worker_pids())
        kill_template(h)
        h.pool.close(grace=0.0)
        assert h.wait(job).kind == "shutdown"
    wait_gone(workers)  # orphans are no longer the test's descendants: running_pool cannot see them
