"""The README's first Quick start command keeps working: every scripted call gets its expected answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_quickstart_script_prints_each_outcome_and_exits_0() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "quickstart.py")], capture_output=True,
                          text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert '-> {"sum": 3}' in out
    assert "-> exception: ZeroDivisionError: division by zero" in out
    assert "-> timeout: function 'nap' ran past its timeout of 1s" in out
    assert "-> worker_died: the worker running function 'crash' was killed by SIGSEGV" in out
    assert "-> memory_limit: function 'hog' used" in out
    assert '-> {"sum": 42}' in out
