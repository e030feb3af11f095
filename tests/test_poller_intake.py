"""The poller's intake of raw GET bodies (``parse_job``): whatever the runtime sends, the loop goes on,
and every job whose id is known gets an answer. Bodies are fed straight in: the embedded runtime never
sends junk."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest

from cmworker.app.envelope import FULL_PARSE_BELOW
from cmworker.config import load_config
from cmworker.replica.intake import Accepted, Immediate, Intake, Refused, parse_job
from cmworker.replica.ledger import Ledger
from cmworker.replica.poller import Poller
from cmworker.replica.service import Service, discover
from cmworker.runtime.client import decode_answer
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS

FUNCTIONS = ["echo"]
WAIT = 30.0


def job(**v1: Any) -> bytes:
    return json.dumps({"type": "computeModuleJobV1", "computeModuleJobV1": v1}).encode()


def payload(intake: Intake) -> dict[str, Any]:
    """The answer posted at once for ``intake``, as the runtime receives it."""
    assert isinstance(intake, Immediate), intake
    answer: dict[str, Any] = json.loads(intake.error.to_bytes())
    return answer


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"type": "computeModuleJobV1"}',
                                  job(queryType="echo", query=1), job(jobId=None, queryType="echo"),
                                  b"\xff\xfe\x00garbage"], ids=repr)
def test_a_job_without_a_usable_id_is_logged_and_skipped(body: bytes) -> None:
    intake = parse_job(body, FUNCTIONS, held=())
    assert isinstance(intake, Refused)  # no answer, and nothing held
    assert "without a usable jobId" in intake.problem


def test_missing_query_type_is_answered_invalid_input() -> None:
    intake = parse_job(job(jobId="j1", query=1), FUNCTIONS, held=())
    assert isinstance(intake, Immediate) and intake.job_id == "j1"
    assert payload(intake)["kind"] == "invalid_input"
    assert "queryType" in payload(intake)["error"]


def test_unknown_function_is_answered_without_a_worker() -> None:
    answer = payload(parse_job(job(jobId="j2", queryType="nope", query=1), FUNCTIONS, held=()))
    assert answer["kind"] == "unknown_function" and answer["known"] == ["echo"]


def test_job_handed_out_twice_runs_once() -> None:
    ledger = Ledger()
    body = job(jobId="j3", queryType="echo", query=1)
    first = parse_job(body, FUNCTIONS, ledger)
    assert first == Accepted("j3", "echo")
    assert ledger.accept(first.job_id, first.function) is not None
    again = parse_job(body, FUNCTIONS, ledger)
    assert isinstance(again, Refused) and "handed out again" in again.problem


def test_a_numeric_job_id_is_used_as_text() -> None:
    assert parse_job(job(jobId=7, queryType="echo"), FUNCTIONS, held=()) == Accepted("7", "echo")


def test_type_field_may_be_absent() -> None:
    body = json.dumps({"computeModuleJobV1": {"jobId": "j4", "queryType": "echo"}}).encode()
    assert parse_job(body, FUNCTIONS, held=()) == Accepted("j4", "echo")


def test_any_function_is_let_through_while_the_apps_are_unknown() -> None:
    assert parse_job(job(jobId="j5", queryType="later"), [], held=()) == Accepted("j5", "later")


def test_a_job_taken_while_stopping_is_answered_shutdown() -> None:
    intake = parse_job(job(jobId="j6", queryType="echo"), FUNCTIONS, held=(), stopping=True)
    assert payload(intake)["kind"] == "shutdown"


def test_a_jobs_credentials_come_with_it_with_and_without_their_scheme() -> None:
    body = job(jobId="j7", queryType="echo", authHeader="bearer user-token", temporaryCredentialsAuthToken="temp")
    assert parse_job(body, FUNCTIONS, held=()) == Accepted("j7", "echo", ("bearer user-token", "user-token", "temp"))


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"computeModuleJobV1": {"jobId": "j8", "query": ' + b"[" * 5000 + b"]" * 5000 + b"}}", "nested"),
    (b'{"computeModuleJobV1": {"jobId": "j8", "query": "\xff"}}', "not UTF-8"),
    (b'{"computeModuleJobV1": {"jobId": "j8", "query": }', "not valid JSON"),
], ids=["deep", "bytes", "syntax"])
def test_an_unreadable_body_that_names_its_job_is_answered_invalid_input(body: bytes, reason: str) -> None:
    intake = parse_job(body, FUNCTIONS, held=())
    assert isinstance(intake, Immediate) and intake.job_id == "j8"
    assert payload(intake)["kind"] == "invalid_input" and reason in payload(intake)["error"]


def test_an_unreadable_body_of_a_job_held_already_gets_no_second_answer() -> None:
    intake = parse_job(b'{"computeModuleJobV1": {"jobId": "j9", ', FUNCTIONS, held={"j9"})
    assert isinstance(intake, Refused)


# -- the limits a taken job runs under, from a poller running in this process ---------------------

@pytest.mark.timeout(120)
def test_the_limits_a_function_declared_reach_its_jobs() -> None:
    """``cleans_up_on_soft_timeout`` declares a soft timeout of 0.2s and the configuration sets none: the
    parent learns the declaration from the template, so the job gets its JobTimeout and cleans up."""
    flags = {"app": os.path.join(APPS, "misbehave.py"), "workers": 1, "limits.timeout": 10,
             "logging.stats_interval": "none", "worker_nice": 0}
    with EmbeddedRuntime(long_poll=0.5) as rt:
        poller = Poller(load_config(flags=flags, environ={}, cwd=APPS), Service(discover(rt.env(0))))
        thread = threading.Thread(target=poller.run, daemon=True)
        thread.start()
        try:
            [finished] = rt.store.wait_finished([rt.submit("cleans_up_on_soft_timeout", None)], WAIT)
        finally:
            poller.stop()
            thread.join(WAIT)
    assert not thread.is_alive()
    assert finished is not None and finished.answer is not None, finished
    assert decode_answer(finished.answer) == "cleaned up"


# -- the envelope's head: the parent reads the id and function there, without parsing the query ---------

def test_the_query_is_not_parsed_by_the_parent() -> None:
    # A query that is not JSON at all: the ends name the job, the worker will find the query unreadable.
    # (A body under FULL_PARSE_BELOW is parsed in full: json is quicker there.)
    body = job(jobId="j1", queryType="echo", query=0, userId="u" * FULL_PARSE_BELOW).replace(
        b'"query": 0', b'"query": [1, 2, {{{')
    assert parse_job(body, FUNCTIONS, set()) == Accepted("j1", "echo")


@pytest.mark.parametrize("body", [
    job(jobId="outer", queryType="echo", query={"jobId": "inner", "queryType": "other"}),  # keys in the query
    job(queryType="echo", query={"jobId": "inner"}, jobId="outer"),                        # id after the query
    job(jobId="first", queryType="echo", query=1).replace(b"}}", b', "jobId": "second"}}'),  # a duplicate key
    job(jobId="j\u00e9\\\"q", queryType="echo", query=1),                                     # escapes in the id
    json.dumps({"computeModuleJobV1": {"jobId": 7, "queryType": "echo", "query": 1}}).encode(),  # a number
    b'{"computeModuleJobV1": {"jobId": "a", "queryType": "echo", "query": 1}, "type": "computeModuleJobV1"}',
], ids=repr)
def test_every_shape_is_read_as_a_full_parse_reads_it(body: bytes) -> None:
    document = json.loads(body)["computeModuleJobV1"]
    assert parse_job(body, FUNCTIONS, set()) == Accepted(str(document["jobId"]), "echo")


@pytest.mark.parametrize("query", [{"x": 1}, {"x": "x" * FULL_PARSE_BELOW}], ids=["parsed in full", "from the ends"])
def test_credentials_after_the_query_are_found_as_secrets(query: Any) -> None:
    body = job(jobId="j1", queryType="echo", query=query, temporaryCredentialsAuthToken="temp-creds-1234",
               authHeader="Bearer auth-header-5678")
    intake = parse_job(body, FUNCTIONS, set())
    assert isinstance(intake, Accepted)
    assert {"temp-creds-1234", "Bearer auth-header-5678", "auth-header-5678"} <= set(intake.secrets)


def test_a_held_job_read_from_the_head_is_refused_as_a_duplicate() -> None:
    intake = parse_job(job(jobId="j1", queryType="echo", query=1), FUNCTIONS, {"j1"})
    assert isinstance(intake, Refused) and intake.duplicate
