"""The console of ``cmworker dev``, as a person reads it: one line per job in human units, the user's
traceback under a failed job, the last output under a crashed one, the functions and their limits at
start-up, and what Ctrl-C does. The SLS lines of ``cmworker run`` are not touched by any of it."""

from __future__ import annotations

import io
import json
import re
import signal
import time
from pathlib import Path

import pytest

from cmworker import logs
from cmworker.errors import JobError
from tests.dev_harness import dev_server

APP = '''
import ctypes
import sys
import time
import cmworker


@cmworker.function
def fine(context, event) -> dict:
    return {"x": 1}


@cmworker.function
def fails(context, event) -> int:
    raise ValueError("the input was bad")


@cmworker.function
def crashes(context, event) -> int:
    print("line one before the crash")
    print("line two before the crash", flush=True)
    ctypes.string_at(0)  # a real segfault
    return 0


@cmworker.function(timeout="1s")
def slow(context, event) -> int:
    time.sleep(30)
    return 0


@cmworker.function(memory_limit="64MiB")
def hog(context, event) -> int:
    block = bytearray(400 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(30)
    return len(block)


@cmworker.function
def waits(context, event) -> int:
    open(event["started"], "w").close()  # the job is in a worker now, not only handed out
    time.sleep(30)
    return 0
'''


def _line(console: str, function: str) -> tuple[str, str]:
    """The job_finished line of ``function``'s job and the indented text under it."""
    lines = console.splitlines()
    for i, line in enumerate(lines):
        if "job_finished" in line and f"function={function} " in line:
            below = []
            for after in lines[i + 1:]:
                if not after.startswith("    "):
                    break
                below.append(after[4:])
            return line, "\n".join(below)
    raise AssertionError(f"no job_finished line for {function}:\n{console}")


def test_the_console_shows_what_a_person_needs_for_each_outcome(tmp_path: Path) -> None:
    with dev_server(tmp_path, APP) as dev:
        console = dev.text()
        table = console[console.index("serving 6 function(s)"):]
        assert re.search(r"function\s+timeout\s+soft timeout\s+memory\s+max result", table)
        assert re.search(r"\n\s+hog\s+1h00m\s+none\s+64 MiB\s+32 MiB", table)
        assert re.search(r"\n\s+slow\s+1 s\s+none\s+none\s+32 MiB", table)

        assert dev.call("fine") == {"x": 1}
        for function in ("fails", "crashes", "slow", "hog", "nowhere"):
            with pytest.raises(JobError):
                dev.call(function)
        console = dev.wait_for("function=nowhere ")

        line, below = _line(console, "fine")
        assert "kind=ok" in line
        assert re.search(r" wall=[\d.]+ (µs|ms|s) ", line) and re.search(r" queued=[\d.]+ (µs|ms|s) ", line)
        assert re.search(r" result=\d+ B", line) and "_s=" not in line and "_bytes=" not in line
        assert below == ""

        line, below = _line(console, "fails")
        assert "kind=exception" in line
        assert re.search(r'File ".*app\.py", line \d+, in fails', below)
        assert below.rstrip().endswith("ValueError: the input was bad")
        assert "cmworker/" not in below  # the user's frames only

        line, below = _line(console, "crashes")
        assert "kind=worker_died" in line
        assert "SIGSEGV" in below
        assert "last output:" in below
        assert "line one before the crash" in below and "line two before the crash" in below
        assert "its stack:" in below and re.search(r'File ".*app\.py", line \d+ in crashes', below)

        line, below = _line(console, "slow")
        assert "kind=timeout" in line and " cpu=" not in line  # killed: the worker never said
        assert "ran past its timeout of 1s" in below

        line, below = _line(console, "hog")
        assert "kind=memory_limit" in line and " cpu=" not in line
        assert re.search(r"peak_rss=[\d.]+ MiB", line)
        assert "over its limit of 64MiB" in below

        line, below = _line(console, "nowhere")
        assert "kind=unknown_function" in line

        assert "thread(s) while it was imported" not in console  # the app starts none

        assert dev.stop(signal.SIGINT) == 0
        assert "stopping: no job is running" in dev.text()


def test_ctrl_c_with_a_job_running_says_how_long_it_waits_and_that_a_second_stops_it(tmp_path: Path) -> None:
    with dev_server(tmp_path, APP) as dev, dev.client() as client:
        started = tmp_path / "started"
        client.run("waits", {"started": str(started)})
        # The runtime calls a job running once it is handed out, a moment before the replica takes it:
        # the job is running here only once its function has begun.
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, dev.text()
            time.sleep(0.01)
        dev.proc.send_signal(signal.SIGINT)
        dev.wait_for("stopping: finishing running jobs (1) for up to 25 s; a second Ctrl-C or SIGTERM "
                     "stops them now")
        dev.proc.send_signal(signal.SIGINT)
        dev.wait_for("stopping now")
        assert dev.proc.wait(30) == 0


def test_console_notes_never_reach_sls_lines() -> None:
    """What the dev console adds to a job's line is dropped when the lines are SLS JSON (``cmworker run``)."""
    out = io.StringIO()
    logs.configure("sls", "INFO", stream=out)
    try:
        logs.note_job("j1", {"items": 3}, "a traceback")
        logs.get_logger("cmworker.poller").info("job_finished", job_id="j1", kind="ok", wall_s=0.5)
        line = json.loads(out.getvalue())
        assert line["params"] == {"job_id": "j1", "kind": "ok", "wall_s": 0.5, "session_id": None,
                                  "process_id": line["params"]["process_id"]}
        assert "a traceback" not in out.getvalue()
    finally:
        logs.configure("sls", "INFO")
