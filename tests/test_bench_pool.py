"""``scripts/bench_pool.py --quick`` runs to the end and prints its tables (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_pool.py"
SECTIONS = ["roundtrip", "throughput", "crash", "death", "timeout", "memory", "executor"]

pytestmark = pytest.mark.timeout(150)


def test_quick_run_prints_every_table_and_dumps_json(tmp_path: Path) -> None:
    dump = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(dump)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr[-3000:]
    for heading in ("### No-op round trip", "### Throughput", "### A task that calls os._exit(3)",
                    "### cmworker: a job that dies", "### cmworker: hard timeout", "### cmworker: memory limit",
                    "### Executors: submit -> result round trip", "### Executors: map throughput, chunksize 1",
                    "### Executors: map throughput, chunksize 100", "### Targets"):
        assert heading in run.stdout, heading
    assert "| cmworker.Pool" in run.stdout
    executors = run.stdout.split("### Executors", 1)[1]
    for name in ("| cmworker.Executor", "| ProcessPoolExecutor", "| loky", "| pebble.ProcessPool"):
        assert name in executors, name
    assert "Executor.map throughput, chunksize 1, within 10 %" in run.stdout
    assert "PASS" in run.stdout or "FAIL" in run.stdout
    assert "outlived its pool" not in run.stderr  # the script found none of its processes left behind
    results = json.loads(dump.read_text())["results"]
    assert sorted(results) == sorted(SECTIONS)
    assert sorted(results["executor"]["throughput"]) == ["chunksize 1", "chunksize 100"]
    assert len(results["executor"]["round_trip"]["cmworker.Executor"]["rounds"]) == 1
