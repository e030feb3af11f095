"""``python app.py`` with ``cmworker.main()`` at its end: the SDK template's entrypoint, served by cmworker.

A migrated SDK-style app is started as a script against the embedded runtime over HTTPS; it must serve
jobs as ``cmworker run app.py`` does (it becomes that command, same PID), import the app in the
serving parent only the once Python needs to reach ``main()``, and drain a running job on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS, WAIT, stop_process
from tests.test_container import ns_pid, pid_namespaces_permitted

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runtime() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt:
        yield rt


def _wait_for(condition: object, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, f"python app.py exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"not within {WAIT}s: {what}"
        time.sleep(0.02)


def _serving_process(proc: subprocess.Popen[bytes], as_pid_1: bool) -> psutil.Process:
    """The process that serves: ``proc`` itself, or the PID 1 that ``unshare`` forked."""
    if not as_pid_1:
        return psutil.Process(proc.pid)
    deadline = time.monotonic() + WAIT
    while not psutil.Process(proc.pid).children():
        assert proc.poll() is None and time.monotonic() < deadline, "unshare started nothing"
        time.sleep(0.01)
    return psutil.Process(proc.pid).children()[0]


@pytest.mark.parametrize("as_pid_1", [False, True], ids=["process", "pid-1"])
def test_python_app_py_serves_jobs_and_drains_on_sigterm(runtime: EmbeddedRuntime, tmp_path: Path,
                                                         as_pid_1: bool) -> None:
    if as_pid_1 and (reason := pid_namespaces_permitted()):
        pytest.skip(reason)
    import_log = tmp_path / "imports.log"
    env = {**os.environ, **runtime.env(0), "IMPORT_LOG": str(import_log),
           "PYTHONPATH": str(ROOT)}  # cmworker from this tree, as an installed one would be found
    app = os.path.join(APPS, "sdk_migrated.py")
    prefix = ["unshare", "--pid", "--kill-child", "--mount-proc"] if as_pid_1 else []
    with open(tmp_path / "out.log", "wb") as out:
        proc = subprocess.Popen([*prefix, sys.executable, app, "--workers", "2"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            serving = _serving_process(proc, as_pid_1)
            own_pid = str(ns_pid(serving))  # what os.getpid() says inside it
            assert own_pid == ("1" if as_pid_1 else str(serving.pid))
            client = runtime.client()
            assert client.call("add", {"a": 2, "b": 3}, timeout=WAIT) == {"sum": 5}

            # The same process, now `cmworker run`'s parent (its process title says so: the title replaces
            # the command line), serving with the script's own arguments (--workers 2).
            assert " ".join(serving.cmdline()).strip() == "cmworker: parent", serving.cmdline()
            workers = [p for p in serving.children(recursive=True)
                       if " ".join(p.cmdline()).startswith("cmworker: worker")]
            assert len(workers) == 2, [p.cmdline() for p in serving.children(recursive=True)]

            # The parent ran the app's body once, as __main__, before main(); the app's functions are
            # imported by the worker template only (a process of its own, under the app's own name).
            imports = [line.split() for line in import_log.read_text().splitlines()]
            assert imports.count([own_pid, "__main__"]) == 1, imports
            served_by = [pid for pid, name in imports if name == "sdk_migrated"]
            assert len(served_by) == 1 and served_by[0] != own_pid, imports

            started = tmp_path / "started"
            job = client.run("slow", {"seconds": 1.0, "started": str(started)})
            _wait_for(started.exists, "the slow job started", proc)
            serving.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT) == 0
            assert client.get_result(job, timeout=WAIT) == "finished"
            client.close()
        finally:
            stop_process(proc)
    assert "stopping: finishing running jobs" in (tmp_path / "out.log").read_text()


def test_an_unguarded_main_stops_the_import_instead_of_serving_from_inside_cmworker(tmp_path: Path) -> None:
    """`cmworker schema` imports the app in-process: main() there refuses rather than exec a replica."""
    done = subprocess.run([sys.executable, "-m", "cmworker", "schema", os.path.join(APPS, "unguarded_main.py")],
                          capture_output=True, text=True, timeout=WAIT, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done
    assert "only under `if __name__ == \"__main__\":`" in done.stderr


def test_main_without_a_script_says_to_use_cmworker_run() -> None:
    done = subprocess.run([sys.executable, "-c", "import cmworker; cmworker.main()"], capture_output=True,
                          text=True, timeout=WAIT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert "Use `cmworker run APP` instead" in done.stderr
