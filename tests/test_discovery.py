"""Finding the runtime from every form of environment the platform injects (service.discover)."""

from __future__ import annotations

import io
import json
import ssl
import threading
import time
from pathlib import Path

import pytest

from cmworker.errors import RuntimeUnavailable
from cmworker.replica.service import Service, discover
from cmworker.replica.transport import BadReply, Connection, read_reply
from cmworker.runtime.embedded import EmbeddedRuntime


def uris(tmp_path: Path, **extra: str) -> dict[str, str]:
    token = tmp_path / "token"
    token.write_text("  the-token\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    base = "https://runtime.local:8945/interactive-module/api/internal-query"
    return {"GET_JOB_URI": f"{base}/job", "POST_RESULT_URI": f"{base}/results", "POST_SCHEMA_URI": f"{base}/schemas",
            "RESTART_NOTIFICATION_URI": f"{base}/restart-notification", "MODULE_AUTH_TOKEN": str(token),
            "CONNECTIONS_TO_OTHER_PODS_CA_PATH": str(ca), "DEFAULT_CA_PATH": str(tmp_path / "missing.pem"),
            **extra}


def test_uris_with_whitespace_around_the_token(tmp_path: Path) -> None:
    found = discover(uris(tmp_path), wait=1)
    assert (found.host, found.port, found.token) == ("runtime.local", 8945, "the-token")
    assert found.job_path == "/interactive-module/api/internal-query/job"
    assert found.result_url("a/b") == "/interactive-module/api/internal-query/results/a%2Fb"
    assert found.ca_files == (str(tmp_path / "ca.pem"),)  # the CA that does not exist is skipped
    assert "the-token" not in repr(found)


@pytest.mark.parametrize("token", ["two\nlines", "tab\there", "caf\u00e9"], ids=repr)
def test_a_token_that_cannot_go_into_a_header_is_refused_naming_its_file(tmp_path: Path, token: str) -> None:
    env = uris(tmp_path)
    Path(env["MODULE_AUTH_TOKEN"]).write_text(token, encoding="utf-8")
    with pytest.raises(RuntimeUnavailable, match=f"module auth token in the token file {env['MODULE_AUTH_TOKEN']}"):
        discover(env, wait=1)


def test_a_request_target_with_spaces_or_controls_is_never_sent() -> None:
    conn = Connection("127.0.0.1", 1, ssl.create_default_context(), {"Module-Auth-Token": "t"})
    for target in ("/results/a b", "/results/a\r\nX-Injected: 1", ""):
        with pytest.raises(ValueError, match="not a request target"):
            conn.request("POST", target, b"null")


def test_runtime_host_and_port_take_precedence_like_the_sdk(tmp_path: Path) -> None:
    found = discover(uris(tmp_path, RUNTIME_HOST="localhost", RUNTIME_PORT="9999"), wait=1)
    assert (found.host, found.port) == ("localhost", 9999)


def test_both_ca_variables_are_trusted(tmp_path: Path) -> None:
    other = tmp_path / "default.pem"
    other.write_text("y")
    found = discover(uris(tmp_path, DEFAULT_CA_PATH=str(other)), wait=1)
    assert found.ca_files == (str(tmp_path / "ca.pem"), str(other))


def test_older_runtimes_without_restart_or_schema_uris(tmp_path: Path) -> None:
    env = uris(tmp_path)
    del env["RESTART_NOTIFICATION_URI"], env["POST_SCHEMA_URI"]
    found = discover(env, wait=1)
    assert found.restart_path is None and found.schema_path is None


def test_token_file_written_after_start_is_waited_for(tmp_path: Path) -> None:
    env = uris(tmp_path, MODULE_AUTH_TOKEN=str(tmp_path / "late-token"))
    timer = threading.Timer(0.3, lambda: (tmp_path / "late-token").write_text("late\n"))
    timer.start()
    try:
        assert discover(env, wait=10).token == "late"
    finally:
        timer.cancel()


def test_a_token_file_that_never_appears_is_a_clear_error(tmp_path: Path) -> None:
    env = uris(tmp_path, MODULE_AUTH_TOKEN=str(tmp_path / "never"))
    with pytest.raises(RuntimeUnavailable, match=r"token file \(MODULE_AUTH_TOKEN\) at .*never did not appear"):
        discover(env, wait=0.3)


def test_legacy_connection_file_written_late_and_half_written_first(tmp_path: Path) -> None:
    path = tmp_path / "connection.json"
    info = {"host": "localhost", "port": 8945, "getJobPath": "/api/v1/getJob",
            "postResultPath": "/api/v1/postResult", "moduleAuthToken": "legacy-token",
            "trustStorePath": str(tmp_path / "trust.pem")}

    def write() -> None:
        path.write_text('{"host": "local')  # caught mid-write first
        time.sleep(0.3)
        path.write_text(json.dumps(info))
        time.sleep(0.3)
        (tmp_path / "trust.pem").write_text("the CA comes last")  # waited for like the file naming it

    timer = threading.Timer(0.2, write)
    timer.start()
    try:
        found = discover({"CONNECTION_TO_RUNTIME": str(path)}, wait=10)
    finally:
        timer.cancel()
    assert (found.host, found.port, found.token) == ("localhost", 8945, "legacy-token")
    assert (found.job_path, found.result_path) == ("/api/v1/getJob", "/api/v1/postResult")
    assert found.ca_files == (str(tmp_path / "trust.pem"),)


def test_no_runtime_configured_says_what_to_do() -> None:
    with pytest.raises(RuntimeUnavailable, match="cmworker dev"):
        discover({}, wait=0)


def test_the_legacy_file_of_the_embedded_runtime_reaches_it_over_https() -> None:
    with EmbeddedRuntime(long_poll=0.2) as rt:
        env = {"CONNECTION_TO_RUNTIME": rt.env(0)["CONNECTION_TO_RUNTIME"]}
        service = Service(discover(env, wait=5))
        conn = service.connection()
        try:
            job = rt.submit("echo", 1)
            reply = service.get_job(conn)
            assert reply.status == 200 and json.loads(reply.body)["computeModuleJobV1"]["jobId"] == job
            assert service.post_result(conn, job, b'"done"').status == 204
        finally:
            conn.close()
        assert rt.record.accepted(job) == 1


def test_a_keep_alive_connection_the_runtime_closed_is_replaced_before_it_is_used() -> None:
    with EmbeddedRuntime() as rt:
        service = Service(discover(rt.env(0), wait=1), long_poll_timeout=5)
        conn = service.connection()
        first = rt.submit("first")
        assert service.get_job(conn).status == 200
        assert service.post_result(conn, first, b"1").status == 204
        rt.restart()  # every open connection is cut while this one sits idle
        rt.submit("second")
        reply = service.get_job(conn)  # a reused dead connection would raise TransportError here
        assert reply.status == 200 and b'"second"' in reply.body
        conn.close()


def _reply(data: bytes, method: str = "GET") -> tuple[int, bytes, bool]:
    return read_reply(io.BufferedReader(io.BytesIO(data)), method)  # type: ignore[arg-type]


def test_the_reply_reader_reads_what_the_runtime_and_proxies_send() -> None:
    assert _reply(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n"
                  b'{"a":1}extra') == (200, b'{"a":1}', False)
    assert _reply(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, b"", False)
    assert _reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n") == (200, b"abcde", False)
    assert _reply(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy") \
        == (503, b"busy", True)
    assert _reply(b"HTTP/1.0 200 OK\r\n\r\nuntil the end") == (200, b"until the end", True)  # read to the close
    assert _reply(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok") == (200, b"ok", False)
    assert _reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", method="HEAD") == (200, b"", False)


@pytest.mark.parametrize("data", [b"", b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
                                  b"HTTP/2 200 OK\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
                                  b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                                  b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nab",
                                  b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
                                  b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"], ids=repr)
def test_the_reply_reader_refuses_what_is_not_a_whole_http_reply(data: bytes) -> None:
    with pytest.raises(BadReply):
        _reply(data)
