"""``scripts/bench_pool.py --quick`` runs to the end and prints its tables (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_pool.py"
SECTIONS = ["roundtrip", "throughput", "crash", "death", "timeout", "memory"]

pytestmark = pytest.mark.timeout(150)


def test_quick_run_prints_every_table_and_dumps_json(tmp_path: Path) -> None:
    dump = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(dump)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr[-3000:]
    for heading in ("### No-op round trip", "### Throughput", "### A task that calls os._exit(3)",
                    "### cmworker: a job that dies", "### cmworker: hard timeout", "### cmworker: memory limit",
                    "### Targets"):
        assert heading in run.stdout, heading
    assert "| cmworker.Pool" in run.stdout
    assert "PASS" in run.stdout or "FAIL" in run.stdout
    assert "outlived its pool" not in run.stderr  # the script found none of its processes left behind
    assert sorted(json.loads(dump.read_text())["results"]) == sorted(SECTIONS)
