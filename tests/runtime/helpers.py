"""Helpers for the embedded runtime's tests: thin real HTTPS clients, bounded waits.

Nothing here mocks HTTP. ``Module`` plays a replica's client over one keep-alive ``http.client``
connection (full control over framing: chunked bodies, raw headers); ``raw_exchange`` speaks bytes
over TLS for malformed requests; ``Replica`` is a minimal module client loop in threads.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from cmworker.runtime.server import JOB_PATH, RESTART_PATH, RESULTS_PATH, SCHEMAS_PATH

DEADLINE = 20.0  # upper bound of every wait in these tests; never reached when things work


def wait_until(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)
    return value


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Module:
    """A replica's client, as thin as possible: one keep-alive HTTPS connection to one replica."""

    def __init__(self, runtime: EmbeddedRuntime, replica: int = 0, token: str | None = None,
                 timeout: float = DEADLINE) -> None:
        env = runtime.env(replica)
        self.host, self.port = env["RUNTIME_HOST"], int(env["RUNTIME_PORT"])
        with open(env["MODULE_AUTH_TOKEN"], encoding="utf-8") as handle:
            self.token = handle.read() if token is None else token
        self.context = ssl.create_default_context(cafile=env["DEFAULT_CA_PATH"])
        self.timeout = timeout
        self.connection: http.client.HTTPSConnection | None = None

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict[str, str] | None = None, *, chunked: bool = False) -> Response:
        if self.connection is None:
            self.connection = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                                          timeout=self.timeout)
        sent = {"Module-Auth-Token": self.token} if self.token else {}
        sent.update(headers or {})
        try:
            self.connection.request(method, path, body=body, headers=sent, encode_chunked=chunked)
            response = self.connection.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return Response(response.status, data, {k.lower(): v for k, v in response.getheaders()})

    def get_job(self) -> tuple[int, dict[str, Any] | None]:
        response = self.request("GET", JOB_PATH)
        job = response.json()["computeModuleJobV1"] if response.status == 200 else None
        return response.status, job

    def post_result(self, job_id: str, body: bytes | Iterable[bytes], *, chunked: bool = False) -> Response:
        return self.request("POST", f"{RESULTS_PATH}/{job_id}", body,
                            {"Content-Type": "application/octet-stream"}, chunked=chunked)

    def post_schemas(self, schemas: Any) -> Response:
        body = schemas if isinstance(schemas, bytes) else json.dumps(schemas).encode()
        return self.request("POST", SCHEMAS_PATH, body, {"Content-Type": "application/json"})

    def restart_notification(self) -> Response:
        return self.request("POST", RESTART_PATH)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def tls_socket(runtime: EmbeddedRuntime, port: int, timeout: float = DEADLINE) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(runtime.ca_path))
    sock = socket.create_connection((runtime.advertised_host, port), timeout=timeout)
    return context.wrap_socket(sock, server_hostname=runtime.advertised_host)


def raw_exchange(runtime: EmbeddedRuntime, data: bytes, port: int | None = None) -> bytes:
    """Send raw bytes over TLS to a replica (default replica 0); return all bytes until it closes."""
    with tls_socket(runtime, runtime.ports[0] if port is None else port) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


class Replica:
    """A minimal module client loop: ``slots`` threads, each GET -> ``answer(job)`` -> POST result."""

    def __init__(self, runtime: EmbeddedRuntime, replica: int = 0, slots: int = 1,
                 answer: Callable[[dict[str, Any]], bytes] | None = None, work: float = 0.0) -> None:
        self.runtime, self.replica, self.work = runtime, replica, work
        self.answer = answer or (lambda job: json.dumps({"echo": job["query"]}).encode())
        self.served: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(slots)]

    def __enter__(self) -> Replica:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(DEADLINE)

    def _loop(self) -> None:
        module = Module(self.runtime, self.replica)
        while not self._stop.is_set():
            _, job = module.get_job()
            if job is None:
                continue
            if self.work:
                time.sleep(self.work)
            assert module.post_result(job["jobId"], self.answer(job)).status == 204
            self.served.append(job["jobId"])
        module.close()


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target`` in a thread; its return value or exception lands in the returned dict."""
    outcome: dict[str, Any] = {}

    def wrapper() -> None:
        try:
            outcome["value"] = target()
        except BaseException as exc:  # reported to the test, which asserts on it
            outcome["error"] = exc

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.start()
    return thread, outcome
