"""Job bodies that the parent (reading the envelope's ends) and the worker (parsing it in full) could read
differently, and bodies that name their job in ways a URL cannot carry: a real ``cmworker run`` against the
embedded runtime over loopback HTTPS, the bytes of each GET body the test's own (``pool_harness.JobBodies``).

The promises checked: an answer goes only to the job the body is (as ``json.loads`` reads it), never to an
id found elsewhere in it; a body that cannot be answered is refused with a line naming why; the replica
keeps serving either way.
"""

from __future__ import annotations

import itertools
import json
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cmworker.app.envelope import FULL_PARSE_BELOW
from cmworker.replica import transport
from cmworker.replica.service import Service, discover
from cmworker.runtime.embedded import EmbeddedRuntime
from cmworker.runtime.state import JobSnapshot
from cmworker.runtime.tls import write_tls_files
from cmworker.runtime.wire import DRAIN_LIMIT
from tests.pool_harness import ServedBodies, cmworker_run, served_bodies

pytestmark = pytest.mark.timeout(180)
WAIT = 30.0
PAD = "p" * FULL_PARSE_BELOW  # a query this long makes the parent read the envelope from its ends
DEEP = "[" * 1500 + "]" * 1500  # deeper than json parses, in a body short enough to be parsed in full


class Served(ServedBodies):
    def run(self, make: Callable[[str], bytes]) -> str:
        """Hand out one job whose GET body is ``make(job_id)``, then a probe; the case's job id, once the
        probe after it is answered."""
        job_id = self.case(make)
        # Not even on its way out: a thread that died makes the replica drain and exit, serving meanwhile.
        assert '"message": "stopping' not in self.log.read_text(errors="replace"), self.tail()
        return job_id

    def answered_once(self, job_id: str) -> Any:
        [snap] = self.rt.store.wait_finished([job_id], WAIT)
        assert snap is not None and snap.answer is not None, f"job {job_id} was not answered:\n{self.tail()}"
        assert self.rt.record.accepted(job_id) == 1, self.rt.record.result_posts(job_id)
        return json.loads(snap.answer)

    def unanswered(self, job_id: str) -> JobSnapshot | None:
        return self.rt.record.job(job_id)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_bodies(tmp_path_factory.mktemp("redteam"), "misbehave.py", "echo", "case", "probe", Served) as served:
        yield served


def v1(*members: str, after: str = "") -> bytes:
    """An envelope whose computeModuleJobV1 has these members (JSON text) in this order; ``after``: more
    top-level members after it."""
    return ('{"type": "computeModuleJobV1", "computeModuleJobV1": {' + ", ".join(members) + "}" + after
            + "}").encode()


def member(key: str, value: Any) -> str:
    return f"{json.dumps(key)}: {json.dumps(value)}"


# -- which job: an answer goes to the body's own id or to none ------------------------------------------


def test_a_job_id_that_is_not_unicode_is_refused_and_the_replica_keeps_serving(served: Served) -> None:
    # "\ud800" is valid JSON, but a lone surrogate has no UTF-8 form: no URL can name the job. Its POST
    # raised UnicodeEncodeError in a poster thread, which ended the replica.
    bad = v1(member("jobId", "\ud800"), member("queryType", "echo"), member("query", 1))
    job_id = served.run(lambda jid: bad)
    assert served.rt.record.result_posts(job_id) == []
    assert "its jobId cannot be written in a URL" in served.tail()


def test_an_unreadable_body_is_not_answered_under_an_id_from_its_query(served: Served) -> None:
    # Too deeply nested for json, so the parent looks for the id in the raw bytes; the first "jobId" there
    # was the query's, naming another job, which then got this job's error.
    other = str(uuid.uuid4())
    def make(jid: str) -> bytes:
        query = f'{{{member("jobId", other)}, "deep": {DEEP}}}'
        return v1(member("queryType", "echo"), '"query": ' + query, member("jobId", jid))
    job_id = served.run(make)
    assert served.rt.record.result_posts(other) == []
    assert served.rt.record.result_posts(job_id) == []
    assert "names more than one jobId" in served.tail()


def test_an_unreadable_body_with_its_id_first_is_answered_under_that_id(served: Served) -> None:
    other = str(uuid.uuid4())
    def make(jid: str) -> bytes:
        query = f'{{{member("jobId", other)}, "deep": {DEEP}}}'
        return v1(member("jobId", jid), member("queryType", "echo"), '"query": ' + query)
    job_id = served.run(make)
    payload = served.answered_once(job_id)
    assert payload["kind"] == "invalid_input" and "nested" in payload["error"]
    assert served.rt.record.result_posts(other) == []


@pytest.mark.parametrize("arrange", [
    # The tail's "jobId" is a later top-level member's: the parent took that id, and the worker's
    # refusal (it read the job's own id in full) went there; the job itself was never answered.
    lambda jid, other: v1(member("queryType", "echo"), member("query", PAD), member("jobId", jid),
                          after=f', "extra": {{"a": 1, {member("jobId", other)}}}'),
    # The tail's "queryType" is the later member's: the parent answered `unknown_function` at once.
    lambda jid, other: v1(member("jobId", jid), member("query", PAD), member("queryType", "echo"),
                          after=', "extra": {"queryType": "no_such_function"}'),
], ids=["jobId", "queryType"])
def test_a_member_after_the_job_does_not_name_its_id_or_function(
        served: Served, arrange: Callable[[str, str], bytes]) -> None:
    other = str(uuid.uuid4())
    job_id = served.run(lambda jid: arrange(jid, other))
    assert served.answered_once(job_id) == {"echo": PAD, "job": job_id}
    assert served.rt.record.result_posts(other) == []


# -- odd text in the other fields: one answer, and the replica keeps serving ---------------------------

LONE = "\ud800"  # JSON can carry it ("\\ud800"); UTF-8 cannot


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("queryType", LONE, "unknown_function"),
    ("query", f"x{LONE}y", "ok"),
    ("userId", LONE, "ok"),
    ("authHeader", f"Bearer {LONE}secret-token", "ok"),
    ("temporaryCredentialsAuthToken", f"{LONE}temp-token", "ok"),
], ids=lambda v: v if isinstance(v, str) and v.isascii() else None)
@pytest.mark.parametrize("size", ["small", "big"])
def test_a_lone_surrogate_in_any_other_field_gets_one_answer(served: Served, field: str, value: str, kind: str,
                                                             size: str) -> None:
    def make(jid: str) -> bytes:
        fields = {"jobId": jid, "queryType": "echo", "query": {"pad": PAD} if size == "big" else 1,
                  "authHeader": "Bearer ordinary-token", "temporaryCredentialsAuthToken": "ordinary-temp"}
        fields[field] = value if field != "query" else {"pad": PAD if size == "big" else "", "text": value}
        return v1(*(member(k, v) for k, v in fields.items()))
    job_id = served.run(make)
    payload = served.answered_once(job_id)
    assert (payload.get("kind") if "kind" in payload else "ok") == kind, payload


# -- a runtime that writes what the test says, over real TLS -------------------------------------------


@dataclass
class Scripted:
    """A TLS server on loopback that answers each request, on whatever connection it comes, with the
    next of ``replies`` (raw bytes, written as one piece); ``requests`` records (connection number,
    request line) as each request's head arrives."""

    context: ssl.SSLContext  # the client's: trusts this server's CA
    port: int
    replies: list[bytes]
    requests: list[tuple[int, bytes]] = field(default_factory=list)

    def connection(self, timeout: float = 5.0) -> transport.Connection:
        return transport.Connection("127.0.0.1", self.port, self.context, {"Module-Auth-Token": "t"}, timeout)


@contextmanager
def scripted(tmp: Path, replies: list[bytes]) -> Iterator[Scripted]:
    tls = write_tls_files(tmp, ["127.0.0.1"])
    server_context = tls.server_context()
    listener = socket.create_server(("127.0.0.1", 0))
    script = Scripted(ssl.create_default_context(cafile=str(tls.ca_path)), listener.getsockname()[1], replies)
    sockets: list[socket.socket] = []

    def serve(raw: socket.socket, number: int) -> None:
        try:
            with server_context.wrap_socket(raw, server_side=True) as sock, sock.makefile("rb") as reader:
                while line := reader.readline():
                    length = 0
                    while (header := reader.readline()) not in (b"\r\n", b""):
                        if header.lower().startswith(b"content-length:"):
                            length = int(header.split(b":")[1])
                    reader.read(length)
                    script.requests.append((number, line.strip()))
                    sock.sendall(script.replies.pop(0))
        except (OSError, IndexError):
            pass

    def accept() -> None:
        for number in itertools.count():
            try:
                raw = listener.accept()[0]
            except OSError:
                return
            sockets.append(raw)
            threading.Thread(target=serve, args=(raw, number), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield script
    finally:
        listener.close()
        for sock in sockets:
            sock.close()


NO_JOB = b"HTTP/1.1 204 No Content\r\n\r\n"
A_JOB = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{job}"


@pytest.mark.parametrize("first", [
    NO_JOB + NO_JOB,                                                   # a reply too many
    b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n{}" + NO_JOB,  # a 204 with a body: it has none
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}" + NO_JOB,          # a length short of what follows
], ids=["two replies", "204 with a body", "short length"])
def test_bytes_after_a_reply_are_never_taken_for_the_next_ones(tmp_path: Path, first: bytes) -> None:
    # Read on the same connection, they were the next GET's reply: the job the runtime handed out on that
    # GET was never read, held by the runtime for this replica and never answered.
    with scripted(tmp_path, [first, A_JOB]) as runtime:
        conn = runtime.connection()
        conn.request("GET", "/job")
        assert conn.request("GET", "/job") == transport.Reply(200, b"{job}")
        assert [number for number, _ in runtime.requests] == [0, 1]  # the second on a fresh connection
        conn.close()


def test_a_reply_that_comes_before_the_body_is_sent_is_read(tmp_path: Path) -> None:
    # A body over the runtime's limit is refused as soon as its length is read: the 413 comes back while
    # the body still goes out, and the runtime, having drained what it will, closes. The write failed,
    # the 413 was never read, and the poster sent the same answer again and again, for ever.
    with EmbeddedRuntime(long_poll=0.2, max_result_size=2**20) as rt:
        job = rt.submit("echo", 1)
        service = Service(discover(rt.env(0), wait=1))
        conn = service.connection()
        assert service.get_job(conn).status == 200
        reply = service.post_result(conn, job, b"x" * (DRAIN_LIMIT + 8 * 2**20))
        assert reply.status == 413 and b"over the 1048576-byte limit" in reply.body
        assert service.post_result(conn, job, b'"small"').status == 204  # on a fresh connection
        conn.close()


def test_an_answer_the_runtime_refuses_as_too_large_is_replaced_by_one_saying_so(tmp_path: Path) -> None:
    # The replica allows bigger results than the runtime takes: the 413 ended the POSTs ("giving up"),
    # and the job, accepted, was never answered at all.
    config = '[limits]\ntimeout = "20s"\nmax_result_size = "16MiB"\n'
    with EmbeddedRuntime(long_poll=0.5, max_result_size=2**20) as rt, cmworker_run(rt, tmp_path, config) as proc:
        job = rt.submit("too_large", {"size": 2 * 2**20})
        [snap] = rt.store.wait_finished([job], WAIT)
        log = (tmp_path / "run.log").read_text()
        assert snap is not None and snap.answer is not None, log[-3000:]
        payload = json.loads(snap.answer)
        assert payload["kind"] == "result_too_large" and "HTTP 413" in payload["error"], payload
        assert [post.status for post in rt.record.result_posts(job)] == [413, 204]
        assert rt.submit("echo", "later") and proc.poll() is None
    # The job's one log line says what its caller received.
    [finished] = [line for line in (json.loads(raw) for raw in (tmp_path / "run.log").read_text().splitlines()
                                    if raw.startswith("{"))
                  if line["message"] == "job_finished" and line["params"].get("job_id") == job]
    assert finished["params"]["kind"] == "result_too_large", finished


# -- the embedded runtime answers odd clients with a 4xx, never a 500 or silence ------------------------


def send_raw(rt: EmbeddedRuntime, port: int, request: bytes) -> tuple[int, bytes]:
    """One request, written as it is, over TLS to the runtime; its reply's status and body."""
    context = ssl.create_default_context(cafile=str(rt.ca_path))
    with socket.create_connection(("127.0.0.1", port), WAIT) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock, sock.makefile("rb") as reader:
        sock.sendall(request)
        status, body, _ = transport.read_reply(reader, "GET")
        return status, body


LONG_NUMBER = b"1" * 5000  # past Python's 4300 digits for int(str): a ValueError, not a number
RESULT, SCHEMAS = b"/interactive-module/api/internal-query/results/x", b"/interactive-module/api/internal-query/schemas"
JOBS, ITEMS = b"/api/v1/jobs", b"/api/v1/jobs/x/items"


@pytest.mark.parametrize(("api", "request_line", "rest"), [
    ("module", b"POST " + RESULT, b"Content-Length: " + LONG_NUMBER + b"\r\n\r\n"),
    ("module", b"POST " + RESULT, b"Expect: 100-continue\r\nContent-Length: " + LONG_NUMBER + b"\r\n\r\n"),
    ("query", b"POST " + JOBS, b"Content-Length: " + LONG_NUMBER + b"\r\n\r\n"),
    ("module", b"POST " + SCHEMAS, b"Content-Length: 4000\r\n\r\n" + b"[" * 4000),
    ("query", b"POST " + JOBS, b"Content-Length: 4000\r\n\r\n" + b"[" * 4000),
    ("query", b"GET " + ITEMS + b"?from=" + LONG_NUMBER, b"\r\n"),
], ids=["a result of a 5000-digit length", "the same, expecting 100-continue", "a query of a 5000-digit length",
        "schemas nested 4000 deep", "a query nested 4000 deep", "an item index of 5000 digits"])
def test_the_runtime_answers_an_odd_request_with_a_4xx(api: str, request_line: bytes, rest: bytes) -> None:
    with EmbeddedRuntime(long_poll=0.2) as rt:
        if api == "module":
            port, auth = rt.ports[0], b"Module-Auth-Token: " + rt.token_path(0).read_text().strip().encode()
        else:
            port, auth = int(rt.query_url.rsplit(":", 1)[1]), b"Authorization: Bearer " + rt.caller_token.encode()
        status, body = send_raw(rt, port, request_line + b" HTTP/1.1\r\n" + auth + b"\r\n" + rest)
        assert 400 <= status < 500, (status, body)
        assert b"JSON" not in body or b"nested" in body, body  # the cause named, not a parse of nothing


def test_the_runtime_takes_an_answer_nested_past_its_parser() -> None:
    # The runtime parses an answer to learn whether it is an error payload; past ~1,000 levels that raised
    # RecursionError, a 500 for every attempt: the replica retried the answer for ever, never delivered.
    with EmbeddedRuntime(long_poll=0.2) as rt:
        job = rt.submit("echo", 1)
        service = Service(discover(rt.env(0), wait=1))
        conn = service.connection()
        assert service.get_job(conn).status == 200
        deep = b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        assert service.post_result(conn, job, deep).status == 204
        conn.close()
        assert rt.record.job(job).answer == deep  # type: ignore[union-attr]
