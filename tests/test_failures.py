"""scripts/failures.py observes what a caller receives when a job crashes, raises or hangs, for real.

A quick subset of its scenarios runs through the script's own functions: both clients as subprocesses,
each on a fresh embedded runtime, with a short observation window and a 2 s cmworker timeout. The
assertions are on the answers the runtime's query API returned (and on the table the script writes from
them), never on durations.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("compute_modules")

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 8.0

pytestmark = pytest.mark.timeout(90)


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("failures_script", ROOT / "scripts" / "failures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def observed() -> tuple[Any, dict[tuple[str, str], Any], Any]:
    failures = load_script()
    settings = failures.Settings(window=WINDOW, timeout="2s")
    outcomes = failures.run_scenarios(["crash", "exception", "hang"], settings)
    return failures, {(o.scenario, o.client): o for o in outcomes}, settings


def payload(outcome: Any) -> dict[str, Any]:
    assert outcome.job is not None, f"{outcome.client} gave no answer to {outcome.scenario}"
    body = json.loads(outcome.job.body)
    assert isinstance(body, dict), body
    return body


@pytest.mark.parametrize(("scenario", "kind", "fact"), [
    ("crash", "worker_died", ("signal", "SIGSEGV")),
    ("exception", "exception", ("type", "ValueError")),
    ("hang", "timeout", ("timeout_s", 2.0)),
])
def test_cmworker_caller_gets_an_error_of_the_right_kind_and_the_next_job_is_served(
        observed: tuple[Any, dict[tuple[str, str], Any], Any], scenario: str, kind: str,
        fact: tuple[str, Any]) -> None:
    _, by, _ = observed
    outcome = by[(scenario, "cmworker")]
    answer = payload(outcome)
    assert outcome.job.status == "failed"
    assert answer["kind"] == kind
    assert answer[fact[0]] == fact[1]
    assert outcome.result_posts == [204]
    assert outcome.next_job is not None and outcome.next_job.status == "done"
    assert json.loads(outcome.next_job.body) == {"ok": True, "echo": {"after": scenario}}


@pytest.mark.parametrize("scenario", ["crash", "hang"])
def test_sdk_caller_gets_no_answer_within_the_window(observed: tuple[Any, dict[tuple[str, str], Any], Any],
                                                     scenario: str) -> None:
    _, by, _ = observed
    outcome = by[(scenario, "sdk")]
    assert outcome.handed_out_s is not None, "the SDK never took the job"
    assert outcome.job is None
    assert outcome.job_state == "running"
    assert outcome.result_posts == []


def test_the_exception_payloads_keep_the_sdk_field_and_cmworker_adds_kind_and_type(
        observed: tuple[Any, dict[tuple[str, str], Any], Any]) -> None:
    _, by, _ = observed
    sdk, ours = payload(by[("exception", "sdk")]), payload(by[("exception", "cmworker")])
    assert set(sdk) == {"exception"}
    assert set(ours) == {"exception", "kind", "type"}
    for body in (sdk, ours):
        assert body["exception"].startswith("boom on {'n': 1}: Traceback")


def test_the_table_is_written_from_the_observations(observed: tuple[Any, dict[tuple[str, str], Any], Any]) -> None:
    failures, by, settings = observed
    text = failures.report(list(by.values()), settings, "scripts/failures.py", "today")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    crash = rows["crash (segfault)"].split(" | ")
    assert crash[1].startswith(f"**no answer within {WINDOW:g} s**"), crash[1]
    assert crash[2].startswith("error `worker_died` at "), crash[2]
    assert "error `timeout` at " in rows["hang"]
    assert "payload `{exception}`" in rows["exception in the job"]
    assert "payload `{exception, kind, type}`" in rows["exception in the job"]


def test_no_client_process_outlives_the_run(observed: tuple[Any, dict[tuple[str, str], Any], Any]) -> None:
    failures, _, _ = observed
    assert failures.STARTED, "the script saw no client process"
    alive = []
    for pid, created in failures.STARTED:
        try:
            if psutil.Process(pid).create_time() == created:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    assert not alive
