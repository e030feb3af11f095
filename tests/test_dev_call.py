"""``cmworker call`` against a real ``cmworker dev``: streamed items printed as they arrive, one JSON value
a line; error answers printed readably (kind, message, the user's traceback, a crash's last output)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.dev_harness import WAIT, dev_server

APP = '''
import ctypes
import os
import time
from typing import Iterator
import cmworker


@cmworker.function(streaming=True)
def count(context, event) -> Iterator[int]:
    yield 0
    # The next items wait for the caller to have printed the first: a call that printed only at the
    # end would never let this go on (and the test times out).
    while not os.path.exists(event["gate"]):
        time.sleep(0.01)
    yield 1
    yield 2


@cmworker.function(streaming=True)
def breaks(context, event) -> Iterator[dict]:
    yield {"step": 1}
    raise RuntimeError("the stream broke")


@cmworker.function
def fails(context, event) -> int:
    raise ValueError("the input was bad")


@cmworker.function
def crashes(context, event) -> int:
    print("last words", flush=True)
    ctypes.string_at(0)
    return 0
'''


def test_streamed_items_are_printed_as_they_arrive_one_json_value_a_line(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with dev_server(tmp_path, APP) as dev:
        proc = subprocess.Popen([sys.executable, "-m", "cmworker", "call", "count", f'{{"gate": "{gate}"}}',
                                 "--timeout", str(WAIT)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "CMWORKER_STATE_DIR": str(dev.state)})
        assert proc.stdout is not None
        try:
            first = proc.stdout.readline()  # printed while the function still runs, waiting for the gate
            assert first == "0\n"
            assert proc.poll() is None
            gate.touch()
            assert proc.stdout.read() == "1\n2\n"  # scalars never run together
            assert proc.wait(WAIT) == 0
            line = dev.wait_for("function=count ").split("function=count ")[1].splitlines()[0]
            assert "kind=ok" in line and " items=3 streamed=3 B" in line and "result=" not in line
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_stream_that_fails_prints_its_items_then_the_error(tmp_path: Path) -> None:
    with dev_server(tmp_path, APP) as dev:
        done = dev.cli("call", "breaks")
        assert done.returncode == 1
        assert done.stdout == '{"step": 1}\n'
        assert done.stderr.startswith("stream_failed: ")
        assert "the stream broke" in done.stderr and "Traceback" not in done.stdout


def test_error_answers_print_kind_message_user_traceback_and_last_output(tmp_path: Path) -> None:
    with dev_server(tmp_path, APP) as dev:
        failed = dev.cli("call", "fails")
        assert failed.returncode == 1 and failed.stdout == ""
        lines = failed.stderr.splitlines()
        assert lines[0] == "exception: ValueError: the input was bad"
        assert lines[1] == "Traceback (most recent call last):"
        assert 'app.py", line' in lines[2] and lines[2].endswith("in fails")
        assert lines[-1] == "ValueError: the input was bad"
        assert "cmworker/" not in failed.stderr

        crashed = dev.cli("call", "crashes")
        assert crashed.returncode == 1
        lines = crashed.stderr.splitlines()
        assert lines[0].startswith("worker_died: ") and "SIGSEGV" in lines[0]
        assert lines[1:] == ["last output:", "  last words"]
