"""``cmworker health``, the container probe: a real ``cmworker run`` against the embedded runtime writes its
status, and the probe (a process of its own, as Kubernetes runs it) reads it.

The unit tests at the end check the two pure parts with an injected clock: ``judge`` on records, and how
the Reporter tells a GET the runtime is holding from one that failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cmworker.replica.health import Reporter, Status, judge, read_status
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import cmworker_run

pytestmark = pytest.mark.timeout(90)
WAIT = 30.0

CONFIG = """
[health]
unreachable_after = "1s"
"""


@pytest.fixture
def runtime() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt:
        yield rt


def probe(status_file: Path, *args: str) -> tuple[int, str]:
    """``cmworker health`` as the container's exec probe runs it: its exit code and its one line."""
    done = subprocess.run([sys.executable, "-m", "cmworker", "health", *args], capture_output=True, text=True,
                          env={**os.environ, "CMWORKER_HEALTH_FILE": str(status_file)}, timeout=WAIT)
    lines = done.stdout.splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    return done.returncode, lines[0]


def probe_until(status_file: Path, wanted: Callable[[int, str], bool], *args: str) -> tuple[int, str]:
    deadline = time.monotonic() + WAIT
    seen = probe(status_file, *args)
    while not wanted(*seen):
        assert time.monotonic() < deadline, f"the probe kept saying {seen}"
        time.sleep(0.2)
        seen = probe(status_file, *args)
    return seen


def healthy(code: int, line: str) -> bool:
    return code == 0


def test_health_is_0_while_serving_and_1_once_stopped(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    status_file = tmp_path / "health.json"
    with cmworker_run(runtime, tmp_path, CONFIG, env={"CMWORKER_HEALTH_FILE": str(status_file)}) as proc:
        _, line = probe_until(status_file, healthy)
        assert line.startswith(f"serving: pid {proc.pid}, 2 workers"), line
        assert runtime.client().call("echo", {"hello": 1}) is not None  # serving really means serving
        assert probe(status_file)[0] == 0
    code, line = probe(status_file)
    assert code == 1
    assert f"cmworker run (pid {proc.pid}) is not running; its last status: stopped" in line, line


def test_health_fails_while_the_runtime_is_unreachable(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    status_file = tmp_path / "health.json"
    with cmworker_run(runtime, tmp_path, CONFIG, env={"CMWORKER_HEALTH_FILE": str(status_file)}) as proc:
        probe_until(status_file, healthy)
        runtime.stop()
        code, line = probe_until(status_file, lambda code, line: code != 0)
        assert code == 1
        assert line.startswith("unhealthy: the runtime has not answered GET job for "), line
        assert "health.unreachable_after = 1s" in line
        assert proc.poll() is None  # the replica keeps trying; only the probe says it cannot serve


def test_health_reports_the_crash_loop_breaker(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    status_file = tmp_path / "health.json"
    with cmworker_run(runtime, tmp_path, CONFIG, app="dies_after_fork.py",
                      env={"CMWORKER_HEALTH_FILE": str(status_file)}) as proc:
        assert proc.wait(WAIT) != 0
    code, line = probe(status_file)
    assert code == 1
    assert line.startswith(f"unhealthy: cmworker run (pid {proc.pid}) is not running; its last status: stopped: "), line
    assert "workers in a row died at start-up" in line


def test_health_says_still_starting_until_the_runtime_is_found(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    status_file = tmp_path / "health.json"
    token = tmp_path / "token-written-late"  # the platform may write its files after the container starts
    env = {"CMWORKER_HEALTH_FILE": str(status_file), "MODULE_AUTH_TOKEN": str(token)}
    with cmworker_run(runtime, tmp_path, CONFIG, env=env):
        code, line = probe_until(status_file, lambda code, line: "starting" in line)
        assert (code, line) == (1, "unhealthy: starting: finding the runtime (its connection details)")
        code, line = probe(status_file, "--live")  # a liveness probe must not restart a slow start
        assert code == 0, line
        assert line.endswith(", starting: finding the runtime (its connection details)"), line
        token.write_bytes(runtime.token_path().read_bytes())
        probe_until(status_file, healthy)


def test_health_fails_when_the_parent_is_stuck(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    status_file = tmp_path / "health.json"
    with cmworker_run(runtime, tmp_path, CONFIG, env={"CMWORKER_HEALTH_FILE": str(status_file)}) as proc:
        probe_until(status_file, healthy, "--max-age", "1s")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            code, line = probe_until(status_file, lambda code, line: code != 0, "--max-age", "1s")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert code == 1
        assert line.startswith(f"unhealthy: cmworker run (pid {proc.pid}) has not updated its status for "), line
        assert "it is stuck; its last status: serving" in line
        probe_until(status_file, healthy, "--max-age", "1s")


def test_health_without_a_status_file_says_where_it_looked(tmp_path: Path) -> None:
    code, line = probe(tmp_path / "nothing-here.json")
    assert code == 1
    assert f"no status at {tmp_path / 'nothing-here.json'}: cmworker run has not started yet" in line


# -- units --------------------------------------------------------------------------------------------

def record(**fields: object) -> Status:
    base: dict[str, object] = {"pid": 10, "state": "serving", "reason": "", "beat": 100.0, "time": "",
                               "interval": 1.0, "template_pid": 11, "workers": 4, "held": 1}
    return Status(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "running", "now", "expected"), [
    (record(), {10, 11}, 100.5, (True, "serving: pid 10, 4 workers, 1 job held")),
    (record(), {11}, 100.5, (False, "cmworker run (pid 10) is not running; its last status: serving")),
    (record(state="stopped", reason="SIGTERM"), {10}, 100.5, (False, "cmworker run (pid 10) has stopped: SIGTERM")),
    (record(), {10, 11}, 111.0, (False, "cmworker run (pid 10) has not updated its status for 11s (it does "
                                        "every 1s): it is stuck; its last status: serving")),
    (record(state="unhealthy", reason="the template is gone"), {10, 11}, 100.5,
     (False, "the template is gone")),
    (record(state="starting", reason="finding the runtime"), {10, 11}, 100.5,
     (False, "starting: finding the runtime")),
    (record(), {10}, 100.5, (False, "the worker template process (pid 11) is gone")),
])
def test_judge(status: Status, running: set[int], now: float, expected: tuple[bool, str]) -> None:
    assert judge(status, now=now, is_alive=lambda pid: pid in running) == expected


@pytest.mark.parametrize(("status", "running", "expected"), [
    (record(state="starting", reason="finding the runtime"), {10},
     (True, "alive: pid 10, starting: finding the runtime")),
    (record(state="stopping", reason="draining"), {10}, (True, "alive: pid 10, stopping: draining")),
    (record(), {10}, (True, "serving: pid 10, 4 workers, 1 job held")),  # a template restarting is no reason
    (record(state="unhealthy", reason="breaker"), {10, 11}, (False, "breaker")),
    (record(state="starting"), {11}, (False, "cmworker run (pid 10) is not running; its last status: starting")),
])
def test_judge_for_a_liveness_probe(status: Status, running: set[int], expected: tuple[bool, str]) -> None:
    assert judge(status, now=100.5, live=True, is_alive=lambda pid: pid in running) == expected


def test_a_record_survives_the_file(tmp_path: Path) -> None:
    (tmp_path / "health.json").write_text(record().to_json())
    assert read_status(tmp_path / "health.json") == record()
    (tmp_path / "other.json").write_text('{"state": "fine"}')
    with pytest.raises(ValueError, match="not a cmworker status record"):
        read_status(tmp_path / "other.json")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_held_get_is_not_a_failing_one_until_it_outlives_poll_timeout() -> None:
    clock = Clock()
    reporter = Reporter(None, unreachable_after=5.0, poll_timeout=30.0, clock=clock)
    observe = reporter.observer()
    observe("get_start", "")
    clock.now += 29.0
    assert reporter.unreachable_for() is None
    clock.now += 2.0
    assert reporter.unreachable_for() == 31.0


def test_failed_gets_count_from_the_first_and_an_answered_get_ends_them() -> None:
    clock = Clock()
    seen: list[tuple[str, str]] = []
    reporter = Reporter(None, unreachable_after=5.0, poll_timeout=30.0, clock=clock)
    observe = reporter.observer(lambda step, job_id: seen.append((step, job_id)))
    observe("get_start", "")
    clock.now += 0.5
    observe("get_start", "")  # the one before never ended: it failed
    clock.now += 3.0
    assert reporter.unreachable_for() == 3.5
    observe("get_end", "")
    assert reporter.unreachable_for() is None
    assert seen == [("get_start", ""), ("get_start", ""), ("get_end", "")]  # passed on to the inner observer


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to hand a directory to another user")
def test_the_default_directory_is_refused_when_another_user_owns_it(tmp_path: Path) -> None:
    planted = tmp_path / "cmworker-planted"
    planted.mkdir()
    os.chown(planted, 54321, 54321)
    with Reporter(planted / "health.json", unreachable_after=5.0, poll_timeout=30.0, private=True):
        pass
    assert not (planted / "health.json").exists()
    with Reporter(planted / "health.json", unreachable_after=5.0, poll_timeout=30.0):  # a path set by hand
        pass
    assert read_status(planted / "health.json").state == "stopped"
