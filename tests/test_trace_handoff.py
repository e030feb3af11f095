"""scripts/trace_handoff.py: the hand-off steps are joined correctly, and a short real run prints them all.
No timing is asserted: the numbers are the script's job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import trace_handoff  # noqa: E402


def test_steps_of_one_worker_are_joined_in_order_and_interleaved_ones_are_counted() -> None:
    jobs = {"a": [0.0, 1.0, 7, 0], "b": [1.010, 2.0, 7, 0],   # worker 7: a then b
            "c": [0.0, 1.5, 8, 0], "d": [1.520, 3.0, 8, 0],   # worker 8: c then d, from a GET sent early
            "e": [5.0, 6.0, 7, 1]}                             # worker 7 again, in the next batch
    poll_1, poll_2 = 1, 2  # two poll threads
    marks = [
        [1.001, "answer", "a", 0], [1.002, "get_start", "", poll_1], [1.003, "post_start", "a", 9],
        [1.004, "get_end", "", poll_1], [1.005, "submit", "b", poll_1], [1.006, "post_end", "a", 9],
        [1.499, "get_start", "", poll_2],  # before c's answer was in: another worker's turn
        [1.501, "answer", "c", 0], [1.502, "post_start", "c", 9],
        [1.505, "get_end", "", poll_2], [1.506, "submit", "d", poll_2], [1.507, "post_end", "c", 9],
        [2.001, "answer", "b", 0], [2.002, "post_start", "b", 9], [2.003, "post_end", "b", 9],
        [4.0, "get_start", "", poll_1], [5.0, "get_end", "", poll_1], [5.0, "submit", "e", poll_1],
    ]
    rows, interleaved = trace_handoff.hand_offs(sorted(marks), jobs)
    # answer, GET sent, GET answered, handed over, started; then the POST sent and answered beside it
    assert rows == [pytest.approx([1.0, 2.0, 4.0, 5.0, 10.0, 3.0, 6.0])]
    assert interleaved == 1


@pytest.mark.timeout(120)
def test_a_short_run_prints_every_step() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "trace_handoff.py"), "--batches", "2",
                           "--jobs", "8", "--job-ms", "20"], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in (*trace_handoff.STEPS, "job end to next job start"):
        assert re.search(rf"\| \**{re.escape(step)}\** \| [\d.]+ \| [\d.]+ \|", done.stdout), step
    found = re.search(r"^(\d+) hand-offs", done.stdout, re.M)
    assert found and int(found.group(1)) > 0, done.stdout
