"""The connection to the compute-module runtime: discovery, and HTTPS calls (parent process only).

Discovery understands every form the platform uses (see DESIGN §2): the ``*_URI`` variables (with
``RUNTIME_HOST``/``RUNTIME_PORT`` taking precedence for host and port, as the official SDK does), and
the legacy ``CONNECTION_TO_RUNTIME`` JSON file. Files the platform writes a little after start (the
token file, the legacy connection file) are waited for, for a bounded time.

Every call goes over one keep-alive TLS connection per thread (``cmworker.transport``): measured on
this kind of machine it costs a fraction of the CPU of ``requests`` for the same call (see
docs/benchmarks.md), and it never reads ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, so TLS is always
verified against the runtime's own CA whatever the environment says.
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

__all__ = ["Connection", "Endpoints", "Reply", "Service", "TransportError", "backoff", "discover", "ssl_context"]

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
    _check_token(token, f"the token file {token_file}")
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
        _check_token(token, f"moduleAuthToken in {path}")
        extra_ca = (info["trustStorePath"],) if info.get("trustStorePath") else ()
        return Endpoints(
            host=str(info["host"]), port=int(info["port"]), job_path=str(info["getJobPath"]),
            result_path=str(info["postResultPath"]).rstrip("/"), schema_path=None, restart_path=None,
            token=token, token_source=f"moduleAuthToken in {path} (CONNECTION_TO_RUNTIME)",
            ca_files=tuple(dict.fromkeys(_ca_files(env) + extra_ca)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeUnavailable(f"the connection file {path} lacks or mangles {exc}") from None


def _check_token(token: str, source: str) -> None:
    """A token goes into a header line as it is: a line break or other control character would end it."""
    bad = next((c for c in token if ord(c) < 0x20 or ord(c) == 0x7f), None)
    if bad is not None or not token.isascii():
        what = f"the control character {bad!r}" if bad is not None else "a character outside ASCII"
        raise RuntimeUnavailable(f"the module auth token in {source} contains {what}")


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
        return Connection(self.endpoints.host, self.endpoints.port, self.context,
                          {"Module-Auth-Token": self.endpoints.token})

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
