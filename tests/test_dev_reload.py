"""Reload in ``cmworker dev``: an edited app is served at once, a broken one is not, and a job running
across a reload finishes on the code it started with, answered once."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.dev_harness import dev_server, edit

APP = '''
import time
import cmworker


@cmworker.function
def answer(context, event) -> int:
    return 1


@cmworker.function
def slow(context, event) -> str:
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


def test_a_job_running_across_a_reload_is_answered_by_the_old_code_once(tmp_path: Path) -> None:
    with dev_server(tmp_path, APP) as dev:
        with dev.client() as client:
            job = client.run("slow", {"sleep": 3})
            deadline = time.monotonic() + 10
            while client.status(job) != "running" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.status(job) == "running"
            edit(tmp_path / "app.py", '"old code"', '"new code"')
            dev.wait_for("reloaded the app")
            assert client.call("slow", {"sleep": 0}, timeout=10) == "new code"  # beside the old job
            assert client.status(job) == "running"
            assert client.get_result(job, timeout=15) == "old code"
        console = dev.wait_for(f"job_id={job}")
        assert console.count(f"job_id={job}") == 1  # one answer, posted once: no refused or repeated POST
        assert "refused" not in console and "409" not in console

