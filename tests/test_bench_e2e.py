"""scripts/bench_e2e.py keeps running: a --quick run against both clients prints every table and a verdict
per target, and leaves no client process behind. No timing is asserted: the numbers are the script's job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("### No-op burst", "### Idle latency", "### CPU-bound", "#### Between two jobs of a worker",
          "payload echoed", "### Streaming",
          "### Transport", "### Targets")


@pytest.mark.timeout(120)
def test_bench_e2e_quick_run_prints_its_tables(tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nwritten by hand\n\n<!-- bench_e2e.py --report: begin -->\nan older run\n"
                    "<!-- bench_e2e.py --report: end -->\n\nalso by hand\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--quick", "--json", str(raw),
                           "--report", str(tmp_path)], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in TABLES:
        assert heading in done.stdout, heading
    for row in ("official SDK 0.34.0", "cmworker", "bare `multiprocessing.Pool", "requests.Session",
                "urllib3.HTTPSConnectionPool", "http.client.HTTPSConnection"):
        assert row in done.stdout, row
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(("| PASS |", "| FAIL |"))]
    assert len(verdicts) == 6, done.stdout
    data = json.loads(raw.read_text())
    assert len(data["rounds"]) == 1 and {"sdk", "cmworker"} <= data["rounds"][0].keys()
    batches = data["rounds"][0]["cmworker"]["cpu_bound"]["batches"]
    assert [who for who, _wall in batches] == ["bare", "cmworker"]  # --quick: one pair
    cpu_bound = data["rounds"][0]["cmworker"]["cpu_bound"]
    for key in ("job_ms", "bare_job_ms"):  # each job reported its own start and end
        assert cpu_bound[key] > 0, key
    for key in ("idle_ms", "bare_idle_ms"):  # --quick: 6 jobs on 2 workers, so each worker ran more than one
        assert cpu_bound[key] >= 0, key
    assert len(data["targets"]) == 6
    assert data["client_processes"], "the script saw no client process"
    assert not [pid for pid, created in data["client_processes"] if _running(pid, created)]
    report = page.read_text()
    assert "written by hand" in report and "also by hand" in report and "an older run" not in report
    assert "### Targets" in report and "![cmworker against the official SDK](e2e-comparison.png)" in report
    assert (tmp_path / "e2e-comparison.png").read_bytes().startswith(b"\x89PNG")


def _running(pid: int, created: float) -> bool:
    try:
        return psutil.Process(pid).create_time() == created
    except psutil.NoSuchProcess:
        return False
