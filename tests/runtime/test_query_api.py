"""The callers' side: the query API over HTTPS, ``cmworker.Client`` on top of it, and discovery."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

import cmworker
from cmworker.errors import (
    InvalidInput,
    JobDropped,
    JobError,
    JobTimeout,
    MemoryLimitExceeded,
    RemoteException,
    ResultNotSerializable,
    ResultTooLarge,
    RuntimeUnavailable,
    ShuttingDown,
    StreamFailed,
    UnknownFunction,
    WorkerDied,
)
from cmworker.runtime.client import Client, decode_answer
from cmworker.runtime.discovery import publish, withdraw
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.runtime.helpers import DEADLINE, Module, Replica


def api(runtime: EmbeddedRuntime, token: str | None = None) -> requests.Session:
    """A plain requests session on the query API (what any HTTP caller would use)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(runtime.ca_path)
    session.headers["Authorization"] = f"Bearer {runtime.caller_token if token is None else token}"
    return session


def answer_with(runtime: EmbeddedRuntime, body: bytes) -> str:
    """Submit a job and answer it with ``body`` through the module endpoints; return its id."""
    job_id = runtime.submit("f", {})
    module = Module(runtime)
    status, job = module.get_job()
    assert status == 200 and job is not None and job["jobId"] == job_id
    assert module.post_result(job_id, body).status == 204
    return job_id


# -- the HTTP contract ---------------------------------------------------------------------------


def test_submit_one_query_returns_its_job_id(runtime: EmbeddedRuntime) -> None:
    response = api(runtime).post(f"{runtime.query_url}/api/v1/jobs", json={"queryType": "f", "query": {"a": 1}})
    assert response.status_code == 200
    job_id = response.json()["jobId"]
    assert runtime.record.job(job_id).query_type == "f"  # type: ignore[union-attr]


def test_submit_a_batch_returns_ids_in_order(runtime: EmbeddedRuntime) -> None:
    batch = [{"queryType": "f", "query": i} for i in range(3)]
    response = api(runtime).post(f"{runtime.query_url}/api/v1/jobs", json=batch)
    ids = response.json()["jobIds"]
    assert [job.id for job in runtime.record.jobs()] == ids


@pytest.mark.parametrize("body", [b"not json", b'{"query": 1}', b'{"queryType": ""}', b'[{"queryType": 5}]',
                                  b'{"queryType": "f", "userId": 7}', b'"f"'])
def test_malformed_submissions_are_400_and_queue_nothing(runtime: EmbeddedRuntime, body: bytes) -> None:
    response = api(runtime).post(f"{runtime.query_url}/api/v1/jobs", data=body)
    assert response.status_code == 400 and response.json()["error"]
    assert runtime.record.jobs() == []


@pytest.mark.parametrize("token", ["", "wrong"])
def test_query_api_wants_the_caller_token(runtime: EmbeddedRuntime, token: str) -> None:
    response = api(runtime, token).get(f"{runtime.query_url}/api/v1/functions")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


def test_module_token_does_not_open_the_query_api(runtime: EmbeddedRuntime) -> None:
    response = api(runtime, Module(runtime).token).get(f"{runtime.query_url}/api/v1/functions")
    assert response.status_code == 401


def test_status_follows_the_job_from_queued_to_done(runtime: EmbeddedRuntime) -> None:
    client, module = runtime.client(), Module(runtime)
    job_id = client.run("f", {})
    assert client.status(job_id) == "queued"
    module.get_job()
    assert client.status(job_id) == "running"
    module.post_result(job_id, b"1")
    assert client.status(job_id) == "done"


def test_answer_of_an_unfinished_job_is_202_with_its_status(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    response = api(runtime).get(f"{runtime.query_url}/api/v1/jobs/{job_id}/answer", params={"wait": "0"})
    assert response.status_code == 202
    assert response.json() == {"jobId": job_id, "queryType": "f", "status": "queued", "replica": None}


def test_answer_is_the_raw_bytes_the_module_posted(runtime: EmbeddedRuntime) -> None:
    job_id = answer_with(runtime, b'{"x":  1}\n')
    response = api(runtime).get(f"{runtime.query_url}/api/v1/jobs/{job_id}/answer")
    assert response.status_code == 200 and response.content == b'{"x":  1}\n'
    assert response.headers["Cmworker-Job-Status"] == "done"


def test_an_error_answer_marks_the_job_failed_and_is_still_returned_raw(runtime: EmbeddedRuntime) -> None:
    body = WorkerDied("worker 12 died of SIGKILL", signal="SIGKILL").to_bytes()
    job_id = answer_with(runtime, body)
    response = api(runtime).get(f"{runtime.query_url}/api/v1/jobs/{job_id}/answer")
    assert response.headers["Cmworker-Job-Status"] == "failed" and response.content == body
    assert runtime.client().status(job_id) == "failed"


def test_batch_answers_carry_text_or_base64(runtime: EmbeddedRuntime) -> None:
    text_id = answer_with(runtime, b'"hello"')
    binary_id = answer_with(runtime, b"\xff\x00binary")
    pending_id = runtime.submit("f")
    response = api(runtime).post(f"{runtime.query_url}/api/v1/answers",
                                 json={"jobIds": [text_id, binary_id, pending_id], "wait": 0})
    text, binary, pending = response.json()["answers"]
    assert text["answer"] == '"hello"' and text["status"] == "done"
    assert base64.b64decode(binary["answerBase64"]) == b"\xff\x00binary"
    assert pending["status"] == "queued" and "answer" not in pending


def test_batch_answers_of_unknown_jobs_are_404(runtime: EmbeddedRuntime) -> None:
    response = api(runtime).post(f"{runtime.query_url}/api/v1/answers", json={"jobIds": ["nope"]})
    assert response.status_code == 404


def test_unknown_job_status_is_404(runtime: EmbeddedRuntime) -> None:
    assert api(runtime).get(f"{runtime.query_url}/api/v1/jobs/nope").status_code == 404


def test_bad_wait_is_400(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    for wait in ("-1", "soon", "nan"):
        response = api(runtime).get(f"{runtime.query_url}/api/v1/jobs/{job_id}/answer", params={"wait": wait})
        assert response.status_code == 400


# -- cmworker.Client ----------------------------------------------------------------------------


def test_client_is_exported_lazily_by_the_package() -> None:
    assert cmworker.Client is Client


def test_call_returns_the_decoded_result(runtime: EmbeddedRuntime) -> None:
    with Replica(runtime), runtime.client() as client:
        assert client.call("echo", {"a": [1, 2]}, timeout=DEADLINE) == {"echo": {"a": [1, 2]}}


def test_run_without_payload_sends_an_empty_object(runtime: EmbeddedRuntime) -> None:
    with Replica(runtime), runtime.client() as client:
        assert client.call("echo", timeout=DEADLINE) == {"echo": {}}


@pytest.mark.parametrize("error", [
    JobTimeout("ran past its 5 s timeout", timeout_s=5),
    MemoryLimitExceeded("used 3 GiB of its 2 GiB limit", limit_bytes=2 << 30, rss_bytes=3 << 30),
    WorkerDied("worker died of SIGSEGV", signal="SIGSEGV"),
    UnknownFunction("no function named nope"),
    InvalidInput("missing field x"),
    ResultNotSerializable("set is not JSON"),
    ResultTooLarge("40 MiB is over the limit"),
    ShuttingDown("cmworker stopped"),
    StreamFailed("raised after 3 items"),
    RemoteException("division by zero", type="ZeroDivisionError", traceback="Traceback (most recent...)"),
], ids=lambda error: error.kind)
def test_get_result_reraises_error_answers_as_typed_exceptions(runtime: EmbeddedRuntime, error: JobError) -> None:
    job_id = answer_with(runtime, error.to_bytes())
    with pytest.raises(type(error)) as raised:
        runtime.client().get_result(job_id, timeout=DEADLINE)
    assert raised.value.message == error.message and raised.value.details == error.details


def test_sdk_exception_answer_becomes_remote_exception(runtime: EmbeddedRuntime) -> None:
    job_id = answer_with(runtime, json.dumps({"exception": "boom: Traceback (most recent call last):\n"}).encode())
    with pytest.raises(RemoteException, match="boom"):
        runtime.client().get_result(job_id, timeout=DEADLINE)


def test_sdk_unknown_query_answer_becomes_unknown_function(runtime: EmbeddedRuntime) -> None:
    job_id = answer_with(runtime, b'{"error": "Unknown query type"}')
    with pytest.raises(UnknownFunction):
        runtime.client().get_result(job_id, timeout=DEADLINE)


def test_get_result_times_out_with_the_builtin_timeout_error(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.client().run("nobody-serves-this", {})
    with pytest.raises(TimeoutError, match="queued"):
        runtime.client().get_result(job_id, timeout=0.2)


def test_get_result_of_an_unknown_job_is_a_lookup_error(runtime: EmbeddedRuntime) -> None:
    with pytest.raises(LookupError):
        runtime.client().get_result("nope", timeout=1)


def test_batch_run_and_get_batch_result_keep_order_and_return_errors(runtime: EmbeddedRuntime) -> None:
    def answer(job: dict[str, Any]) -> bytes:
        n = job["query"]["n"]
        return WorkerDied(f"died on {n}").to_bytes() if n == 2 else json.dumps(n * 10).encode()

    with Replica(runtime, answer=answer), runtime.client() as client:
        ids = client.batch_run([("f", {"n": n}) for n in range(4)])
        results = client.get_batch_result(ids, timeout=DEADLINE)
    assert results[:2] == [0, 10] and results[3] == 30
    assert isinstance(results[2], WorkerDied) and results[2].message == "died on 2"


def test_get_batch_result_times_out(runtime: EmbeddedRuntime) -> None:
    client = runtime.client()
    ids = client.batch_run([("f", {}), ("f", {})])
    with pytest.raises(TimeoutError, match="2 of 2"):
        client.get_batch_result(ids, timeout=0.2)


def test_map_returns_results_in_order_and_raises_the_first_error(runtime: EmbeddedRuntime) -> None:
    def answer(job: dict[str, Any]) -> bytes:
        x = job["query"]
        return JobTimeout(f"slow {x}").to_bytes() if x < 0 else json.dumps(x * x).encode()

    with Replica(runtime, answer=answer), runtime.client() as client:
        assert client.map("square", [1, 2, 3], timeout=DEADLINE) == [1, 4, 9]
        with pytest.raises(JobTimeout, match="slow -1"):
            client.map("square", [1, -1, -2], timeout=DEADLINE)


def test_dropped_job_raises_job_dropped(runtime: EmbeddedRuntime) -> None:
    client = runtime.client()
    job_id = client.run("f", {})
    Module(runtime).get_job()
    Module(runtime).restart_notification()
    with pytest.raises(JobDropped):
        client.get_result(job_id, timeout=DEADLINE)


def test_client_ignores_ca_bundle_and_proxy_settings_of_the_environment(
        runtime: EmbeddedRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus-ca.pem"
    bogus.write_text("not a certificate")
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(bogus))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there
    with Replica(runtime), runtime.client() as client:
        assert client.call("echo", {"ok": True}, timeout=DEADLINE) == {"echo": {"ok": True}}


def test_client_verifies_the_runtime_certificate(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    other = EmbeddedRuntime().start()  # a different CA
    try:
        with pytest.raises(RuntimeUnavailable):
            Client(runtime.query_url, token=runtime.caller_token, ca=other.ca_path).run("f", {})
    finally:
        other.stop()


def test_client_with_the_wrong_token_raises_runtime_unavailable(runtime: EmbeddedRuntime) -> None:
    with pytest.raises(RuntimeUnavailable, match="token"):
        Client(runtime.query_url, token="wrong", ca=runtime.ca_path).run("f", {})


# -- discovery -------------------------------------------------------------------------------------


def test_client_without_arguments_finds_the_announced_runtime(
        runtime: EmbeddedRuntime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CMWORKER_STATE_DIR", str(tmp_path))
    path = publish(runtime)
    assert path == tmp_path / "runtime.json" and (path.stat().st_mode & 0o777) == 0o600
    with Replica(runtime), Client() as client:
        assert client.call("echo", 5, timeout=DEADLINE) == {"echo": 5}
    withdraw(path)
    assert not path.exists()


def test_client_says_clearly_when_no_runtime_is_running(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnavailable, match="no embedded runtime is running"):
        Client(state_dir=tmp_path)


def test_a_stale_announcement_of_a_dead_runtime_is_recognised(
        make_runtime: Callable[..., EmbeddedRuntime], tmp_path: Path) -> None:
    path = publish(make_runtime(), tmp_path)
    (tmp_path / "runtimes" / f"{os.getpid()}.json").unlink()  # the only runtime registered is the dead one
    data = json.loads(path.read_text())
    data["pid"] = _dead_pid()
    path.write_text(json.dumps(data))
    with pytest.raises(RuntimeUnavailable, match="has exited"):
        Client(state_dir=tmp_path)


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# -- answer decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"a": 1}', {"a": 1}),
    (b'"text"', "text"),
    (b'{"a": 1}{"a": 2}', [{"a": 1}, {"a": 2}]),  # a streaming function's concatenated chunks
    (b'["x"] ["y"]', [["x"], ["y"]]),
    (b"", []),  # a stream that yielded nothing
    (b"\xff\xfe raw", b"\xff\xfe raw"),
    (b"{broken", b"{broken"),
])
def test_decode_answer(raw: bytes, expected: Any) -> None:
    assert decode_answer(raw) == expected
