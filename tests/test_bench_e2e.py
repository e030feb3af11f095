"""scripts/bench_e2e.py keeps running: a --quick smoke run prints its tables (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_bench_e2e_quick_run_prints_its_tables() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--quick"],
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr
    for heading in ("### No-op burst", "### Transport", "### Targets"):
        assert heading in done.stdout
    assert "official SDK 0.34.0" in done.stdout and "http.client" in done.stdout
