"""``cmworker run`` end to end: a real subprocess serving tests/apps against the embedded runtime over HTTPS.

Every test checks the runtime's own record: each job got exactly one accepted answer, of the right kind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS, cmworker_run

pytestmark = pytest.mark.timeout(120)
WAIT = 60.0

CONFIG = """
[limits]
timeout = "20s"
kill_grace = "50ms"

[functions.sleep_forever]
timeout = "300ms"

[functions.busy_ignoring_sigterm]
timeout = "300ms"

[functions.allocate_fast]
memory_limit = "256MiB"

[functions.too_large]
max_result_size = 1000
"""


@pytest.fixture
def runtime() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt:
        yield rt


@contextmanager
def serving(rt: EmbeddedRuntime, tmp: Path, *, workers: int = 2, app: str = "misbehave.py",
            env: dict[str, str] | None = None, args: tuple[str, ...] = (),
            top_level: str = "") -> Iterator[subprocess.Popen[bytes]]:
    with cmworker_run(rt, tmp, top_level + CONFIG, app=app, workers=workers, env=env, args=args) as proc:
        yield proc


def answer(rt: EmbeddedRuntime, job_id: str, timeout: float = WAIT) -> tuple[str, Any]:
    """(kind, payload) of a job's one answer, once the runtime has it; asserts it was accepted once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = rt.record.job(job_id)
        if snap is not None and snap.answer is not None:
            break
        time.sleep(0.01)
    else:
        raise AssertionError(f"job {job_id} was not answered within {timeout}s")
    assert rt.record.accepted(job_id) == 1, rt.record.result_posts(job_id)
    payload = json.loads(snap.answer)
    kind = payload.get("kind", "ok") if isinstance(payload, dict) else "ok"
    return kind, payload


CASES = [
    ("segfault", None, "worker_died"),
    ("exit3", None, "worker_died"),
    ("sigkill_self", None, "worker_died"),
    ("sys_exit", None, "exception"),
    ("sleep_forever", None, "timeout"),
    ("busy_ignoring_sigterm", None, "timeout"),
    ("allocate_fast", {"bytes": 1024 * 2**20}, "memory_limit"),
    ("unencodable", None, "result_not_serializable"),
    ("too_large", {"size": 5000}, "result_too_large"),
    ("raise_value_error", 1, "exception"),
    ("no_such_function", None, "unknown_function"),
]


def test_every_misbehaving_job_gets_one_answer_and_later_jobs_are_unaffected(
        runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with serving(runtime, tmp_path):
        for function, query, kind in CASES:
            bad = runtime.submit(function, query)
            good = runtime.submit("echo", function)
            assert answer(runtime, bad)[0] == kind, function
            assert answer(runtime, good) == ("ok", {"echo": function, "job": good})


def test_malformed_queries_are_answered(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with serving(runtime, tmp_path):
        kind, _payload = answer(runtime, runtime.submit("", None))
        assert kind in ("invalid_input", "unknown_function")


def admitted_runs(rt: EmbeddedRuntime, ids: list[str]) -> list[tuple[float, float, float, float]]:
    """(handed out, started, ended, answered) of each job, on the machine's one monotonic clock."""
    runs = []
    for i, job_id in enumerate(ids):
        kind, payload = answer(rt, job_id)
        assert (kind, payload["n"]) == ("ok", i)
        snap = rt.record.job(job_id)
        assert snap is not None and snap.handed_out_at is not None and snap.answered_at is not None
        runs.append((snap.handed_out_at, payload["start"], payload["end"], snap.answered_at))
    return runs


def test_admission_takes_a_job_only_for_a_free_worker_and_posts_beside_the_next_get(tmp_path: Path) -> None:
    """A runtime that does not cap the replica: the replica itself must not take a job before a worker is
    free for it, while the answer of the job before may still be on its way (so the runtime may then hold
    more than ``workers`` jobs, but never more than ``workers`` whose run has not ended)."""
    with EmbeddedRuntime(long_poll=1.0, cap=False) as rt, serving(rt, tmp_path, workers=2):
        ids = [rt.submit("timed", {"sleep": 0.2, "n": i}) for i in range(50)]
        runs = admitted_runs(rt, ids)
    for handed_out, start, end, answered in runs:
        assert answered - handed_out <= (end - start) + 0.1, (handed_out, start, end, answered)
        # No more than `workers` jobs taken whose run had not ended when this one was handed out (itself
        # included): each started on a worker free for it.
        unfinished = sum(1 for h, _, e, _ in runs if h <= handed_out < e)
        assert unfinished <= 2, (handed_out, unfinished)


def test_with_a_capping_runtime_jobs_finish_in_the_ideal_makespan(tmp_path: Path) -> None:
    """The default runtime caps the replica at ``MAX_CONCURRENT_TASKS``: the GET beside a POST waits there
    until the POST lands, and 50 jobs of 0.2 s on 2 workers still take 25 rounds of 0.2 s, plus hand-offs."""
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt, serving(rt, tmp_path, workers=2):
        ids = [rt.submit("timed", {"sleep": 0.2, "n": i}) for i in range(50)]
        runs = admitted_runs(rt, ids)
        assert rt.record.max_held(0) <= 2
    makespan = max(r[3] for r in runs) - min(r[0] for r in runs)
    ideal = 25 * 0.2
    # A generous bound on the 25 hand-offs (under 20 ms each), not a speed test: a replica that let a
    # worker wait for a POST per job would still pass; one that ran the jobs one at a time would not.
    assert makespan < ideal + 0.5 * ideal, makespan
    assert sum(r[2] - r[1] for r in runs) / makespan > 1.3  # two workers busy most of the time


def test_refused_connections_at_start_and_5xx_bursts_lose_nothing(runtime: EmbeddedRuntime,
                                                                  tmp_path: Path) -> None:
    runtime.refuse_connections(2.0)
    runtime.fail_next_gets(3, 503)
    runtime.fail_next_results(3, 502)
    with serving(runtime, tmp_path):
        ids = [runtime.submit("echo", i) for i in range(10)]
        for i, job_id in enumerate(ids):
            assert answer(runtime, job_id)[1]["echo"] == i


def test_a_get_that_hangs_past_its_timeout_is_abandoned_and_nothing_is_lost(runtime: EmbeddedRuntime,
                                                                           tmp_path: Path) -> None:
    runtime.hang_next_get(30.0)
    with serving(runtime, tmp_path, top_level='poll_timeout = "1s"\n'):
        ids = [runtime.submit("echo", i) for i in range(5)]
        for i, job_id in enumerate(ids):  # answered long before the hung GET would have returned
            assert answer(runtime, job_id, timeout=20)[1]["echo"] == i
    assert "GET job failed" in (tmp_path / "run.log").read_text()


def test_connection_dropped_mid_post_is_retried_and_answered_once(runtime: EmbeddedRuntime,
                                                                 tmp_path: Path) -> None:
    runtime.drop_next_result()
    with serving(runtime, tmp_path):
        job = runtime.submit("echo", "dropped")
        assert answer(runtime, job)[1]["echo"] == "dropped"
        posts = runtime.record.result_posts(job)
        assert any(p.status == 0 for p in posts), posts  # the drop really happened


def test_runtime_restart_mid_job_loses_nothing(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with serving(runtime, tmp_path):
        job = runtime.submit("neighbour", {"sleep": 1.0, "n": 5})
        _wait_held(runtime, job)
        runtime.restart()
        assert answer(runtime, job) == ("ok", {"neighbour": 5})
        assert answer(runtime, runtime.submit("echo", "after"))[1]["echo"] == "after"


def test_hostile_requests_ca_bundle_is_ignored(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    bogus = tmp_path / "other-ca.pem"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n")
    with serving(runtime, tmp_path, env={"REQUESTS_CA_BUNDLE": str(bogus), "CURL_CA_BUNDLE": str(bogus)}):
        assert answer(runtime, runtime.submit("echo", 1))[0] == "ok"


def test_jobs_run_below_the_parents_cpu_priority_unless_worker_nice_is_0(runtime: EmbeddedRuntime,
                                                                         tmp_path: Path) -> None:
    for top_level, below in (("", 19), ("worker_nice = 0\n", 0)):
        with serving(runtime, tmp_path, top_level=top_level) as proc:
            worker = answer(runtime, runtime.submit("pid"))[1]
            parent = psutil.Process(proc.pid).nice()
            assert psutil.Process(worker).nice() == min(19, parent + below), top_level


def test_wrong_token_is_a_clear_fatal_error(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    token = tmp_path / "wrong-token"
    token.write_text("not-the-token\n")
    with serving(runtime, tmp_path, env={"MODULE_AUTH_TOKEN": str(token)}) as proc:
        assert proc.wait(WAIT) != 0
    log = (tmp_path / "run.log").read_text()
    assert "HTTP 401" in log and str(token) in log


def test_sigterm_while_waiting_for_the_token_file_exits_0_at_once(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    late = tmp_path / "token-not-written-yet"
    with serving(runtime, tmp_path, env={"MODULE_AUTH_TOKEN": str(late)}) as proc:
        time.sleep(1.0)  # discovery waits up to a minute for the file
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0  # as PID 1 an unhandled SIGTERM would be ignored until SIGKILL
    assert "before connecting to the runtime" in (tmp_path / "run.log").read_text()


def test_sigterm_drains_running_jobs_then_exits_0(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with serving(runtime, tmp_path) as proc:
        job = runtime.submit("neighbour", {"sleep": 1.0, "n": 3, "started": str(tmp_path / "started")})
        _wait_started(tmp_path / "started")  # held is not enough: a job taken but not yet started is not run
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        assert answer(runtime, job) == ("ok", {"neighbour": 3})


def test_every_answered_job_has_its_job_finished_line_after_a_clean_stop(runtime: EmbeddedRuntime,
                                                                          tmp_path: Path) -> None:
    # The lines come from a log thread, up to 50 ms late (logs.FixedLine): they reach a real process's
    # output, stopped right after the answers.
    with serving(runtime, tmp_path) as proc:
        jobs = [runtime.submit("echo", i) for i in range(6)]
        for job in jobs:
            assert answer(runtime, job)[0] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    lines = [json.loads(line) for line in (tmp_path / "run.log").read_text().splitlines() if line.startswith("{")]
    finished = [line["params"] for line in lines if line.get("message") == "job_finished"]
    assert sorted(p["job_id"] for p in finished) == sorted(jobs)
    assert {p["kind"] for p in finished} == {"ok"}


def test_a_job_outliving_the_shutdown_grace_is_answered_shutdown(runtime: EmbeddedRuntime,
                                                                 tmp_path: Path) -> None:
    with serving(runtime, tmp_path, top_level='shutdown_grace = "500ms"\n') as proc:
        job = runtime.submit("neighbour", {"sleep": 30, "n": 1, "started": str(tmp_path / "started")})
        _wait_started(tmp_path / "started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        kind, payload = answer(runtime, job)
        assert kind == "shutdown" and "neighbour" in payload["error"]


def test_a_second_signal_stops_without_waiting_for_the_grace(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with serving(runtime, tmp_path, top_level='shutdown_grace = "5m"\n') as proc:
        job = runtime.submit("neighbour", {"sleep": 40, "n": 1})
        _wait_held(runtime, job)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0  # well before the job's 40 s, let alone the 5 min grace
        assert answer(runtime, job)[0] == "shutdown"


def test_sigkill_then_restart_reports_exactly_the_jobs_in_flight(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with serving(runtime, tmp_path) as proc:
        jobs = [runtime.submit("neighbour", {"sleep": 30, "n": i}) for i in range(2)]
        for job in jobs:
            _wait_held(runtime, job)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
    with serving(runtime, tmp_path):
        later = runtime.submit("echo", "fresh start")
        assert answer(runtime, later)[1]["echo"] == "fresh start"
    assert runtime.record.restart_notifications(0)[-1] == sorted(jobs) or \
        sorted(runtime.record.restart_notifications(0)[-1]) == sorted(jobs)
    for job in jobs:
        snap = runtime.record.job(job)
        assert snap is not None and snap.status == "dropped"


def test_a_mixed_run_of_2000_jobs_is_answered_exactly_once(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    mix = [("echo", 1, "ok")] * 14 + [("raise_value_error", 2, "exception"), ("exit3", None, "worker_died"),
                                      ("sleep_forever", None, "timeout"), ("echo", 3, "ok"),
                                      ("segfault", None, "worker_died"), ("echo", 4, "ok")]
    with serving(runtime, tmp_path, workers=2):
        expected = {}
        client = runtime.client()
        calls = [mix[i % len(mix)] for i in range(2000)]
        for (_function, _query, kind), job_id in zip(calls, client.batch_run([(f, q) for f, q, _ in calls]),
                                                   strict=True):
            expected[job_id] = kind
        for job_id, kind in expected.items():
            assert answer(runtime, job_id, timeout=180)[0] == kind


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_runs_as_pid_1_of_a_new_pid_namespace(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    # --kill-child: if unshare itself dies (a failed test kills it), the namespace's PID 1 goes too.
    unshare = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    probe = subprocess.run([*unshare, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a PID namespace here: {probe.stderr.decode().strip()}")
    script = tmp_path / "as_pid1.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        exec {sys.executable} -m cmworker run {os.path.join(APPS, 'misbehave.py')} --workers 2 \\
            --config {tmp_path / 'cmworker.toml'}
        """))
    (tmp_path / "cmworker.toml").write_text(CONFIG)
    script.chmod(0o755)
    log = open(tmp_path / "pid1.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*unshare, str(script)],
                            env={**os.environ, **runtime.env(0)}, stdout=log, stderr=subprocess.STDOUT)
    try:
        pidfile = tmp_path / "gc.pid"
        assert answer(runtime, runtime.submit("pid"))[1] > 1
        assert answer(runtime, runtime.submit("grandchild_sleeps", {"pidfile": str(pidfile)}))[0] == "ok"
        assert answer(runtime, runtime.submit("segfault"))[0] == "worker_died"
        assert answer(runtime, runtime.submit("echo", "alive"))[1]["echo"] == "alive"
        job = runtime.submit("neighbour", {"sleep": 1.0, "n": 9, "started": str(tmp_path / "started")})
        _wait_started(tmp_path / "started")  # held is not enough: a job taken but not yet started is not run
        # unshare does not forward signals: signal the namespace's PID 1 (unshare's child) directly.
        [pid1] = psutil.Process(proc.pid).children()
        pid1.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        assert answer(runtime, job) == ("ok", {"neighbour": 9})
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
        log.close()


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _wait_started(marker: Path) -> None:
    _wait_until(marker.exists, f"the job never started ({marker} not created)")


def _wait_held(rt: EmbeddedRuntime, job_id: str) -> None:
    _wait_until(lambda: job_id in rt.record.held(0), f"job {job_id} was never taken")


def _raw_answer(rt: EmbeddedRuntime, job_id: str) -> bytes:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        snap = rt.record.job(job_id)
        if snap is not None and snap.answer is not None:
            assert rt.record.accepted(job_id) == 1
            return snap.answer
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} was not answered")


def test_streaming_function_posts_one_chunked_answer(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with serving(runtime, tmp_path):
        body = _raw_answer(runtime, runtime.submit("stream", {"n": 4}))
        assert body == b"".join(json.dumps({"i": i}).encode() for i in range(4))
        failed = _raw_answer(runtime, runtime.submit("stream", {"n": 2, "fail": True}))
        items = failed.split(b"}{")
        assert len(items) == 3 and b'"kind": "stream_failed"' in items[-1]


def test_declared_limits_that_contradict_the_configuration_stop_the_start_not_a_job(tmp_path: Path) -> None:
    """A function declaring ``timeout="1s"`` under a ``[limits] soft_timeout`` of 5s cannot run any job:
    ``cmworker run`` says so at start, naming the function, and takes no job (it used to take one and
    then stop with it held)."""
    app = tmp_path / "app.py"
    app.write_text("import cmworker\n\n\n@cmworker.function(timeout='1s')\ndef quick(context, event):\n"
                   "    return event\n")
    config = tmp_path / "cmworker.toml"
    config.write_text('[limits]\nsoft_timeout = "5s"\n')
    with EmbeddedRuntime(long_poll=0.5) as rt:
        job = rt.submit("quick", 1)
        proc = subprocess.run([sys.executable, "-m", "cmworker", "run", str(app), "--workers", "1",
                               "--config", str(config)], env={**os.environ, **rt.env(0)},
                              capture_output=True, timeout=60)
        assert rt.record.gets(0) == 0
        [snapshot] = rt.store.snapshots([job])
        assert snapshot is not None and snapshot.status == "queued" and snapshot.answer is None
    assert proc.returncode == 2
    assert b"quick" in proc.stdout + proc.stderr and b"soft_timeout" in proc.stdout + proc.stderr


def test_a_crash_loop_after_start_up_stops_the_replica_with_a_failure_exit(runtime: EmbeddedRuntime,
                                                                          tmp_path: Path) -> None:
    """Workers that start dying once the replica serves trip the breaker: the replica stops, saying why,
    and exits non-zero so that the platform sees a failed container, not a clean stop."""
    mark = tmp_path / "die"
    with cmworker_run(runtime, tmp_path, "", app="dies_after_fork_later.py",
                      env={"CMWORKER_TEST_DIE_MARK": str(mark)}) as proc:
        assert answer(runtime, runtime.submit("echo", 1))[0] == "ok"
        mark.touch()
        assert answer(runtime, runtime.submit("exit_now"))[0] == "worker_died"
        assert proc.wait(WAIT) == 1
    log = (tmp_path / "run.log").read_text()
    assert "exited with code 7" in log, log[-2000:]

