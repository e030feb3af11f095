"""The module endpoints, as a replica's client sees them (DESIGN §2), over real HTTPS on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable

import pytest

from cmworker.errors import JobDropped
from cmworker.runtime.embedded import EmbeddedRuntime
from cmworker.runtime.server import JOB_PATH, RESTART_PATH, RESULTS_PATH, SCHEMAS_PATH
from tests.runtime.helpers import DEADLINE, Module, raw_exchange, run_in_thread, status_of, wait_until

SCHEMA = {"functionName": "add", "inputs": [], "output": {"type": "single", "single": {
    "dataType": {"type": "integer", "integer": {}}}}, "ontologyProvenance": None}


def handed_out(runtime: EmbeddedRuntime, module: Module, query: object = None) -> dict[str, object]:
    """Submit one job and take it on ``module``."""
    job_id = runtime.submit("echo", query)
    status, job = module.get_job()
    assert status == 200 and job is not None and job["jobId"] == job_id
    return job


# -- the environment and files a replica gets --------------------------------------------------


def test_env_names_every_variable_foundry_injects(runtime: EmbeddedRuntime) -> None:
    env = runtime.env()
    assert set(env) == {"GET_JOB_URI", "POST_RESULT_URI", "POST_SCHEMA_URI", "RESTART_NOTIFICATION_URI",
                        "RUNTIME_HOST", "RUNTIME_PORT", "MODULE_AUTH_TOKEN", "CONNECTIONS_TO_OTHER_PODS_CA_PATH",
                        "DEFAULT_CA_PATH", "MAX_CONCURRENT_TASKS", "COMPUTE_SESSION_ID", "CONNECTION_TO_RUNTIME"}
    base = f"https://127.0.0.1:{runtime.ports[0]}"
    assert env["GET_JOB_URI"] == base + "/interactive-module/api/internal-query/job"
    assert env["POST_RESULT_URI"] == base + "/interactive-module/api/internal-query/results"
    assert env["POST_SCHEMA_URI"] == base + "/interactive-module/api/internal-query/schemas"
    assert env["RESTART_NOTIFICATION_URI"] == base + RESTART_PATH
    assert env["MAX_CONCURRENT_TASKS"] == "1"


def test_token_file_has_no_trailing_newline_and_is_private(runtime: EmbeddedRuntime) -> None:
    path = runtime.env()["MODULE_AUTH_TOKEN"]
    with open(path, "rb") as handle:
        token = handle.read()
    assert token and token == token.strip()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_connection_to_runtime_file_has_the_legacy_fields(runtime: EmbeddedRuntime) -> None:
    env = runtime.env()
    with open(env["CONNECTION_TO_RUNTIME"], encoding="utf-8") as handle:
        connection = json.load(handle)
    with open(env["MODULE_AUTH_TOKEN"], encoding="utf-8") as handle:
        token = handle.read()
    assert connection == {"host": "127.0.0.1", "port": runtime.ports[0], "getJobPath": JOB_PATH,
                          "postResultPath": RESULTS_PATH, "moduleAuthToken": token,
                          "trustStorePath": env["DEFAULT_CA_PATH"]}


def test_env_exports_are_shell_export_lines_of_env(runtime: EmbeddedRuntime) -> None:
    lines = runtime.env_exports().splitlines()
    assert len(lines) == len(runtime.env()) and all(line.startswith("export ") for line in lines)
    assert f"export RUNTIME_PORT={runtime.ports[0]}" in lines


def test_replicas_have_their_own_port_token_and_session(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(replicas=2, max_concurrent_tasks=[3, 1])
    first, second = runtime.env(0), runtime.env(1)
    for name in ("RUNTIME_PORT", "MODULE_AUTH_TOKEN", "COMPUTE_SESSION_ID", "MAX_CONCURRENT_TASKS"):
        assert first[name] != second[name]
    # replica 1's token does not open replica 0's door
    assert Module(runtime, 0, token=Module(runtime, 1).token).get_job()[0] == 401


# -- GET job -------------------------------------------------------------------------------------


def test_get_job_answers_204_after_the_hold_when_the_queue_is_empty(runtime: EmbeddedRuntime) -> None:
    response = Module(runtime).request("GET", JOB_PATH)
    assert response.status == 204 and response.body == b""


def test_get_job_answers_200_with_the_job_in_foundry_shape(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("add", {"x": 1}, user_id="user-7")
    response = Module(runtime).request("GET", JOB_PATH)
    assert response.status == 200
    payload = response.json()
    assert payload["type"] == "computeModuleJobV1"
    job = payload["computeModuleJobV1"]
    assert set(job) == {"jobId", "queryType", "query", "temporaryCredentialsAuthToken", "authHeader", "userId"}
    assert (job["jobId"], job["queryType"], job["query"], job["userId"]) == (job_id, "add", {"x": 1}, "user-7")


def test_get_job_returns_promptly_when_a_job_arrives_during_the_hold(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    hold = 60.0
    runtime = make_runtime(long_poll=hold)
    module = Module(runtime, timeout=hold + 10)
    thread, outcome = run_in_thread(module.get_job)
    wait_until(lambda: runtime.record.gets(0) == 1, what="the GET to park in its long poll")
    job_id = runtime.client().run("echo", {"n": 1})
    thread.join(DEADLINE)  # well before the hold expires
    assert not thread.is_alive(), "the long poll did not return when a job arrived"
    status, job = outcome["value"]
    assert status == 200 and job["jobId"] == job_id


def test_jobs_are_handed_out_in_submission_order(runtime: EmbeddedRuntime) -> None:
    ids = runtime.client().batch_run([("echo", i) for i in range(5)])
    module = Module(runtime)
    taken = []
    for job_id in ids:
        job = handed_out_any(module)
        taken.append(job["jobId"])
        assert module.post_result(job_id, b"1").status == 204
    assert taken == ids


def handed_out_any(module: Module) -> dict[str, object]:
    status, job = module.get_job()
    assert status == 200 and job is not None
    return job


# -- POST result ---------------------------------------------------------------------------------


def test_result_is_accepted_with_204_and_reaches_the_caller(runtime: EmbeddedRuntime) -> None:
    client, module = runtime.client(), Module(runtime)
    job_id = client.run("echo", {"a": 1})
    handed_out_any(module)
    assert module.post_result(job_id, b'{"b": 2}').status == 204
    assert client.get_result(job_id, timeout=DEADLINE) == {"b": 2}
    assert runtime.record.accepted(job_id) == 1


def test_chunked_result_is_reassembled(runtime: EmbeddedRuntime) -> None:
    client, module = runtime.client(), Module(runtime)
    job = handed_out(runtime, module)
    items = [json.dumps({"i": i}).encode() for i in range(3)]  # a streaming function's chunks
    assert module.post_result(str(job["jobId"]), iter(items), chunked=True).status == 204
    assert runtime.record.job(str(job["jobId"])).answer == b"".join(items)  # type: ignore[union-attr]
    assert runtime.record.result_posts(str(job["jobId"]))[0].chunked
    assert client.get_result(str(job["jobId"]), timeout=DEADLINE) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_result_for_an_unknown_job_is_404(runtime: EmbeddedRuntime) -> None:
    assert Module(runtime).post_result("no-such-job", b"1").status == 404


def test_result_for_a_job_of_another_replica_is_404(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(replicas=2)
    job = handed_out(runtime, Module(runtime, 0))
    assert Module(runtime, 1).post_result(str(job["jobId"]), b"1").status == 404


def test_second_result_for_the_same_job_is_409_and_the_first_stands(runtime: EmbeddedRuntime) -> None:
    module = Module(runtime)
    job_id = str(handed_out(runtime, module)["jobId"])
    assert module.post_result(job_id, b'"first"').status == 204
    assert module.post_result(job_id, b'"second"').status == 409
    assert runtime.record.job(job_id).answer == b'"first"'  # type: ignore[union-attr]
    assert [post.status for post in runtime.record.result_posts(job_id)] == [204, 409]
    assert runtime.record.accepted(job_id) == 1


def test_result_over_the_size_limit_is_413_by_content_length(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(max_result_size=1024)
    module = Module(runtime)
    job_id = str(handed_out(runtime, module)["jobId"])
    response = module.post_result(job_id, b"x" * 4096)
    assert response.status == 413 and "1024" in response.json()["error"]
    assert runtime.record.job(job_id).status == "running"  # type: ignore[union-attr]
    assert module.post_result(job_id, b'"small"').status == 204  # the job can still be answered


def test_result_over_the_size_limit_is_413_when_chunked(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(max_result_size=1024)
    module = Module(runtime)
    job_id = str(handed_out(runtime, module)["jobId"])
    response = module.post_result(job_id, iter([b"x" * 600, b"y" * 600]), chunked=True)
    assert response.status == 413
    assert [post.status for post in runtime.record.result_posts(job_id)] == [413]
    assert runtime.record.accepted(job_id) == 0


def test_result_exactly_at_the_size_limit_is_accepted(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(max_result_size=1024)
    module = Module(runtime)
    job_id = str(handed_out(runtime, module)["jobId"])
    assert module.post_result(job_id, b"7" * 1024).status == 204


def test_expect_100_continue_over_the_limit_is_refused_before_the_body(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(max_result_size=1024)
    module = Module(runtime)
    job_id = str(handed_out(runtime, module)["jobId"])
    head = (f"POST {RESULTS_PATH}/{job_id} HTTP/1.1\r\nHost: x\r\nModule-Auth-Token: {module.token}\r\n"
            "Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n").encode()
    assert status_of(raw_exchange(runtime, head)) == 413


# -- POST schemas ----------------------------------------------------------------------------------


def test_schemas_are_stored_and_listed_for_callers(runtime: EmbeddedRuntime) -> None:
    assert Module(runtime).post_schemas([SCHEMA]).status == 204
    assert runtime.record.schemas(0) == [SCHEMA]
    assert runtime.client().functions() == [SCHEMA]


@pytest.mark.parametrize("body", [b"{not json", b'{"functionName": "f"}', b'[{"inputs": []}]',
                                  b'[{"functionName": 3}]', b'[{"functionName": ""}]', b"[1]"])
def test_invalid_schemas_are_400(runtime: EmbeddedRuntime, body: bytes) -> None:
    assert Module(runtime).post_schemas(body).status == 400
    assert runtime.record.schemas(0) is None


# -- restart notification --------------------------------------------------------------------------


def test_restart_notification_with_nothing_held_answers_an_empty_list(runtime: EmbeddedRuntime) -> None:
    response = Module(runtime).restart_notification()
    assert (response.status, response.json()) == (200, [])
    assert runtime.record.restart_notifications(0) == [[]]


def test_restart_notification_drops_the_jobs_the_replica_held(runtime: EmbeddedRuntime) -> None:
    client, module = runtime.client(), Module(runtime)
    held = str(handed_out(runtime, module)["jobId"])
    queued = client.run("echo", {})
    response = Module(runtime).restart_notification()  # the restarted container's first call
    assert (response.status, response.json()) == (200, [held])
    assert client.status(held) == "dropped" and client.status(queued) == "queued"
    with pytest.raises(JobDropped, match="restarted"):
        client.get_result(held, timeout=DEADLINE)
    assert module.post_result(held, b"1").status == 409  # too late: the caller already got "dropped"
    assert runtime.record.held(0) == []


def test_restart_notification_leaves_other_replicas_jobs_alone(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(replicas=2)
    other = Module(runtime, 1)
    job_id = str(handed_out(runtime, other)["jobId"])
    assert Module(runtime, 0).restart_notification().json() == []
    assert other.post_result(job_id, b"1").status == 204


# -- auth and malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", JOB_PATH), ("POST", f"{RESULTS_PATH}/x"),
                                              ("POST", SCHEMAS_PATH), ("POST", RESTART_PATH)])
@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_missing_or_wrong_token_is_401_on_every_endpoint(runtime: EmbeddedRuntime, method: str, path: str,
                                                         token: str) -> None:
    assert Module(runtime, token=token).request(method, path, b"[]" if method == "POST" else None).status == 401


def test_a_401_does_not_take_a_job(runtime: EmbeddedRuntime) -> None:
    runtime.submit("echo")
    assert Module(runtime, token="wrong").get_job()[0] == 401
    assert runtime.record.queued() == 1


def test_unknown_path_is_404_and_wrong_method_is_405(runtime: EmbeddedRuntime) -> None:
    module = Module(runtime)
    assert module.request("GET", "/interactive-module/api/internal-query/nope").status == 404
    response = module.request("POST", JOB_PATH, b"")
    assert response.status == 405 and response.headers["allow"] == "GET"


@pytest.mark.parametrize("request_head", [
    b"GARBAGE\r\n\r\n",
    b"GET /x HTTP/2.0\r\n\r\n",
    b"GET " + JOB_PATH.encode() + b" HTTP/1.1\r\nno colon here\r\n\r\n",
    b"POST " + RESULTS_PATH.encode() + b"/j HTTP/1.1\r\nModule-Auth-Token: {token}\r\nContent-Length: -1\r\n\r\n",
    b"POST " + RESULTS_PATH.encode() + b"/j HTTP/1.1\r\nModule-Auth-Token: {token}\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nxx",
    b"POST " + RESULTS_PATH.encode() + b"/j HTTP/1.1\r\nModule-Auth-Token: {token}\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
    b"POST " + RESULTS_PATH.encode() + b"/j HTTP/1.1\r\nModule-Auth-Token: {token}\r\n"
    b"Transfer-Encoding: gzip\r\n\r\n",
], ids=["request-line", "http2", "header-line", "negative-length", "conflicting-lengths", "bad-chunk-size",
        "unsupported-encoding"])
def test_malformed_requests_are_400_and_the_server_keeps_serving(runtime: EmbeddedRuntime,
                                                                  request_head: bytes) -> None:
    token = Module(runtime).token.encode()
    assert status_of(raw_exchange(runtime, request_head.replace(b"{token}", token))) == 400
    assert Module(runtime).get_job()[0] == 204


def test_garbage_instead_of_tls_does_not_hurt_the_server(runtime: EmbeddedRuntime) -> None:
    with socket.create_connection(("127.0.0.1", runtime.ports[0]), timeout=DEADLINE) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(256))
        with contextlib.suppress(OSError):  # an alert, EOF or a reset: what matters is what follows
            sock.recv(1024)
    assert Module(runtime).get_job()[0] == 204


def test_keep_alive_connection_serves_many_requests(runtime: EmbeddedRuntime) -> None:
    module = Module(runtime)
    for _ in range(3):
        job_id = str(handed_out(runtime, module)["jobId"])
        connection = module.connection
        assert module.post_result(job_id, b"0").status == 204
        assert module.connection is connection  # the same TLS connection all along
