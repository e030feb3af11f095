"""scripts/bench_e2e.py keeps running: a --quick run against both clients (and the thin reference client)
prints every table and a verdict per target, and leaves no client process behind; its options refuse what
they cannot do. No timing is asserted: the numbers are the script's job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_e2e.py"
TABLES = ("### No-op burst", "### Idle latency", "### CPU-bound", "#### Between two jobs of a worker",
          "### Jobs that wait", "### Large payloads", "### Streaming", "### Transport", "### Targets")
PINNABLE = {0, 1} <= os.sched_getaffinity(0)
# noop 3, logging 1, co-located CPU-bound 2, pinned 1, waiting at 2 workers 1 (the 8-worker check is not
# run), payload 3, streaming 2
TARGETS = 13 if PINNABLE else 12


@pytest.mark.timeout(120)
def test_bench_e2e_quick_run_prints_its_tables(tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nwritten by hand\n\n<!-- bench_e2e.py --report: begin -->\nan older run\n"
                    "<!-- bench_e2e.py --report: end -->\n\nalso by hand\n")
    # One waiting size keeps this run within seconds of what it took before the waiting row existed.
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--waiting-workers", "2", "--json", str(raw),
                           "--report", str(tmp_path)], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in (*TABLES, *(("### CPU-bound, pinned",) if PINNABLE else ())):
        assert heading in done.stdout, heading
    for row in ("official SDK 0.34.0", "cmworker", "thin client", "bare `multiprocessing.Pool", "requests.Session",
                "urllib3.HTTPSConnectionPool", "http.client.HTTPSConnection"):
        assert row in done.stdout, row
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(("| PASS |", "| FAIL |"))]
    assert len(verdicts) == TARGETS, done.stdout
    data = json.loads(raw.read_text())
    assert len(data["rounds"]) == 1 and {"sdk", "cmworker"} <= data["rounds"][0].keys()
    batches = data["rounds"][0]["cmworker"]["cpu_bound"]["batches"]
    assert [who for who, _wall in batches] == ["bare", "cmworker"]  # --quick: one pair
    cpu_bound = data["rounds"][0]["cmworker"]["cpu_bound"]
    for key in ("job_ms", "bare_job_ms"):  # each job reported its own start and end
        assert cpu_bound[key] > 0, key
    for key in ("idle_ms", "bare_idle_ms"):  # --quick: 6 jobs on 2 workers, so each worker ran more than one
        assert cpu_bound[key] >= 0, key
    _assert_new_rows(data["rounds"][0])
    assert len(data["targets"]) == TARGETS
    assert data["client_processes"], "the script saw no client process"
    assert not [pid for pid, created in data["client_processes"] if _running(pid, created)]
    report = page.read_text()
    assert "written by hand" in report and "also by hand" in report and "an older run" not in report
    assert "### Targets" in report and "![cmworker against the official SDK](e2e-comparison.png)" in report
    assert (tmp_path / "e2e-comparison.png").read_bytes().startswith(b"\x89PNG")


def _assert_new_rows(results: dict[str, Any]) -> None:
    """The payload, waiting and pinned rows measured what they say, on every client."""
    for row in ("echo", "result"):
        for kind in ("thin", "sdk", "cmworker"):
            jobs = results["payload"][row][kind]
            assert len(jobs["wall_s"]) == 1 and jobs["mb"][0] >= 2, (row, kind)  # --quick: one 2 MB job
            assert set(jobs["cpu_s"][0]) >= {"parent", "total"}, (row, kind)
    rss = results["payload"]["rss"]
    assert rss["before_mb"] > 0 and rss["after_mb"] > 0 and len(rss["wall_s"]) == 3
    for kind in ("sdk", "cmworker", "thin"):
        waiting = results["waiting"]["2"][kind]
        assert waiting["wall_s"] > 0 and waiting["bare_wall_s"] > 0, kind
        # 6 jobs on 2 workers (the thin client's: 2 loops): one ran at least 3, so there are hand-offs
        # to measure, all >= 0
        assert waiting["handoff_ms"] and min(waiting["handoff_ms"]) >= 0, kind
        assert waiting["bare_handoff_ms"] and min(waiting["bare_handoff_ms"]) >= 0, kind
        if PINNABLE and kind != "thin":
            assert [who for who, _wall in results["pinned"][kind]["batches"]] == ["bare", kind]


@pytest.mark.parametrize(("args", "complaint"), [
    (["--only", "noop,bogus"], "unknown group(s) ['bogus']"),
    (["--only", "payload", "--report"], "--report writes every table"),
    (["--waiting-workers", "2,0"], "want worker counts"),
])
def test_bench_e2e_refuses_options_it_cannot_honour(args: list[str], complaint: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and complaint in done.stderr, done.stderr


def _running(pid: int, created: float) -> bool:
    try:
        return psutil.Process(pid).create_time() == created
    except psutil.NoSuchProcess:
        return False
