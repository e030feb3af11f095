"""The connection to the compute-module runtime: discovery, and HTTPS calls (parent process only).

Discovery understands every form the platform uses (see DESIGN §2): the ``*_URI`` variables (with
``RUNTIME_HOST``/``RUNTIME_PORT`` taking precedence for host and port, as the official SDK does), and
the legacy ``CONNECTION_TO_RUNTIME`` JSON file. Files the platform writes a little after start (the
token file, the legacy connection file) are waited for, for a bounded time.

Every call goes over one keep-alive TLS connection per thread (``cmworker.replica.transport``): measured on
this kind of machine it costs a fraction of the CPU of ``requests`` for the same call (see
docs/benchmarks.md). TLS is verified against the CA bundle(s) the runtime gives and nothing else: never
the system's store, never ``SSL_CERT_FILE``/``SSL_CERT_DIR``/``REQUESTS_CA_BUNDLE``. A runtime that
names no CA, or whose CA file never appears, is a start-up error, not a reason to trust more.

Each call has a deadline for the whole of it and a bound on the size of its reply (``Service``); the
numbers and the reasons for them are below and in docs/deploying.md ("Talking to the runtime").
"""

from __future__ import annotations

import json
import os
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from cmworker.errors import RuntimeUnavailable
from cmworker.replica.transport import Connection, Reply, TransportError

__all__ = ["Connection", "EmptyPolls", "Endpoints", "Reply", "Service", "TransportError", "backoff", "discover",
           "ssl_context"]

FILE_WAIT = 60.0          # how long to wait for files the platform writes late
_RETRY_BASE, _RETRY_CAP = 0.1, 5.0
_CA_VARIABLES = ("CONNECTIONS_TO_OTHER_PODS_CA_PATH", "DEFAULT_CA_PATH")

# A GET job's reply carries the caller's query. The embedded runtime takes queries up to 256 MiB
# (runtime.server.QUERY_BODY_LIMIT), and the parent holds a job's body whole before handing it to a
# worker, so this is the most memory one reply may cost it. Anything larger is refused unread.
MAX_JOB_REPLY = 256 * 2**20
# Every other reply is a status and a few bytes: 204, a JSON error message, or the restart
# notification's list of the job ids this replica held (at most MAX_CONCURRENT_TASKS of them).
MAX_REPLY = 2**20
# A POST (a result, the schemas, the restart notification) is answered by the runtime as soon as it has
# the body; it gets this long in all, plus a second per MiB of body (a 32 MiB result: 42 s). The poll
# thread posts some answers itself, and no job is taken while it does, so this bound is also the
# longest a misbehaving POST reply can keep a replica from taking work.
POST_TIMEOUT = 10.0
POST_RATE = 2**20         # bytes per second a POST body is allowed to take on top of POST_TIMEOUT
# A GET job is a long poll: the runtime holds it ~5 s when it has no work. An empty reply much quicker
# than that means the runtime does not hold GETs (or is broken): without a pause the loop would ask
# thousands of times a second. The pause doubles from EMPTY_PAUSE up to EMPTY_PAUSE_CAP, and is gone as
# soon as a job comes or a GET is held like a long poll.
FAST_EMPTY = 0.1
EMPTY_PAUSE, EMPTY_PAUSE_CAP = 0.05, 1.0


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
        """The result path of a job: its id as one path segment, whatever characters it has.

        Every reserved character is percent-encoded (``/``, ``?``, ``#``, ``%``, spaces, non-ASCII), and
        so are the dots of an id made of dots only: ``.`` and ``..`` would be dot-segments, which a
        server or proxy removes (``results/..`` is ``results``'s parent).
        """
        segment = quote(job_id, safe="")
        if not segment.strip("."):
            segment = segment.replace(".", "%2E")
        return f"{self.result_path}/{segment}"


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
    _check_token(token, f"the token file {token_file}")
    return Endpoints(
        host=host, port=port,
        job_path=job.path,
        result_path=urlsplit(env["POST_RESULT_URI"]).path.rstrip("/"),
        schema_path=urlsplit(env["POST_SCHEMA_URI"]).path if env.get("POST_SCHEMA_URI") else None,
        restart_path=(urlsplit(env["RESTART_NOTIFICATION_URI"]).path
                      if env.get("RESTART_NOTIFICATION_URI") else None),
        token=token, token_source=f"the token file {token_file} (MODULE_AUTH_TOKEN)",
        ca_files=_ca_files(_named_cas(env), deadline, sleep),
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
        _check_token(token, f"moduleAuthToken in {path}")
        extra_ca = (("trustStorePath in the connection file", str(info["trustStorePath"])),) \
            if info.get("trustStorePath") else ()
        return Endpoints(
            host=str(info["host"]), port=int(info["port"]), job_path=str(info["getJobPath"]),
            result_path=str(info["postResultPath"]).rstrip("/"), schema_path=None, restart_path=None,
            token=token, token_source=f"moduleAuthToken in {path} (CONNECTION_TO_RUNTIME)",
            ca_files=_ca_files(_named_cas(env) + extra_ca, deadline, sleep),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeUnavailable(f"the connection file {path} lacks or mangles {exc}") from None


def _check_token(token: str, source: str) -> None:
    """A token goes into a header line as it is: a line break or other control character would end it."""
    bad = next((c for c in token if ord(c) < 0x20 or ord(c) == 0x7f), None)
    if bad is not None or not token.isascii():
        what = f"the control character {bad!r}" if bad is not None else "a character outside ASCII"
        raise RuntimeUnavailable(f"the module auth token in {source} contains {what}")


def _named_cas(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((name, env[name]) for name in _CA_VARIABLES if env.get(name))


def _ca_files(named: tuple[tuple[str, str], ...], deadline: float,
              sleep: Callable[[float], None]) -> tuple[str, ...]:
    """The runtime's CA files, ``(where it was named, path)`` each: every one that exists, once at least
    one does. They may be written after start like the token; if none appears, nothing is trusted."""
    shown = ", ".join(f"{what}={path}" for what, path in named)
    if not named:
        raise RuntimeUnavailable(
            f"no CA bundle for the runtime is named ({' or '.join(_CA_VARIABLES)}): cmworker trusts only "
            "the CA the runtime gives, never the system's certificate store")
    while True:
        present = tuple(dict.fromkeys(path for _, path in named if _non_empty(path)))
        if present:
            return present
        if time.monotonic() >= deadline:
            raise RuntimeUnavailable(
                f"the runtime's CA bundle did not appear (or stayed empty): {shown}; cmworker trusts only "
                "the CA the runtime gives, never the system's certificate store")
        sleep(0.1)


def _non_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


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
    """Verify the runtime against its own CA bundle(s), and nothing else.

    ``ssl.create_default_context()`` without a CA, or ``load_default_certs``, would trust the system's
    store, and through it ``SSL_CERT_FILE``/``SSL_CERT_DIR``: whoever can set those, or holds a
    certificate from a public CA, would receive the module token.
    """
    files = list(ca_files)
    if not files:
        raise RuntimeUnavailable("no CA bundle for the runtime: cmworker never falls back to the system's store")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in files:
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ValueError) as exc:
            raise RuntimeUnavailable(f"cannot use the runtime's CA bundle {path}: {exc}") from None
    return context


def backoff(attempt: int) -> float:
    """Capped exponential backoff with full jitter, in seconds, for retry number ``attempt`` (0-based)."""
    # The exponent stops growing long after the cap is reached: 2 ** 1024 is past what a float holds, and
    # the poll loop's count of failures grows for as long as the runtime is down.
    return random.uniform(0, min(_RETRY_CAP, _RETRY_BASE * 2 ** min(attempt, 32)))


class EmptyPolls:
    """The pause before the next GET job, after one that brought no job (see ``FAST_EMPTY``)."""

    def __init__(self) -> None:
        self.streak = 0

    def pause(self, seconds: float, job: bool) -> float:
        """After a GET that took ``seconds`` and brought a job or not: how long to wait before the next."""
        if job or seconds >= FAST_EMPTY:
            self.streak = 0
            return 0.0
        self.streak += 1
        return min(EMPTY_PAUSE_CAP, EMPTY_PAUSE * 2.0 ** min(self.streak - 1, 32))


class Service:
    """The runtime's four module endpoints, each call on the calling thread's own connection."""

    def __init__(self, endpoints: Endpoints, *, long_poll_timeout: float = 60.0,
                 post_timeout: float = POST_TIMEOUT) -> None:
        self.endpoints = endpoints
        self.long_poll_timeout = long_poll_timeout
        self.post_timeout = post_timeout
        # Made now, so that an unusable CA bundle is a start-up error; without any, every connection
        # fails instead (a Service that never connects, as in tests, needs none).
        self._context = ssl_context(endpoints.ca_files) if endpoints.ca_files else None

    @property
    def context(self) -> ssl.SSLContext:
        return self._context or ssl_context(self.endpoints.ca_files)

    def connection(self) -> Connection:
        return Connection(self.endpoints.host, self.endpoints.port, self.context,
                          {"Module-Auth-Token": self.endpoints.token}, timeout=self.post_timeout)

    def get_job(self, conn: Connection) -> Reply:
        """One long poll: 200 with a job, 204 without. Raises TransportError on network trouble, and on a
        reply that is not done within ``long_poll_timeout`` or is larger than ``MAX_JOB_REPLY``."""
        return conn.request("GET", self.endpoints.job_path, timeout=self.long_poll_timeout,
                            max_body=MAX_JOB_REPLY)

    def post_result(self, conn: Connection, job_id: str, body: bytes | Iterable[bytes]) -> Reply:
        return self._post(conn, self.endpoints.result_url(job_id), body, "application/octet-stream")

    def post_schemas(self, conn: Connection, schemas: list[dict[str, Any]]) -> Reply | None:
        if self.endpoints.schema_path is None:
            return None
        return self._post(conn, self.endpoints.schema_path, json.dumps(schemas).encode(), "application/json")

    def restart_notification(self, conn: Connection) -> Reply | None:
        if self.endpoints.restart_path is None:
            return None
        return self._post(conn, self.endpoints.restart_path, b"")

    def _post(self, conn: Connection, path: str, body: bytes | Iterable[bytes],
              content_type: str | None = None) -> Reply:
        """A streamed body's time is its own (see ``Connection.request``); a whole one's is bounded."""
        timeout = self.post_timeout + (len(body) / POST_RATE if isinstance(body, bytes) else 0.0)
        return conn.request("POST", path, body, content_type, timeout=timeout, max_body=MAX_REPLY)
