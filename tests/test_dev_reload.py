"""Reload in ``cmworker dev``: an edited app is served at once, a broken one is not, and a job running
across a reload finishes on the code it started with, answered once."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

from cmworker.pool.supervisor import PoolOptions
from tests.dev_harness import dev_server, edit
from tests.pool_harness import Harness, descendants, wait_gone

APP = '''
import time
import cmworker


@cmworker.function
def answer(context, event) -> int:
    return 1


@cmworker.function
def slow(context, event) -> str:
    if "started" in event:
        open(event["started"], "w").close()
    time.sleep(event.get("sleep", 0))
    return "old code"
'''


def test_an_edit_changes_the_next_answer_within_two_seconds(tmp_path: Path) -> None:
    with dev_server(tmp_path, APP) as dev:
        assert dev.call("answer") == 1
        edit(tmp_path / "app.py", "return 1", "return 2")
        edited = time.monotonic()
        while (value := dev.call("answer")) == 1 and time.monotonic() - edited < 10:
            time.sleep(0.05)
        took = time.monotonic() - edited
        assert value == 2
        assert took < 4.0, f"the edit was served after {took:.1f} s"  # the issue asks ~2 s; generous here
        console = dev.wait_for("reloaded the app")
        assert re.search(r"reloaded the app \(app\.py changed\); serving answer, slow", console)


def test_an_edit_that_breaks_the_import_keeps_the_old_code_and_prints_the_error(tmp_path: Path) -> None:
    with dev_server(tmp_path, APP) as dev:
        edit(tmp_path / "app.py", "return 1", "return (1")
        console = dev.wait_for("reload failed")
        assert "still serving the code loaded before" in console
        assert "SyntaxError" in console and 'app.py", line ' in console
        # The user's file is the only frame: none of cmworker's own nor importlib's.
        error = console[console.index("reload failed"):]
        assert "cmworker/" not in error and "importlib" not in error
        assert dev.call("answer") == 1
        assert dev.proc.poll() is None
        edit(tmp_path / "app.py", "return (1", "return 3")  # fixed: served again
        dev.wait_for("reloaded the app")
        assert dev.call("answer") == 3
        # Limits that cannot hold are refused as a failed import is, the code before serving on.
        edit(tmp_path / "app.py", "@cmworker.function\ndef answer", '@cmworker.function(timeout="1s", '
             'soft_timeout="2s")\ndef answer')
        console = dev.wait_for("reload failed", count=2)
        assert "function 'answer'" in console.split("reload failed")[2]
        assert dev.call("answer") == 3 and dev.proc.poll() is None


def test_a_job_running_across_a_reload_is_answered_by_the_old_code_once(tmp_path: Path) -> None:
    with dev_server(tmp_path, APP) as dev:
        with dev.client() as client:
            started = tmp_path / "started"
            job = client.run("slow", {"sleep": 3, "started": str(started)})
            # In a worker of the old code, not only handed out by the runtime.
            deadline = time.monotonic() + 10
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert started.exists() and client.status(job) == "running"
            edit(tmp_path / "app.py", '"old code"', '"new code"')
            dev.wait_for("reloaded the app")
            assert client.call("slow", {"sleep": 0}, timeout=10) == "new code"  # beside the old job
            assert client.status(job) == "running"
            assert client.get_result(job, timeout=15) == "old code"
        console = dev.wait_for(f"job_id={job}")
        assert console.count(f"job_id={job}") == 1  # one answer, posted once: no refused or repeated POST
        # "HTTP 409", not a bare 409: a timestamp such as 23:46:36.409 holds one too.
        assert "refused" not in console and "HTTP 409" not in console



POOL_APP = '''
import time
import cmworker


@cmworker.function
def version(context, event) -> str:
    time.sleep(event.get("sleep", 0))
    return "v1"
'''


def test_the_old_template_dying_during_a_reload_spares_the_job_running_on_its_worker(tmp_path: Path) -> None:
    """The old template is kept until its last worker exits; if it dies first, that worker's job is still
    answered (its exit is watched through a pidfd) and the new template serves on."""
    app = tmp_path / "app.py"
    app.write_text(POOL_APP)
    before = descendants()
    harness = Harness(PoolOptions(workers=1, app=str(app), worker_nice=0))
    harness.pool.start()
    try:
        old_template = harness.pool.template_pid
        running = harness.submit("version", {"sleep": 1.5})
        harness.wait_sent(running)
        app.write_text(POOL_APP.replace('"v1"', '"v2"'))
        done = threading.Event()
        outcome: list[str | None] = []
        harness.pool.reload(lambda error: (outcome.append(error), done.set()))
        assert done.wait(30) and outcome == [None]
        assert harness.pool.template_pid != old_template
        assert old_template is not None
        os.kill(old_template, signal.SIGKILL)
        assert harness.payload(harness.run("version", {})) == "v2"
        assert harness.payload(harness.wait(running)) == "v1"
        old_worker = harness.wait(running).pid
        deadline = time.monotonic() + 10  # its exit is seen, though no template reports it
        while old_worker in harness.pool.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert old_worker not in harness.pool.worker_pids()
        harness.assert_answered_once()
    finally:
        harness.pool.close()
        wait_gone(descendants() - before)
