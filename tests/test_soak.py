"""The soak (scripts/soak.py) at 2,000 jobs: a real ``cmworker run`` under a mix of good and failing jobs
while the embedded runtime injects faults. One run per module; each test checks one target against
the numbers it produced (the runtime's own record, /proc of the ``cmworker run`` process)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOBS = 2_000
# Every no-op carries 10 KB: whatever the parent keeps per finished job then shows in its RSS, well
# above the 5 MB target after 1,800 jobs.
PAD = 10_000

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _load_soak() -> Any:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


soak = _load_soak()


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return soak.run_soak(JOBS, workers=4, interval=2.0, pad=PAD, stall=60.0, echo=lambda line: None)


def test_every_job_is_answered_exactly_once_with_its_expected_answer(result: dict[str, Any]) -> None:
    assert result["accepted_posts_per_job"] == {"1": JOBS}
    assert result["wrong_answers"] == 0, result["wrong_examples"]
    assert result["unexpected_jobs"] == 0
    assert result["restart_notifications"] == [[]]  # cmworker run started once and never dropped a job


def test_every_failure_kind_of_the_mix_occurred(result: dict[str, Any]) -> None:
    """The mix really contains what the soak claims: each function answered with its one expected status."""
    by_function = result["answers_by_function"]
    for function, share in soak.MIX:
        status = "done" if function in ("noop", "cpu", "stream") else "failed"
        assert by_function.get(f"{function}: {status}", 0) >= JOBS * share // 100, by_function


def test_every_injected_fault_fired_and_was_consumed(result: dict[str, Any]) -> None:
    assert len(result["faults"]) == len(soak.FAULTS)
    assert result["pending_faults"] == []
    statuses = result["result_post_statuses"]
    assert statuses.get("0") == 1 and statuses.get("502") == 5 and statuses.get("503") == 3, statuses


def test_no_fd_is_leaked_and_the_pool_is_whole_and_reaped(result: dict[str, Any]) -> None:
    before, after = result["before"], result["after"]
    assert after["fds"] <= before["fds"], (before["fd_targets"], after["fd_targets"])
    assert after["descendants"] == before["descendants"] == 4 + 1  # the template and its 4 workers
    assert after["zombies"] == []
    assert after["threads"] <= before["threads"]


def test_sigterm_exits_0_and_leaves_no_process_behind(result: dict[str, Any]) -> None:
    assert result["exit_code"] == 0
    assert result["leftover_processes"] == []
    assert result["descendants_seen"] > 4 + 1  # workers respawned after deaths were seen, and are gone too


def test_parent_rss_grows_less_than_5_mb_after_warm_up(result: dict[str, Any]) -> None:
    growth = result["after"]["rss"] - result["before"]["rss"]
    assert growth < soak.RSS_TARGET, f"parent RSS grew {growth / 1e6:.1f} MB"
