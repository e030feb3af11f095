"""The connection to the compute-module runtime: discovery, and HTTPS calls (parent process only).

Discovery understands every form the platform uses (see DESIGN §2): the ``*_URI`` variables (with
``RUNTIME_HOST``/``RUNTIME_PORT`` taking precedence for host and port, as the official SDK does), and
the legacy ``CONNECTION_TO_RUNTIME`` JSON file. Files the platform writes a little after start (the
token file, the legacy connection file) are waited for, for a bounded time.

The job loop runs on ``http.client`` over one keep-alive TLS connection per thread: measured on this
kind of machine it costs a fraction of the CPU of ``requests`` for the same call (see
docs/benchmarks.md), and it never reads ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, so TLS is always
verified against the runtime's own CA whatever the environment says.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote, urlsplit

from cmworker.errors import RuntimeUnavailable

FILE_WAIT = 60.0          # how long to wait for files the platform writes late
_RETRY_BASE, _RETRY_CAP = 0.1, 5.0


@dataclass(frozen=True)
class Endpoints:
    host: str
    port: int
    job_path: str
    result_path: str
    schema_path: str | None
    restart_path: str | None
    token: str = field(repr=False)
    token_source: str
    ca_files: tuple[str, ...]

    def result_url(self, job_id: str) -> str:
        return f"{self.result_path}/{quote(job_id, safe='')}"


def discover(environ: Mapping[str, str] | None = None, *, wait: float = FILE_WAIT,
             sleep: Callable[[float], None] = time.sleep) -> Endpoints:
    """Where the runtime is and how to authenticate, from the environment the platform injects."""
    env = os.environ if environ is None else environ
    deadline = time.monotonic() + wait
    if env.get("GET_JOB_URI"):
        return _from_uris(env, deadline, sleep)
    if env.get("CONNECTION_TO_RUNTIME"):
        return _from_connection_file(env, deadline, sleep)
    raise RuntimeUnavailable(
        "no compute-module runtime is configured: neither GET_JOB_URI nor CONNECTION_TO_RUNTIME is set "
        "(run inside a Foundry compute module, or use `cmworker dev` for the embedded runtime)")


def _from_uris(env: Mapping[str, str], deadline: float, sleep: Callable[[float], None]) -> Endpoints:
    job = urlsplit(env["GET_JOB_URI"])
    if not env.get("POST_RESULT_URI"):
        raise RuntimeUnavailable("GET_JOB_URI is set but POST_RESULT_URI is not")
    host = env.get("RUNTIME_HOST") or job.hostname or "localhost"
    port_text = env.get("RUNTIME_PORT") or str(job.port or 443)
    try:
        port = int(port_text)
    except ValueError:
        raise RuntimeUnavailable(f"RUNTIME_PORT={port_text!r} is not a port number") from None
    token_file = env.get("MODULE_AUTH_TOKEN")
    if not token_file:
        raise RuntimeUnavailable("MODULE_AUTH_TOKEN (the path of the token file) is not set")
    token = _read_late(token_file, deadline, sleep, "the module auth token file (MODULE_AUTH_TOKEN)").strip()
    return Endpoints(
        host=host, port=port,
        job_path=job.path,
        result_path=urlsplit(env["POST_RESULT_URI"]).path.rstrip("/"),
        schema_path=urlsplit(env["POST_SCHEMA_URI"]).path if env.get("POST_SCHEMA_URI") else None,
        restart_path=(urlsplit(env["RESTART_NOTIFICATION_URI"]).path
                      if env.get("RESTART_NOTIFICATION_URI") else None),
        token=token, token_source=f"the token file {token_file} (MODULE_AUTH_TOKEN)",
        ca_files=_ca_files(env),
    )


def _from_connection_file(env: Mapping[str, str], deadline: float,
                          sleep: Callable[[float], None]) -> Endpoints:
    path = env["CONNECTION_TO_RUNTIME"]
    while True:
        text = _read_late(path, deadline, sleep, "the connection file (CONNECTION_TO_RUNTIME)")
        try:
            info = json.loads(text)
            break
        except ValueError:  # caught mid-write: try again until the deadline
            if time.monotonic() >= deadline:
                raise RuntimeUnavailable(f"the connection file {path} is not valid JSON") from None
            sleep(0.1)
    try:
        token = str(info["moduleAuthToken"]).strip()
        extra_ca = (info["trustStorePath"],) if info.get("trustStorePath") else ()
        return Endpoints(
            host=str(info["host"]), port=int(info["port"]), job_path=str(info["getJobPath"]),
            result_path=str(info["postResultPath"]).rstrip("/"), schema_path=None, restart_path=None,
            token=token, token_source=f"moduleAuthToken in {path} (CONNECTION_TO_RUNTIME)",
            ca_files=tuple(dict.fromkeys(_ca_files(env) + extra_ca)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeUnavailable(f"the connection file {path} lacks or mangles {exc}") from None


def _ca_files(env: Mapping[str, str]) -> tuple[str, ...]:
    names = ("CONNECTIONS_TO_OTHER_PODS_CA_PATH", "DEFAULT_CA_PATH")
    return tuple(dict.fromkeys(env[n] for n in names if env.get(n) and os.path.exists(env[n])))


def _read_late(path: str, deadline: float, sleep: Callable[[float], None], what: str) -> str:
    while True:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.strip():
                return text
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise RuntimeUnavailable(f"cannot read {what} at {path}: {exc}") from None
        if time.monotonic() >= deadline:
            raise RuntimeUnavailable(f"{what} at {path} did not appear (or stayed empty)")
        sleep(0.1)


def ssl_context(ca_files: Iterable[str]) -> ssl.SSLContext:
    """Verify the runtime against its own CA bundle(s) only; the system store when none is given."""
    files = list(ca_files)
    context = ssl.create_default_context(cafile=files[0] if files else None)
    for extra in files[1:]:
        context.load_verify_locations(cafile=extra)
    return context


class TransportError(Exception):
    """The request may not have reached the runtime, or its answer was lost; safe to retry."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


_MAX_LINE = 65536
_MAX_HEADERS = 100


class _Headers(dict[str, str]):
    """A response's headers by lower-case name: the little of ``email.message.Message`` that is used."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def get_all(self, name: str, default: Any = None) -> Any:
        value = self.get(name)
        return default if value is None else [value]


class _Response(http.client.HTTPResponse):
    """``HTTPResponse`` with a lean reader of the status line and headers.

    The standard one hands the headers to the ``email`` package's parser, which costs ~20 µs per response:
    with two requests per job, a tenth of the parent's work. Only the fields ``read()`` relies on are set
    here (status, version, length, chunked, will_close); the body is read by the standard code.
    """

    def begin(self) -> None:
        if cast(Any, self.headers) is not None:  # begun already
            return
        while True:
            version, status, reason = self._status_line()
            headers = self._header_lines()
            if status != http.client.CONTINUE:
                break
        self.version, self.status, self.reason = version, status, reason
        self.headers = self.msg = headers  # type: ignore[assignment]
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.chunk_left = None
        length = headers.get("content-length")
        try:
            self.length = int(length) if length is not None and not self.chunked else None
        except ValueError:
            self.length = None
        if self.length is not None and self.length < 0:
            self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200 \
                or getattr(self, "_method", None) == "HEAD":
            self.length = 0
        connection = headers.get("connection", "").lower()
        self.will_close = "close" in connection or (version == 10 and "keep-alive" not in connection) \
            or (not self.chunked and self.length is None)

    def _status_line(self) -> tuple[int, int, str]:
        line = self.fp.readline(_MAX_LINE + 1)
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("status line")
        parts = line.decode("iso-8859-1").rstrip("\r\n").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise http.client.BadStatusLine(line.decode("iso-8859-1", "replace"))
        return (11 if parts[0] == "HTTP/1.1" else 10), int(parts[1]), parts[2] if len(parts) > 2 else ""

    def _header_lines(self) -> _Headers:
        headers = _Headers()
        for _ in range(_MAX_HEADERS + 1):
            line = self.fp.readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                raise http.client.LineTooLong("header line")
            if line in (b"\r\n", b"\n", b""):
                return headers
            name, sep, value = line.decode("iso-8859-1").partition(":")
            if sep:
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")


class _HTTPSConnection(http.client.HTTPSConnection):
    response_class = _Response


class Connection:
    """One keep-alive HTTPS connection to the runtime. Not thread-safe: one per thread."""

    def __init__(self, endpoints: Endpoints, context: ssl.SSLContext, timeout: float = 30.0) -> None:
        self.endpoints = endpoints
        self.context = context
        self.timeout = timeout
        self._conn: http.client.HTTPSConnection | None = None
        self._headers = {"Module-Auth-Token": endpoints.token}

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                content_type: str | None = None, timeout: float | None = None) -> Reply:
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        chunked = body is not None and not isinstance(body, bytes | bytearray)
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        conn = self._connect()
        conn.timeout = timeout or self.timeout
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        try:
            conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.will_close:
            self.close()
        return Reply(response.status, data)

    def _connect(self) -> http.client.HTTPSConnection:
        if self._conn is not None and _dropped(self._conn):
            self.close()  # the runtime closed it while it was idle (a restart, an idle timeout)
        if self._conn is None:
            self._conn = _HTTPSConnection(self.endpoints.host, self.endpoints.port,
                                          timeout=self.timeout, context=self.context)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle keep-alive connection was closed by the other end.

    Between requests nothing may arrive on it; if its socket is readable, what is there is the end of
    the stream (or a TLS close alert), and a request sent on it would fail after the wait for a reply.
    """
    sock = conn.sock
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def backoff(attempt: int) -> float:
    """Capped exponential backoff with full jitter, in seconds, for retry number ``attempt`` (0-based)."""
    return random.uniform(0, min(_RETRY_CAP, _RETRY_BASE * 2 ** attempt))


class Service:
    """The runtime's four module endpoints, each call on the calling thread's own connection."""

    def __init__(self, endpoints: Endpoints, *, long_poll_timeout: float = 60.0) -> None:
        self.endpoints = endpoints
        self.context = ssl_context(endpoints.ca_files)
        self.long_poll_timeout = long_poll_timeout

    def connection(self) -> Connection:
        return Connection(self.endpoints, self.context)

    def get_job(self, conn: Connection) -> Reply:
        """One long poll: 200 with a job, 204 without. Raises TransportError on network trouble."""
        return conn.request("GET", self.endpoints.job_path, timeout=self.long_poll_timeout)

    def post_result(self, conn: Connection, job_id: str, body: bytes | Iterable[bytes]) -> Reply:
        return conn.request("POST", self.endpoints.result_url(job_id), body, "application/octet-stream")

    def post_schemas(self, conn: Connection, schemas: list[dict[str, Any]]) -> Reply | None:
        if self.endpoints.schema_path is None:
            return None
        return conn.request("POST", self.endpoints.schema_path, json.dumps(schemas).encode(), "application/json")

    def restart_notification(self, conn: Connection) -> Reply | None:
        if self.endpoints.restart_path is None:
            return None
        return conn.request("POST", self.endpoints.restart_path, b"")


def is_connection_refused(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ConnectionRefusedError | socket.gaierror)
