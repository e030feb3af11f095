"""``cmworker runtime`` and ``cmworker call`` as a user runs them: real subprocesses, real HTTPS."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from cmworker.errors import WorkerDied
from tests.runtime.helpers import DEADLINE

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RuntimeProcess:
    process: subprocess.Popen[str]
    env: dict[str, str]
    state_dir: Path
    banner: list[str]


def start_runtime(state_dir: Path, *extra: str) -> RuntimeProcess:
    process = subprocess.Popen([sys.executable, "-m", "cmworker", "runtime", "--state-dir", str(state_dir),
                                "--long-poll", "0.3", *extra], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    banner: list[str] = []
    env: dict[str, str] = {}
    assert process.stdout is not None
    timer = threading.Timer(DEADLINE, process.kill)  # a hung start fails the test instead of wedging it
    timer.start()
    try:
        while "CONNECTION_TO_RUNTIME" not in env:
            line = process.stdout.readline()
            if not line:
                pytest.fail(f"cmworker runtime exited early: {process.communicate()[1]}")
            banner.append(line)
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").rstrip("\n").partition("=")
                env[name] = shlex.split(value)[0]
    finally:
        timer.cancel()
    return RuntimeProcess(process, env, state_dir, banner)


def stop_runtime(runtime: RuntimeProcess) -> int:
    if runtime.process.poll() is None:
        runtime.process.send_signal(signal.SIGTERM)
    try:
        return runtime.process.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        runtime.process.kill()
        raise


def call(state_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cmworker", "call", *args, "--state-dir", str(state_dir)],
                          cwd=REPO, input=stdin, capture_output=True, text=True, timeout=DEADLINE * 2)


class EchoModule:
    """A module client built only from the exported environment: echo; an error for "fail"; late for "slow"."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = env["DEFAULT_CA_PATH"]
        with open(env["MODULE_AUTH_TOKEN"], encoding="utf-8") as handle:
            self.session.headers["Module-Auth-Token"] = handle.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> EchoModule:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)

    def _loop(self) -> None:
        while not self._stop.is_set():
            response = self.session.get(self.env["GET_JOB_URI"], timeout=DEADLINE)
            if response.status_code != 200:
                continue
            job = response.json()["computeModuleJobV1"]
            if job["queryType"] == "fail":
                body = WorkerDied("worker 7 died of SIGKILL", signal="SIGKILL").to_bytes()
            elif job["queryType"] == "slow":
                self._stop.wait(1.0)  # answered after the caller gave up
                body = b'"late"'
            else:
                body = json.dumps({"echo": job["query"]}).encode()
            self.session.post(f"{self.env['POST_RESULT_URI']}/{job['jobId']}", data=body, timeout=DEADLINE)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    """One `cmworker runtime` for the call tests, with an echo module attached."""
    runtime = start_runtime(tmp_path_factory.mktemp("state"))
    try:
        with EchoModule(runtime.env):
            yield runtime
    finally:
        stop_runtime(runtime)


def test_runtime_prints_exports_announces_itself_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    runtime = start_runtime(tmp_path, "--replicas", "2", "--max-concurrent-tasks", "3")
    try:
        assert runtime.env["MAX_CONCURRENT_TASKS"] == "3"
        assert any("replica 1: source" in line for line in runtime.banner)
        announcement = json.loads((tmp_path / "runtime.json").read_text())
        assert announcement["pid"] == runtime.process.pid
        assert len(announcement["replicas"]) == 2
        assert announcement["replicas"][0]["RUNTIME_PORT"] == runtime.env["RUNTIME_PORT"]
        files = Path(announcement["stateDir"])
        assert files.is_dir() and Path(runtime.env["MODULE_AUTH_TOKEN"]).is_file()
        # The exported environment is enough to talk to the runtime.
        assert EchoModule(runtime.env).session.get(runtime.env["GET_JOB_URI"], timeout=DEADLINE).status_code == 204
    finally:
        code = stop_runtime(runtime)
    assert code == 0
    assert not (tmp_path / "runtime.json").exists()
    assert not files.exists()


def test_call_prints_the_result_as_json(served: RuntimeProcess) -> None:
    result = call(served.state_dir, "echo", '{"a": [1, 2]}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"echo": {"a": [1, 2]}}


def test_call_reads_the_payload_from_stdin(served: RuntimeProcess) -> None:
    result = call(served.state_dir, "echo", "-", stdin='{"from": "stdin"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"echo": {"from": "stdin"}}


def test_call_without_payload_sends_an_empty_object(served: RuntimeProcess) -> None:
    result = call(served.state_dir, "echo")
    assert json.loads(result.stdout) == {"echo": {}}


def test_call_of_an_error_answer_exits_1_with_kind_and_message(served: RuntimeProcess) -> None:
    result = call(served.state_dir, "fail", "{}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "worker_died: worker 7 died of SIGKILL" in result.stderr


def test_call_that_gets_no_answer_in_time_exits_3(served: RuntimeProcess) -> None:
    result = call(served.state_dir, "slow", "{}", "--timeout", "0.3")
    assert result.returncode == 3 and "running" in result.stderr


def test_call_with_a_payload_that_is_not_json_exits_2(served: RuntimeProcess) -> None:
    result = call(served.state_dir, "echo", "{nope")
    assert result.returncode == 2 and "not JSON" in result.stderr


def test_call_without_a_running_runtime_says_so(tmp_path: Path) -> None:
    result = call(tmp_path, "echo", "{}")
    assert result.returncode == 2
    assert "no embedded runtime is running" in result.stderr and "cmworker runtime" in result.stderr


def test_call_with_an_explicit_url_token_and_ca(served: RuntimeProcess, tmp_path: Path) -> None:
    announcement = json.loads((served.state_dir / "runtime.json").read_text())
    result = call(tmp_path, "echo", "1", "--url", announcement["url"], f"--token={announcement['token']}",
                  "--ca", announcement["ca"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"echo": 1}


def test_runtime_exits_2_when_its_port_is_taken(served: RuntimeProcess, tmp_path: Path) -> None:
    taken = served.env["RUNTIME_PORT"]
    result = subprocess.run([sys.executable, "-m", "cmworker", "runtime", "--state-dir", str(tmp_path),
                             "--port", taken], cwd=REPO, capture_output=True, text=True, timeout=DEADLINE,
                            env={**os.environ})
    assert result.returncode == 2 and "cannot start" in result.stderr
    assert not (tmp_path / "runtime.json").exists()
