"""Spoiled replies (``EmbeddedRuntime.spoil_next``), as bytes on the wire, and what each does to the job.

Every test reads the raw bytes a spoiled reply puts on a real TLS connection, so a client's test
(tests/test_hostile_runtime.py) can rely on the fault being exactly what its name says.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from cmworker.runtime.faults import HUGE_CHUNK, HUGE_LENGTH
from cmworker.runtime.server import JOB_PATH, RESTART_PATH, RESULTS_PATH, SCHEMAS_PATH
from tests.runtime.helpers import Module, tls_socket, wait_until


def request(runtime: EmbeddedRuntime, method: str, path: str, body: bytes = b"") -> bytes:
    token = Module(runtime).token
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nModule-Auth-Token: {token}\r\n"
    if method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def pieces(runtime: EmbeddedRuntime, data: bytes, *, limit: int = 2**20) -> list[bytes]:
    """Send ``data``; every piece that arrives until the runtime closes (or ``limit`` bytes came)."""
    with tls_socket(runtime, runtime.ports[0]) as sock:
        sock.sendall(data)
        got: list[bytes] = []
        while sum(map(len, got)) < limit:
            try:
                piece = sock.recv(65536)
            except ssl.SSLError:  # a cut without a TLS close alert
                break
            if not piece:
                break
            got.append(piece)
    return got


def taken_then_requeued(runtime: EmbeddedRuntime, job_id: str) -> None:
    wait_until(lambda: runtime.record.job(job_id).status == "queued",  # type: ignore[union-attr]
               what="the job to go back to the queue")
    status, job = Module(runtime).get_job()
    assert status == 200 and job is not None and job["jobId"] == job_id


def test_trickle_head_sends_the_head_one_byte_at_a_time_and_hands_out_the_job(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f", {"x": 1})
    runtime.spoil_next("get", "trickle_head", interval=0.001)
    got = pieces(runtime, request(runtime, "GET", JOB_PATH))
    head, _, body = b"".join(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and len(got) > len(head)  # one TLS record per byte
    assert json.loads(body)["computeModuleJobV1"]["jobId"] == job_id
    assert runtime.record.held(0) == [job_id]  # written in full: handed out


def test_trickle_body_sends_the_body_one_byte_at_a_time(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    runtime.spoil_next("get", "trickle_body", interval=0.001)
    got = pieces(runtime, request(runtime, "GET", JOB_PATH))
    head, _, body = b"".join(got).partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head and len(got) >= len(body)
    assert json.loads(body)["computeModuleJobV1"]["jobId"] == job_id


def test_a_trickle_the_client_leaves_puts_the_job_back(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    runtime.spoil_next("get", "trickle_head", interval=0.5)
    impatient = Module(runtime, timeout=0.3)  # a timeout per read: it must be below the interval
    with pytest.raises(OSError):
        impatient.get_job()
    impatient.close()
    taken_then_requeued(runtime, job_id)


def test_an_interim_flood_precedes_the_real_reply_and_a_standard_client_reads_it(runtime: EmbeddedRuntime) -> None:
    runtime.spoil_next("get", "interim_flood", interval=0.01, seconds=0.3)
    data = b"".join(pieces(runtime, request(runtime, "GET", JOB_PATH)))
    assert data.count(b"HTTP/1.1 100 Continue\r\n\r\n") >= 3
    assert data.endswith(b"HTTP/1.1 204 Spoiled\r\nContent-Type: application/json\r\n\r\n")
    runtime.spoil_next("get", "interim_flood", interval=0.01, seconds=0.3)
    assert Module(runtime).get_job()[0] == 204  # http.client skips the 1xx replies


@pytest.mark.parametrize(("spoil", "framing"), [
    ("huge_length", f"Content-Length: {HUGE_LENGTH}\r\n".encode()),
    ("huge_chunk", b"Transfer-Encoding: chunked\r\n\r\n" + HUGE_CHUNK + b"\r\n{"),
])
def test_a_lying_frame_carries_the_job_yet_hands_nothing_out(runtime: EmbeddedRuntime, spoil: str,
                                                            framing: bytes) -> None:
    job_id = runtime.submit("f")
    runtime.spoil_next("get", spoil)  # type: ignore[arg-type]
    data = b"".join(pieces(runtime, request(runtime, "GET", JOB_PATH)))
    assert framing in data and job_id.encode() in data
    taken_then_requeued(runtime, job_id)


def test_short_body_announces_more_than_it_sends_then_closes(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    runtime.spoil_next("get", "short_body")
    head, _, body = b"".join(pieces(runtime, request(runtime, "GET", JOB_PATH))).partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body) + 1000}".encode() in head
    taken_then_requeued(runtime, job_id)


def test_garbage_status_is_no_status_line(runtime: EmbeddedRuntime) -> None:
    runtime.spoil_next("get", "garbage_status")
    data = b"".join(pieces(runtime, request(runtime, "GET", JOB_PATH)))
    assert data.startswith(b"HTTP/1.1 2O4 ") and not data.split()[1].isdigit()


@pytest.mark.parametrize("spoil", ["endless_body", "endless_chunks"])
def test_an_endless_body_goes_on_until_the_client_leaves(runtime: EmbeddedRuntime, spoil: str) -> None:
    runtime.spoil_next("get", spoil)  # type: ignore[arg-type]
    got = pieces(runtime, request(runtime, "GET", JOB_PATH), limit=8 * 2**20)
    assert sum(map(len, got)) >= 8 * 2**20
    assert Module(runtime).get_job()[0] == 204  # the runtime serves on


def test_a_spoiled_result_reply_comes_after_the_answer_counted(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    module = Module(runtime)
    assert module.get_job()[0] == 200
    runtime.spoil_next("result", "garbage_status")
    data = b"".join(pieces(runtime, request(runtime, "POST", f"{RESULTS_PATH}/{job_id}", b'"done"')))
    assert data.startswith(b"HTTP/1.1 2O4")
    assert runtime.record.accepted(job_id) == 1
    assert module.post_result(job_id, b'"again"').status == 409  # a client's retry learns it landed
    assert runtime.record.job(job_id).answer == b'"done"'  # type: ignore[union-attr]


def test_spoiled_schema_and_restart_replies_still_take_effect(runtime: EmbeddedRuntime) -> None:
    runtime.spoil_next("schemas", "trickle_head", interval=0.001)
    runtime.spoil_next("restart", "huge_length")
    schemas = json.dumps([{"functionName": "f"}]).encode()
    assert b"".join(pieces(runtime, request(runtime, "POST", SCHEMAS_PATH, schemas))).startswith(b"HTTP/1.1 204")
    assert runtime.record.schemas(0) == [{"functionName": "f"}]
    data = b"".join(pieces(runtime, request(runtime, "POST", RESTART_PATH)))
    assert f"Content-Length: {HUGE_LENGTH}".encode() in data and data.endswith(b"\r\n\r\n[]")
    assert runtime.record.restart_notifications(0) == [[]]


def test_faults_are_taken_by_their_own_endpoint_only(runtime: EmbeddedRuntime) -> None:
    runtime.spoil_next("result", "garbage_status")
    module = Module(runtime)
    assert module.get_job()[0] == 204 and module.post_schemas([{"functionName": "f"}]).status == 204
    assert module.restart_notification().status == 200
    job_id = runtime.submit("f")
    assert module.get_job()[0] == 200
    data = b"".join(pieces(runtime, request(runtime, "POST", f"{RESULTS_PATH}/{job_id}", b'"done"')))
    assert data.startswith(b"HTTP/1.1 2O4")  # the fault waited for a result POST


@pytest.mark.parametrize("job_id", [".", "..", "a/b", "a?b#c", "100%", "a b", "\u00fcn\u00efc\u00f8d\u00e9",
                                    "../../schemas"])
def test_an_encoded_job_id_reaches_its_own_job(runtime: EmbeddedRuntime, job_id: str) -> None:
    from urllib.parse import quote

    runtime.submit("f", job_id=job_id)
    module = Module(runtime)
    status, job = module.get_job()
    assert status == 200 and job is not None and job["jobId"] == job_id
    segment = quote(job_id, safe="")
    segment = segment.replace(".", "%2E") if not segment.strip(".") else segment
    assert module.post_result(segment, b'"ok"').status == 204
    assert runtime.record.accepted(job_id) == 1


@pytest.mark.parametrize("arm", [
    lambda rt: rt.spoil_next("get", "no_such_spoil"),
    lambda rt: rt.spoil_next("nowhere", "trickle_head"),
    lambda rt: rt.spoil_next("get", "trickle_head", interval=-1),
    lambda rt: rt.submit("f", job_id=""),
])
def test_invalid_spoils_and_ids_are_rejected(runtime: EmbeddedRuntime,
                                             arm: Callable[[EmbeddedRuntime], object]) -> None:
    with pytest.raises(ValueError):
        arm(runtime)


def test_a_job_id_cannot_be_used_twice(runtime: EmbeddedRuntime) -> None:
    runtime.submit("f", job_id="same")
    with pytest.raises(ValueError, match="already taken"):
        runtime.submit("f", job_id="same")


def test_dot_segments_are_resolved_before_routing_as_servers_do(runtime: EmbeddedRuntime) -> None:
    runtime.submit("f", job_id="..")
    module = Module(runtime)
    assert module.get_job()[0] == 200
    assert module.post_result("..", b'"lost"').status == 404  # results/.. is the API's root, not the job
    assert module.post_result("%2E%2E", b'"found"').status == 204
    assert runtime.record.job("..").answer == b'"found"'  # type: ignore[union-attr]
