"""The edges of a dev server's life: signals that end it leave no temporary file behind (and none holds a
secret others can read meanwhile), several dev servers find each other's callers, and ``cmworker call``
never prints a raw traceback whatever state the runtime is in."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dev_harness import ROOT, WAIT, dev_server

APP = '''
import time
import cmworker

WHO = "{who}"


@cmworker.function
def who(context, event) -> str:
    return WHO


@cmworker.function
def hold(context, event) -> str:
    time.sleep(event.get("seconds", 1))
    return WHO
'''


def _private(path: Path) -> None:
    """No one but the user can enter ``path``, and its secrets (keys, tokens) are the user's alone too."""
    secrets = [item for item in path.rglob("*") if "key" in item.name or "token" in item.name]
    for item in [path, *secrets]:
        mode = stat.S_IMODE(item.lstat().st_mode)
        assert mode & 0o077 == 0, f"{item} has mode {oct(mode)}"


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_to_cmworker_dev_leaves_no_temporary_directory(tmp_path: Path, signum: int) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    with dev_server(tmp_path, APP.format(who="one"), env={"TMPDIR": str(temp)}) as dev:
        assert dev.call("who") == "one"
        made = list(temp.iterdir())
        assert made, "the runtime's state directory should be under TMPDIR"
        for directory in made:
            _private(directory)  # it holds the server's key and the caller's token
        _private(dev.state)
        dev.wait_for("job_finished")  # written once the answer is posted: the replica then holds no job
        assert dev.stop(signum) == 0
        assert "stopping: no job is running" in dev.text()
    assert list(temp.iterdir()) == []
    assert not (dev.state / "runtime.json").exists()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_to_the_quickstart_leaves_no_temporary_directory(tmp_path: Path, signum: int) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "quickstart.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(temp)},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT
        while not list(temp.glob("cmworker-quickstart-*/runtime.json")):  # its dev server is up
            assert time.monotonic() < deadline and proc.poll() is None, "the quickstart did not start"
            time.sleep(0.05)
        proc.send_signal(signum)
        proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + WAIT  # its dev server ends after it
    while list(temp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(temp.iterdir()) == []


def test_with_two_dev_servers_stopping_the_newer_leaves_the_older_found(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with dev_server(tmp_path / "old", APP.format(who="older"), state=state) as older:
        assert older.call("who") == "older"
        with dev_server(tmp_path / "new", APP.format(who="newer"), state=state) as newer:
            assert newer.cli("call", "who").stdout.strip() == '"newer"'
            assert newer.stop(signal.SIGTERM) == 0
        called = older.cli("call", "who")
        assert (called.returncode, called.stdout.strip()) == (0, '"older"'), called.stderr
        assert json.loads((state / "runtime.json").read_text())["pid"] == older.proc.pid
        assert older.stop(signal.SIGTERM) == 0
    assert not (state / "runtime.json").exists()
    called = older.cli("call", "who")
    assert called.returncode == 2 and "no embedded runtime is running" in called.stderr


def test_cmworker_call_prints_no_traceback_whatever_the_runtime_state(tmp_path: Path) -> None:
    with dev_server(tmp_path, APP.format(who="one")) as dev:
        announced = json.loads((dev.state / "runtime.json").read_text())
        # A call in the middle of the server's shutdown: it is still announced, but its CA bundle
        # is gone and its port closes.
        job = dev.client().run("hold", {"seconds": 1})
        dev.proc.send_signal(signal.SIGTERM)
        outputs = []
        while dev.proc.poll() is None:
            outputs.append(dev.cli("call", "who"))
        dev.proc.wait(WAIT)
        assert job
    # Announced by a process that is alive but is no runtime, with a CA bundle that is not there.
    broken = {**announced, "pid": os.getpid(), "ca": str(tmp_path / "missing-ca.pem")}
    (dev.state / "runtime.json").write_text(json.dumps(broken))
    outputs.append(dev.cli("call", "who"))
    # Announced by a process that has exited.
    (dev.state / "runtime.json").write_text(json.dumps({**announced, "pid": _dead_pid()}))
    outputs.append(dev.cli("call", "who"))
    (dev.state / "runtime.json").write_text("{not json")
    outputs.append(dev.cli("call", "who"))
    for done in outputs:
        assert "Traceback" not in done.stderr + done.stdout, done.stderr
        assert done.returncode in (0, 1, 2), done.stderr
        if done.returncode == 2:
            assert done.stderr.startswith("cmworker call: ")
    assert outputs[-1].returncode == 2 and outputs[-2].returncode == 2 and outputs[-3].returncode == 2


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_ps_tells_the_parent_the_template_and_the_workers_apart(tmp_path: Path) -> None:
    import psutil

    def title(process: psutil.Process) -> str:
        return " ".join(process.cmdline()).strip()  # the rewritten argv area is padded

    with dev_server(tmp_path, APP.format(who="one")) as dev, dev.client() as client:
        parent = psutil.Process(dev.proc.pid)
        assert title(parent) == "cmworker: parent"
        templates = [p for p in parent.children() if title(p).startswith("cmworker: template")]
        assert [title(p) for p in templates] == ["cmworker: template app.py"]
        workers = templates[0].children()
        assert sorted(title(p) for p in workers) == ["cmworker: worker 1 idle", "cmworker: worker 2 idle"]
        job = client.run("hold", {"seconds": 1.5})
        deadline = time.monotonic() + WAIT
        while not any(title(p).endswith(f" [hold {job}]") for p in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(re.fullmatch(rf"cmworker: worker [12] \[hold {re.escape(job)}\]", title(p)) for p in workers)
        assert client.get_result(job, timeout=WAIT) == "one"
