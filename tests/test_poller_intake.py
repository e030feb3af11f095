"""The poller's intake of raw GET bodies: whatever the runtime sends, the loop goes on, and every job
whose id is known gets an answer. Bodies are fed straight in: the embedded runtime never sends junk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cmworker.limits import JobLimits
from cmworker.replica.ledger import Outgoing
from cmworker.replica.poller import Poller, Settings
from cmworker.replica.service import Endpoints, Service

ENDPOINTS = Endpoints("127.0.0.1", 1, "/job", "/results", None, None, "t", "test", ())


def poller(tmp_path: Path) -> Poller:
    settings = Settings(workers=1, limits_for=lambda name, spec: JobLimits())
    p = Poller(str(tmp_path / "unused.py"), Service(ENDPOINTS), settings)
    p.pool.functions = ["echo"]
    p.pool.submit = lambda job: p.ledger.queue_answer(Outgoing(job.id, b"submitted", None))  # type: ignore[method-assign]
    return p


def drained(p: Poller) -> list[tuple[str, Any]]:
    p.ledger.close_outbox()
    out = []
    while (outgoing := p.ledger.next_answer()) is not None:
        body = outgoing.body
        out.append((outgoing.job_id, body if body == b"submitted" else json.loads(body)))
    return out


def job(**v1: Any) -> bytes:
    return json.dumps({"type": "computeModuleJobV1", "computeModuleJobV1": v1}).encode()


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"type": "computeModuleJobV1"}',
                                  job(queryType="echo", query=1), job(jobId=None, queryType="echo"),
                                  b"\xff\xfe\x00garbage"], ids=repr)
def test_a_job_without_a_usable_id_is_logged_and_skipped(tmp_path: Path, body: bytes,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    p = poller(tmp_path)
    p._accept(body)
    assert drained(p) == []
    assert len(p.ledger) == 0
    assert "without a usable jobId" in caplog.text


def test_missing_query_type_is_answered_invalid_input(tmp_path: Path) -> None:
    p = poller(tmp_path)
    p._accept(job(jobId="j1", query=1))
    [(job_id, payload)] = drained(p)
    assert (job_id, payload["kind"]) == ("j1", "invalid_input")
    assert "queryType" in payload["error"]


def test_unknown_function_is_answered_without_a_worker(tmp_path: Path) -> None:
    p = poller(tmp_path)
    p._accept(job(jobId="j2", queryType="nope", query=1))
    [(_job_id, payload)] = drained(p)
    assert payload["kind"] == "unknown_function" and payload["known"] == ["echo"]


def test_job_handed_out_twice_runs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = poller(tmp_path)
    p._accept(job(jobId="j3", queryType="echo", query=1))
    p._accept(job(jobId="j3", queryType="echo", query=1))
    assert drained(p) == [("j3", b"submitted")]
    assert "handed out again" in caplog.text


def test_a_numeric_job_id_is_used_as_text(tmp_path: Path) -> None:
    p = poller(tmp_path)
    p._accept(job(jobId=7, queryType="echo"))
    assert drained(p) == [("7", b"submitted")]


def test_type_field_may_be_absent(tmp_path: Path) -> None:
    p = poller(tmp_path)
    p._accept(json.dumps({"computeModuleJobV1": {"jobId": "j4", "queryType": "echo"}}).encode())
    assert drained(p) == [("j4", b"submitted")]
