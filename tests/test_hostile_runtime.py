"""A replica against a runtime that misbehaves: whatever bytes come back, ``cmworker run`` keeps serving.

Each process test starts a real ``cmworker run`` against the embedded runtime over loopback HTTPS, with
the fault armed (``EmbeddedRuntime.spoil_next`` and friends) before it starts, so that the first request
of its kind meets it. The promise checked every time: each job is answered exactly once with the right
kind, a later job is answered too, the process is still running, and its memory stayed bounded.
The TLS tests check the opposite promise: with no trustworthy CA, nothing at all is sent.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cmworker.errors import RuntimeUnavailable
from cmworker.replica import transport
from cmworker.replica.service import (
    EMPTY_PAUSE_CAP,
    FAST_EMPTY,
    EmptyPolls,
    Endpoints,
    Service,
    TransportError,
    backoff,
    discover,
    ssl_context,
)
from cmworker.replica.transport import BadReply, read_reply
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import cmworker_run

pytestmark = pytest.mark.timeout(180)
WAIT = 60.0
PARENT_MEMORY = 200 * 2**20  # the parent's peak RSS: ~30 MiB serving; a reply read whole would pass it
CONFIG = """
poll_timeout = "3s"

[limits]
timeout = "20s"
"""

# How each spoil is armed: slow enough that a timeout per read (the old transport's) never fires, so
# only a deadline for the whole request ends it; the endless bodies stop after 30 s whatever happens.
SPOILS: dict[str, dict[str, float]] = {
    "trickle_head": {"interval": 1.5},
    "trickle_body": {"interval": 1.5},
    "interim_flood": {"interval": 1.0},
    "huge_length": {},
    "short_body": {},
    "huge_chunk": {},
    "garbage_status": {},
    "endless_body": {"interval": 0.005, "seconds": 30.0},
    "endless_chunks": {"interval": 0.005, "seconds": 30.0},
}


@pytest.fixture
def runtime() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt:
        yield rt


@contextmanager
def serving(rt: EmbeddedRuntime, tmp: Path, env: dict[str, str] | None = None,
            config: str = CONFIG) -> Iterator[subprocess.Popen[bytes]]:
    with cmworker_run(rt, tmp, config, env=env) as proc:
        yield proc


def answer(rt: EmbeddedRuntime, job_id: str, timeout: float = WAIT) -> tuple[str, Any]:
    """(kind, payload) of a job's one answer, once the runtime has it; asserts it was accepted once."""
    snap = rt.store.wait_finished([job_id], timeout)[0]
    assert snap is not None and snap.answer is not None, f"job {job_id} was not answered within {timeout}s"
    assert rt.record.accepted(job_id) == 1, rt.record.result_posts(job_id)
    payload = json.loads(snap.answer)
    return (payload.get("kind", "ok") if isinstance(payload, dict) else "ok"), payload


def assert_echoed(rt: EmbeddedRuntime, job_id: str, query: Any) -> None:
    assert answer(rt, job_id) == ("ok", {"echo": query, "job": job_id})


def peak_rss(pid: int) -> int:
    """The most memory the process ever had resident (Linux: VmHWM)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    return int(kib) * 1024


def assert_still_serving(rt: EmbeddedRuntime, proc: subprocess.Popen[bytes], tmp: Path) -> None:
    later = rt.submit("echo", "later")
    assert_echoed(rt, later, "later")
    log = (tmp / "run.log").read_text()
    # Not even on its way out: a thread that died makes the replica drain and exit, serving meanwhile.
    assert proc.poll() is None and '"message": "stopping' not in log, log[-3000:]
    assert peak_rss(proc.pid) < PARENT_MEMORY


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# -- 1 and 2: every spoiled reply costs one request, never a thread or the process ---------------------


@pytest.mark.parametrize("spoil", list(SPOILS))
def test_a_spoiled_get_reply_costs_one_request_and_its_job_is_answered_once(
        runtime: EmbeddedRuntime, tmp_path: Path, spoil: str) -> None:
    job = runtime.submit("echo", spoil)  # the first GET takes it, in the spoiled reply
    runtime.spoil_next("get", spoil, **SPOILS[spoil])  # type: ignore[arg-type]
    with serving(runtime, tmp_path) as proc:
        assert_echoed(runtime, job, spoil)
        assert_still_serving(runtime, proc, tmp_path)
    assert "GET job failed" in (tmp_path / "run.log").read_text()  # it did meet the fault


@pytest.mark.parametrize("spoil", list(SPOILS))
def test_a_spoiled_result_reply_costs_one_post_and_takes_no_thread(
        runtime: EmbeddedRuntime, tmp_path: Path, spoil: str) -> None:
    job = runtime.submit("echo", spoil)
    runtime.spoil_next("result", spoil, **SPOILS[spoil])  # type: ignore[arg-type]
    with serving(runtime, tmp_path) as proc:
        assert_echoed(runtime, job, spoil)
        assert_still_serving(runtime, proc, tmp_path)
    assert len(runtime.record.result_posts(job)) >= 2  # the spoiled one, and a retry told 409


@pytest.mark.parametrize("spoil", ["trickle_head", "huge_length", "garbage_status"])
def test_a_spoiled_reply_to_a_streamed_answer_costs_one_replay(runtime: EmbeddedRuntime, tmp_path: Path,
                                                               spoil: str) -> None:
    job = runtime.submit("stream", {"n": 3})
    runtime.spoil_next("result", spoil, **SPOILS[spoil])  # type: ignore[arg-type]
    with serving(runtime, tmp_path) as proc:
        snap = runtime.store.wait_finished([job], WAIT)[0]
        assert snap is not None and snap.answer == b'{"i": 0}{"i": 1}{"i": 2}'
        assert runtime.record.accepted(job) == 1
        assert_still_serving(runtime, proc, tmp_path)
    posts = runtime.record.result_posts(job)
    assert len(posts) >= 2 and all(post.chunked for post in posts)


def test_two_trickling_result_replies_hold_new_jobs_back_no_longer_than_a_post_may_take(
        runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    # Both workers' answers trickle: until a POST gives up, both jobs are held and no third is taken.
    first, second = runtime.submit("echo", 1), runtime.submit("echo", 2)
    runtime.spoil_next("result", "trickle_head", 2, interval=1.5)
    with serving(runtime, tmp_path) as proc:
        third = runtime.submit("echo", 3)
        assert_echoed(runtime, third, 3)
        assert_echoed(runtime, first, 1)
        assert_echoed(runtime, second, 2)
        assert proc.poll() is None


@pytest.mark.parametrize(("endpoint", "spoil"), [
    ("schemas", "trickle_head"), ("schemas", "huge_length"), ("schemas", "endless_body"),
    ("restart", "trickle_head"), ("restart", "huge_chunk"), ("restart", "interim_flood"),
])
def test_a_spoiled_start_up_reply_costs_one_request_and_serving_goes_on(
        runtime: EmbeddedRuntime, tmp_path: Path, endpoint: str, spoil: str) -> None:
    job = runtime.submit("echo", endpoint)
    runtime.spoil_next(endpoint, spoil, **SPOILS[spoil])  # type: ignore[arg-type]
    with serving(runtime, tmp_path) as proc:
        assert_echoed(runtime, job, endpoint)
        assert_still_serving(runtime, proc, tmp_path)
        wait_until(lambda: runtime.record.schemas(0) is not None, "the schemas were never posted")


# -- 3: the runtime's CA is the only trust anchor ---------------------------------------------------


@pytest.fixture
def impostor() -> Iterator[EmbeddedRuntime]:
    """A server whose certificate only ``SSL_CERT_FILE`` vouches for."""
    with EmbeddedRuntime(long_poll=0.5) as rt:
        yield rt


def assert_received_nothing(rt: EmbeddedRuntime) -> None:
    assert rt.record.gets(0) == 0
    assert rt.record.schemas(0) is None
    assert rt.record.restart_notifications(0) == []


def test_with_no_ca_named_nothing_is_sent_and_run_exits_saying_why(impostor: EmbeddedRuntime,
                                                                   tmp_path: Path) -> None:
    env = {"CONNECTIONS_TO_OTHER_PODS_CA_PATH": "", "DEFAULT_CA_PATH": "", "CONNECTION_TO_RUNTIME": "",
           "SSL_CERT_FILE": str(impostor.ca_path), "SSL_CERT_DIR": str(impostor.state_dir)}
    with serving(impostor, tmp_path, env) as proc:
        assert proc.wait(WAIT) == 2
    log = (tmp_path / "run.log").read_text()
    assert "CONNECTIONS_TO_OTHER_PODS_CA_PATH" in log and "never the system's certificate store" in log
    assert_received_nothing(impostor)


def test_with_the_ca_file_absent_nothing_is_sent_and_run_exits_naming_it(impostor: EmbeddedRuntime,
                                                                         tmp_path: Path) -> None:
    missing = tmp_path / "runtime-ca.pem"
    env = {"CONNECTIONS_TO_OTHER_PODS_CA_PATH": str(missing), "DEFAULT_CA_PATH": str(missing),
           "SSL_CERT_FILE": str(impostor.ca_path), "CMWORKER_STARTUP_WAIT": "2s"}  # 60 s by default
    with serving(impostor, tmp_path, env) as proc:
        assert proc.wait(WAIT / 2) == 2  # the 2 s it was told, not the default minute
    log = (tmp_path / "run.log").read_text()
    assert f"CONNECTIONS_TO_OTHER_PODS_CA_PATH={missing}" in log and "did not appear" in log
    assert_received_nothing(impostor)


def test_an_unusable_ca_file_is_a_start_up_error_naming_it(impostor: EmbeddedRuntime, tmp_path: Path) -> None:
    bad = tmp_path / "runtime-ca.pem"
    bad.write_text("not a certificate\n")
    env = {"CONNECTIONS_TO_OTHER_PODS_CA_PATH": str(bad), "DEFAULT_CA_PATH": "", "SSL_CERT_FILE": str(impostor.ca_path)}
    with serving(impostor, tmp_path, env) as proc:
        assert proc.wait(WAIT) == 2
    assert f"cannot use the runtime's CA bundle {bad}" in (tmp_path / "run.log").read_text()
    assert_received_nothing(impostor)


def test_sigterm_while_waiting_for_the_ca_file_exits_0_at_once(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    env = {"CONNECTIONS_TO_OTHER_PODS_CA_PATH": str(tmp_path / "not-yet.pem"), "DEFAULT_CA_PATH": ""}
    with serving(runtime, tmp_path, env) as proc:
        time.sleep(2.0)  # discovery waits up to a minute for the file
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0  # not the start-up error a minute later
    assert "before connecting to the runtime" in (tmp_path / "run.log").read_text()


def test_a_ca_file_written_after_start_is_waited_for(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    late = tmp_path / "late-ca.pem"
    job = runtime.submit("echo", "late CA")
    env = {"CONNECTIONS_TO_OTHER_PODS_CA_PATH": str(late), "DEFAULT_CA_PATH": ""}
    with serving(runtime, tmp_path, env) as proc:
        time.sleep(1.0)
        assert proc.poll() is None and runtime.record.restart_notifications(0) == []
        shutil.copy(runtime.ca_path, late)
        assert_echoed(runtime, job, "late CA")


def test_every_request_verifies_against_the_runtime_ca_only(runtime: EmbeddedRuntime, impostor: EmbeddedRuntime,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(impostor.ca_path))  # what the system store would honour
    monkeypatch.setenv("SSL_CERT_DIR", str(impostor.state_dir))
    endpoints = discover({**impostor.env(0), "CONNECTIONS_TO_OTHER_PODS_CA_PATH": str(runtime.ca_path),
                          "DEFAULT_CA_PATH": ""}, wait=1)
    service = Service(endpoints)
    conn = service.connection()
    calls: list[Callable[[], object]] = [
        lambda: service.post_schemas(conn, [{"functionName": "f"}]), lambda: service.restart_notification(conn),
        lambda: service.get_job(conn), lambda: service.post_result(conn, "j", b"1"),
        lambda: service.post_result(conn, "j", iter([b"1", b"2"]))]
    for call in calls:
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            call()
    assert_received_nothing(impostor)


@pytest.mark.parametrize("legacy", [False, True])
def test_discovery_fails_closed_naming_the_ca_that_never_appeared(tmp_path: Path, legacy: bool) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    missing = str(tmp_path / "never.pem")
    if legacy:
        connection = tmp_path / "connection.json"
        connection.write_text(json.dumps({"host": "h", "port": 1, "getJobPath": "/j", "postResultPath": "/r",
                                          "moduleAuthToken": "t", "trustStorePath": missing}))
        env = {"CONNECTION_TO_RUNTIME": str(connection)}
    else:
        env = {"GET_JOB_URI": "https://h:1/j", "POST_RESULT_URI": "https://h:1/r", "MODULE_AUTH_TOKEN": str(token),
               "DEFAULT_CA_PATH": missing}
    with pytest.raises(RuntimeUnavailable, match=f"{missing}; cmworker trusts only the CA the runtime gives"):
        discover(env, wait=0.3)


def test_no_ca_files_is_no_context() -> None:
    with pytest.raises(RuntimeUnavailable, match="never falls back"):
        ssl_context([])
    service = Service(Endpoints("h", 1, "/j", "/r", None, None, "t", "test", ()))
    with pytest.raises(RuntimeUnavailable):
        service.connection()


# -- 4: start-up retries give way to SIGTERM --------------------------------------------------------


@contextmanager
def black_hole() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that accepts connections and never says a word (not even TLS)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with server:
            while True:
                try:
                    accepted.append(server.accept()[0])
                except OSError:
                    return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        for sock in accepted:
            sock.close()
        thread.join(5)


def sigterm_exits_at_once(proc: subprocess.Popen[bytes], tmp: Path, started: Callable[[], bool]) -> None:
    wait_until(started, "the start-up requests never began")
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    # A retry loop deaf to the signal went on for 25-65 s; a request in flight may take its deadline.
    assert proc.wait(25) == 0, (tmp / "run.log").read_text()[-3000:]


def test_sigterm_while_the_runtime_refuses_connections_exits_at_once(runtime: EmbeddedRuntime,
                                                                     tmp_path: Path) -> None:
    runtime.refuse_connections(300.0)
    with serving(runtime, tmp_path) as proc:
        sigterm_exits_at_once(proc, tmp_path, lambda: "retrying" in (tmp_path / "run.log").read_text())


def test_sigterm_while_the_runtime_certificate_is_refused_exits_at_once(runtime: EmbeddedRuntime,
                                                                        impostor: EmbeddedRuntime,
                                                                        tmp_path: Path) -> None:
    env = {"CONNECTIONS_TO_OTHER_PODS_CA_PATH": str(impostor.ca_path), "DEFAULT_CA_PATH": ""}
    with serving(runtime, tmp_path, env) as proc:
        sigterm_exits_at_once(proc, tmp_path,
                              lambda: "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "run.log").read_text())
    assert runtime.record.restart_notifications(0) == []


def test_sigterm_while_a_start_up_request_hangs_exits_at_once(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with black_hole() as (port, accepted), serving(runtime, tmp_path, {"RUNTIME_PORT": str(port)}) as proc:
        sigterm_exits_at_once(proc, tmp_path, lambda: len(accepted) >= 1)


# -- 5: the schemas reach a runtime that was late ---------------------------------------------------


def test_schemas_reach_a_runtime_that_refused_connections_at_first(runtime: EmbeddedRuntime,
                                                                   tmp_path: Path) -> None:
    runtime.refuse_connections(8.0)  # the old start-up gave up on the schemas after five tries, ~1.5 s
    with serving(runtime, tmp_path):
        assert_echoed(runtime, runtime.submit("echo", "first"), "first")
        wait_until(lambda: runtime.record.schemas(0) is not None, "the schemas were never posted")
    assert {s["functionName"] for s in runtime.record.schemas(0) or []} >= {"echo", "segfault"}


# -- 6: empty replies that come back at once are paced ----------------------------------------------

WINDOW = 3.0
MOST_GETS = 60  # in WINDOW seconds; unpaced, a loopback runtime answering at once takes thousands


def gets_in_a_window(rt: EmbeddedRuntime, tmp: Path, proc: subprocess.Popen[bytes]) -> int:
    assert_echoed(rt, rt.submit("echo", "up"), "up")  # serving; the first empty GETs are behind it
    before = rt.record.gets(0)
    time.sleep(WINDOW)
    assert proc.poll() is None, (tmp / "run.log").read_text()[-3000:]
    return rt.record.gets(0) - before


def test_instant_empty_replies_are_paced_and_a_job_still_comes_through(tmp_path: Path) -> None:
    with EmbeddedRuntime(long_poll=0.0, max_concurrent_tasks=2) as rt, serving(rt, tmp_path) as proc:
        assert gets_in_a_window(rt, tmp_path, proc) <= MOST_GETS
        assert_echoed(rt, rt.submit("echo", "after"), "after")


def test_instant_replies_without_a_usable_job_are_paced(tmp_path: Path) -> None:
    with EmbeddedRuntime(long_poll=0.0, max_concurrent_tasks=2) as rt, serving(rt, tmp_path) as proc:
        rt.spoil_next("get", "trickle_body", 10**5)  # at once: 200 and a body that names no job
        assert gets_in_a_window(rt, tmp_path, proc) <= MOST_GETS
        rt.clear_faults()
        assert_echoed(rt, rt.submit("echo", "after"), "after")


def test_4xx_replies_to_get_back_off_like_5xx(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    with serving(runtime, tmp_path) as proc:
        assert_echoed(runtime, runtime.submit("echo", "up"), "up")
        runtime.fail_next_gets(10**5, 404)
        time.sleep(WINDOW)
        refused = (tmp_path / "run.log").read_text().count("GET job answered HTTP 404")
        assert 0 < refused <= 20  # uniform(0, 0.1 s) pauses that never grow would log ~60
        runtime.clear_faults()
        assert_echoed(runtime, runtime.submit("echo", "after"), "after")
        assert proc.poll() is None


def test_the_pause_after_empty_replies_grows_to_its_cap_and_resets() -> None:
    polls = EmptyPolls()
    pauses = [polls.pause(0.001, job=False) for _ in range(40)]
    assert pauses[0] > 0 and pauses == sorted(pauses) and pauses[-1] == EMPTY_PAUSE_CAP
    assert polls.pause(0.001, job=True) == 0.0 and polls.pause(0.001, job=False) == pauses[0]
    assert polls.pause(FAST_EMPTY, job=False) == 0.0  # held like a long poll: no pause


def test_backoff_stays_capped_however_many_failures() -> None:
    assert all(0 <= backoff(attempt) <= 5.0 for attempt in (0, 10, 1100, 10**6))


# -- 7: a job id is one path segment, whatever it is -------------------------------------------------

ODD_IDS = [".", "..", "...", "a/b", "../../schemas", "a?b=c#d", "100%", "%2E", "a b", "caf\u00e9 \u2603", "-"]


def test_odd_job_ids_are_answered_once_at_their_own_job(runtime: EmbeddedRuntime, tmp_path: Path) -> None:
    for job_id in ODD_IDS:
        runtime.submit("echo", job_id, job_id=job_id)
    with serving(runtime, tmp_path) as proc:
        for job_id in ODD_IDS:
            assert_echoed(runtime, job_id, job_id)
            assert [post.status for post in runtime.record.result_posts(job_id)] == [204]
        assert proc.poll() is None
    assert runtime.record.schemas(0) is not None  # "../../schemas" did not land there


@pytest.mark.parametrize(("job_id", "segment"), [(".", "%2E"), ("..", "%2E%2E"), ("...", "%2E%2E%2E"),
                                                 ("a.b", "a.b"), (".a", ".a"), ("a/b", "a%2Fb"),
                                                 ("%2E", "%252E"), ("\u00e9", "%C3%A9")])
def test_the_result_url_is_one_segment_that_is_never_a_dot_segment(job_id: str, segment: str) -> None:
    endpoints = Endpoints("h", 1, "/j", "/r", None, None, "t", "test", ())
    assert endpoints.result_url(job_id) == f"/r/{segment}"


# -- the reply reader's bounds, byte by byte ---------------------------------------------------------


def _reply(data: bytes, max_body: int = transport.MAX_BODY) -> tuple[int, bytes, bool]:
    return read_reply(io.BufferedReader(io.BytesIO(data)), "GET", max_body)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000000000\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1025\r\n\r\n" + b"x" * 1025,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"200\r\n" + b"x" * 512 + b"\r\n" + b"201\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1025,
    b"HTTP/1.1 100 Continue\r\n\r\n" * (transport.MAX_INTERIM + 1) + b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"y" * 9000 + b"\r\n" + b"X-Pad: " + b"y" * 9000 + b"\r\n"
    + (b"X-Pad: " + b"y" * 9000 + b"\r\n") * 6 + b"\r\n",
], ids=["huge length", "length over the bound", "huge chunk", "chunks over the bound", "read to close over the bound",
        "interim flood", "101", "head over 64 KiB"])
def test_the_reply_reader_refuses_what_goes_past_its_bounds(data: bytes) -> None:
    with pytest.raises(BadReply):
        _reply(data, max_body=1024)


def test_the_reply_reader_reads_up_to_its_bounds() -> None:
    assert _reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024, 1024)[1] == b"x" * 1024
    assert _reply(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * transport.MAX_INTERIM
                  + b"HTTP/1.1 204 No Content\r\n\r\n")[0] == 204
    big = 3 * 2**20 + 5  # read in pieces
    assert len(_reply(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % big + b"z" * big, big)[1]) == big


def test_a_trickling_reply_fails_at_the_deadline_of_the_whole_request(runtime: EmbeddedRuntime) -> None:
    runtime.spoil_next("get", "trickle_head", interval=0.5)  # each byte well within a 3 s read timeout
    service = Service(discover(runtime.env(0), wait=1), long_poll_timeout=3.0)
    conn = service.connection()
    with pytest.raises(TransportError, match=r"ran out of time|timed out"):
        service.get_job(conn)
    assert service.get_job(conn).status == 204  # on a fresh connection
    conn.close()


def test_a_streamed_body_is_not_cut_off_while_its_items_are_awaited(runtime: EmbeddedRuntime) -> None:
    job = runtime.submit("stream")
    service = Service(discover(runtime.env(0), wait=1), post_timeout=0.5)
    conn = service.connection()
    assert service.get_job(conn).status == 200

    def slow_items() -> Iterator[bytes]:
        for item in (b'{"i": 0}', b'{"i": 1}'):
            time.sleep(0.4)  # together longer than post_timeout: only the waits for the runtime count
            yield item

    assert service.post_result(conn, job, slow_items()).status == 204
    conn.close()
    assert runtime.record.job(job).answer == b'{"i": 0}{"i": 1}'  # type: ignore[union-attr]


def test_a_connection_that_fails_the_handshake_costs_its_deadline_only(runtime: EmbeddedRuntime) -> None:
    context = ssl.create_default_context(cafile=str(runtime.ca_path))
    with black_hole() as (port, _accepted):
        conn = transport.Connection("127.0.0.1", port, context, {}, timeout=0.5)
        with pytest.raises(TransportError, match=r"timed out|ran out of time"):
            conn.request("GET", "/")
