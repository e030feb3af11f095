"""scripts/test-pythons, which runs the core subset (tests/core.txt) on the other Python versions: a version
the machine lacks is reported SKIPPED, never passed, and every entry of the subset names a real test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def core_entries() -> list[str]:
    lines = (ROOT / "tests" / "core.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_an_absent_python_is_reported_skipped_and_the_main_line_comes_first() -> None:
    done = subprocess.run([str(ROOT / "scripts" / "test-pythons"), "--main", "3.11.7   PASSED   whole suite"],
                          env={**os.environ, "CMWORKER_TEST_PYTHONS": "3.97 3.98"}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done
    summary = done.stdout.split("==================== Python versions ====================\n")[1].splitlines()
    assert summary[0] == "python 3.11.7   PASSED   whole suite"
    for minor, line in zip(("3.97", "3.98"), summary[1:3], strict=True):
        assert line.startswith(f"python {minor}     SKIPPED  no CPython {minor} on this machine"), line
        assert line.endswith("NOT TESTED"), line


def test_every_entry_of_the_core_subset_names_a_test() -> None:
    entries = core_entries()
    assert any(e.startswith("tests/test_pool.py") for e in entries)
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *entries], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    for entry in entries:
        assert any(line.startswith(entry) for line in collected), f"{entry} selects no test"
