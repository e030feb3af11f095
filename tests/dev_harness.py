"""A real ``cmworker dev`` process for tests: an app written into a temporary directory, its console
captured to a file, found by ``cmworker call`` and ``Client`` through its own state directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cmworker.runtime.client import Client
from tests.pool_harness import stop_process

WAIT = 30.0
ROOT = Path(__file__).resolve().parent.parent


class DevServer:
    def __init__(self, tmp: Path, proc: subprocess.Popen[bytes], state: Path, log: Path) -> None:
        self.tmp, self.proc, self.state, self.log = tmp, proc, state, log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, count: int = 1, timeout: float = WAIT) -> str:
        """Wait until ``needle`` appears ``count`` times in the console; the console then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if text.count(needle) >= count:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"cmworker dev exited ({self.proc.returncode}) before {needle!r}:\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the console after {timeout} s:\n{self.text()}")

    def client(self) -> Client:
        return Client(state_dir=self.state)

    def call(self, function: str, payload: Any = None, timeout: float = WAIT) -> Any:
        with self.client() as client:
            return client.call(function, payload, timeout=timeout)

    def cli(self, *args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
        """``cmworker ARGS`` (``call``, typically) against this server."""
        return subprocess.run([sys.executable, "-m", "cmworker", *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "CMWORKER_STATE_DIR": str(self.state)})

    def stop(self, signum: int = signal.SIGINT, timeout: float = WAIT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"cmworker dev did not stop on {signum}:\n{self.text()}") from None
        return self.proc.returncode


@contextmanager
def dev_server(tmp: Path, app_source: str, *args: str, state: Path | None = None,
               env: dict[str, str] | None = None, ready: str = "serving ") -> Iterator[DevServer]:
    """``cmworker dev app.py`` on ``app_source`` in ``tmp``, console text on; stopped on the way out."""
    (tmp / "app.py").write_text(app_source)
    state = state or tmp / "state"
    log = tmp / f"dev-{time.monotonic_ns()}.log"
    out = open(log, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmworker", "dev", "app.py", "--log-format", "console", "--workers", "2", *args],
        cwd=tmp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "CMWORKER_STATE_DIR": str(state), "PYTHONPATH": str(ROOT), **(env or {})})
    server = DevServer(tmp, proc, state, log)
    try:
        server.wait_for(ready)
        yield server
    finally:
        stop_process(proc, WAIT)
        out.close()


def edit(path: Path, old: str, new: str) -> None:
    """Replace text in a file the way an editor saves it (write a new file, rename it over the old)."""
    text = path.read_text()
    assert old in text
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(text.replace(old, new))
    os.replace(temporary, path)
