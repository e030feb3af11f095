"""Pipeline mode, supervised (``cmworker pipeline``, ``cmworker dev --pipeline``): real processes, real
signals and segfaults, the embedded runtime playing Foundry's pipeline environment and token service."""

from __future__ import annotations

import json
import os
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
from tests.pool_harness import APPS, stop_process
from tests.test_container import pid_namespaces_permitted

pytestmark = pytest.mark.timeout(120)
WAIT = 30.0
APP = os.path.join(APPS, "pipeline_app.py")
RESOURCES = {"orders": ("ri.foundry.main.dataset.orders", "master"), "scored": ("ri.foundry.main.dataset.s", None)}


@pytest.fixture(scope="module")
def runtime() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime(long_poll=0.5) as rt:
        yield rt


def _until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _read(path: Path) -> Any:
    """The JSON the app wrote to ``path``; None until it is there whole."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _log_lines(log: Path) -> list[dict[str, Any]]:
    """Every line the supervisor wrote; each must be an SLS line."""
    lines = [json.loads(raw) for raw in log.read_text().splitlines() if raw.strip()]
    assert all(line["type"] == "service.1" for line in lines)
    return lines


def _messages(log: Path) -> list[str]:
    return [line["message"] for line in _log_lines(log)]


@contextmanager
def pipeline(tmp: Path, env: dict[str, str], *argv: str, command: tuple[str, ...] = ("pipeline",),
             app: str = APP) -> Iterator[subprocess.Popen[bytes]]:
    log = open(tmp / "pipeline.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "cmworker", *command, app, "--log-format", "sls", *argv],
                            env={**os.environ, "PIPELINE_OUT": str(tmp), "CMWORKER_SHUTDOWN_GRACE": "5s", **env},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc, WAIT)
        log.close()


def test_a_pipeline_reads_its_environment_isolates_records_survives_its_own_crash_and_drains(
        runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    env = {**runtime.pipeline_env(RESOURCES), "PIPELINE_MODE": "crash_once",
           "PIPELINE_RECORDS": json.dumps([1, "segfault", 3])}
    with pipeline(tmp_path, env) as proc:
        first = _until(lambda: _read(tmp_path / "start-0.json"), "the loop never started")
        assert first["resources"] == {"orders": ["ri.foundry.main.dataset.orders", "master"],
                                      "scored": ["ri.foundry.main.dataset.s", None]}
        assert first["token_status"] == 200
        # One record segfaulted its Executor worker; the others were processed.
        assert _until(lambda: _read(tmp_path / "results-0.json"), "no results") == [
            {"record": 1, "value": 2}, {"record": "segfault", "error": "worker_died"}, {"record": 3, "value": 6}]
        # Then the loop itself segfaulted: restarted, as attempt 1, in a new process.
        second = _until(lambda: _read(tmp_path / "start-1.json"), "the crashed loop was not restarted")
        assert second["pid"] != first["pid"] and not psutil.pid_exists(first["pid"])
        assert _until(lambda: _read(tmp_path / "results-1.json"), "no results after the restart")[1]["error"] == \
            "worker_died"
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert (tmp_path / "drained").read_text() == "1"
    lines = _log_lines(tmp_path / "pipeline.log")
    crashed = [line for line in lines if line["message"] == "pipeline_crashed"]
    assert len(crashed) == 1 and crashed[0]["unsafeParams"].get("signal", crashed[0]["params"].get("signal")) \
        == "SIGSEGV"
    messages = [line["message"] for line in lines]
    for event in ("pipeline_restarted", "pipeline_stopping", "pipeline_stopped"):
        assert event in messages, (event, messages)
    started = [line for line in lines if line["message"] == "loop_started"]
    assert len(started) == 2 and all(line["params"]["function"] == "main" for line in started)
    assert not psutil.pid_exists(second["pid"])


def test_a_loop_that_segfaults_is_logged_with_its_stack_and_where_it_was(runtime: EmbeddedRuntime,
                                                                         tmp_path: Path) -> None:
    env = {**runtime.pipeline_env(RESOURCES), "PIPELINE_MODE": "crash_once"}
    with pipeline(tmp_path, env) as proc:
        _until(lambda: _read(tmp_path / "start-1.json"), "the crashed loop was not restarted")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    lines = _log_lines(tmp_path / "pipeline.log")
    [crashed] = [line for line in lines if line["message"] == "pipeline_crashed"]
    params = {**crashed["params"], **crashed.get("unsafeParams", {})}
    assert crashed["stacktrace"].startswith("Fatal Python error: Segmentation fault"), crashed
    assert f'File "{APP}", line' in crashed["stacktrace"]
    assert params["where"].startswith(f"main() at {APP}:"), params
    # The dump is in the crash line, not also spread over the log as the loop's output.
    assert not any(line["message"].startswith("Fatal Python error") for line in lines)


def test_a_stack_the_loop_dumps_itself_is_logged_as_its_output(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    env = {**runtime.pipeline_env(RESOURCES), "PIPELINE_MODE": "dumps_stack"}
    with pipeline(tmp_path, env) as proc:
        _until(lambda: (tmp_path / "dumped").exists(), "the loop did not dump its stack")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    text = (tmp_path / "pipeline.log").read_text()
    assert "Current thread 0x" in text and "in main" in text, text


def test_a_loop_that_crashes_at_every_start_trips_the_crash_loop_breaker(runtime: EmbeddedRuntime,
                                                                          tmp_path: Path) -> None:
    env = {**runtime.pipeline_env(RESOURCES), "PIPELINE_MODE": "crash_at_start"}
    with pipeline(tmp_path, env) as proc:
        assert proc.wait(WAIT) == 3
    assert sorted(p.name for p in tmp_path.glob("start-*.json")) == [f"start-{i}.json" for i in range(5)]
    messages = _messages(tmp_path / "pipeline.log")
    assert messages.count("pipeline_crashed") == 4 and messages.count("pipeline_crash_loop") == 1
    assert messages.count("pipeline_loop_raised") == 5  # each with its traceback, as an SLS line


def test_a_loop_ignoring_the_stop_is_killed_after_the_shutdown_grace(runtime: EmbeddedRuntime,
                                                                      tmp_path: Path) -> None:
    env = {**runtime.pipeline_env(RESOURCES), "PIPELINE_MODE": "ignore_stop", "CMWORKER_SHUTDOWN_GRACE": "300ms",
           "PIPELINE_RECORDS": "[1]"}
    with pipeline(tmp_path, env) as proc:
        started = _until(lambda: _read(tmp_path / "start-0.json"), "the loop never started")
        _until(lambda: _read(tmp_path / "results-0.json"), "no results")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert (tmp_path / "ignoring").exists() and not (tmp_path / "drained").exists()
    assert "pipeline_killed_after_grace" in _messages(tmp_path / "pipeline.log")
    assert not psutil.pid_exists(started["pid"])


def test_an_app_without_a_pipeline_entry_stops_at_once(tmp_path: Path) -> None:
    with pipeline(tmp_path, {}, app=os.path.join(APPS, "misbehave.py")) as proc:
        assert proc.wait(WAIT) == 2
    messages = _messages(tmp_path / "pipeline.log")
    assert "pipeline_app_failed" in messages and "pipeline_restarted" not in messages


def test_dev_pipeline_emulates_the_environment_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "sources.json").write_text(json.dumps({"warehouse": {"secrets": {"password": "w4rehouse"}}}))
    argv = ("--resource", "orders=ri.foundry.main.dataset.o@develop", "--resource", "out=ri.foundry.main.dataset.x",
            "--sources", str(tmp_path / "sources.json"))
    with pipeline(tmp_path, {}, *argv, command=("dev", "--pipeline")) as proc:
        seen = _until(lambda: _read(tmp_path / "start-0.json"), "the loop never started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert seen["resources"] == {"orders": ["ri.foundry.main.dataset.o", "develop"],
                                 "out": ["ri.foundry.main.dataset.x", None]}
    assert seen["token_status"] == 200
    assert seen["sources"] == {"warehouse": {"password": "w4rehouse"}}
    assert (tmp_path / "drained").read_text() == "0"


def test_runs_as_pid_1_of_a_new_pid_namespace(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    if reason := pid_namespaces_permitted():
        pytest.skip(reason)
    unshare = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    script = tmp_path / "as_pid1.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        exec {sys.executable} -m cmworker pipeline {APP} --log-format sls
        """))
    script.chmod(0o755)
    env = {**os.environ, **runtime.pipeline_env(RESOURCES), "PIPELINE_OUT": str(tmp_path),
           "PIPELINE_MODE": "crash_once", "PIPELINE_RECORDS": json.dumps([1, "segfault"])}
    log = open(tmp_path / "pipeline.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*unshare, str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _until(lambda: _read(tmp_path / "results-1.json"), "the loop was not restarted under PID 1")
        [pid1] = psutil.Process(proc.pid).children()
        pid1.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        assert (tmp_path / "drained").read_text() == "1"
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
        log.close()
