"""HTTP/1.1 over TLS for the embedded runtime: listeners, connections, and one request at a time.

    Listener ── accept thread ──▶ a thread per connection ──▶ Exchange (one request) ──▶ app.handle

Why threads: every connection of a compute module is a keep-alive connection that spends most of
its life parked in a long poll, so a thread per connection is the natural shape, and each blocking
wait is a real ``Condition`` wait rather than a poll. Why our own listener: ``socketserver``'s
``serve_forever`` checks for shutdown every 0.5 s; here a wake-up socket ends the accept loop at once,
and every open connection can be cut on demand (``stop()`` and fault injection need both).

Why our own request parser: the stdlib's ``BaseHTTPRequestHandler`` parses headers with the ``email``
package; measured on the target 2-core machine it cost ~100 µs of the ~280 µs of server CPU per
request, which put a non-batched job (four requests) over the 1 ms budget. Requests from compute
modules are small and regular; this parser is strict (it answers 400 to anything ambiguous) and short.

Every request gets an answer or a deliberate close, never a crash: an app error becomes a 500 and
closes that one connection. A request body the app did not read is drained (when small) so the
keep-alive connection stays in sync, or the connection is closed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Protocol, cast

from cmworker.runtime.faults import Fault, Step, spoiled

log = logging.getLogger("cmworker.runtime")

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0  # a keep-alive connection idle this long is closed
SMALL_BODY = 2**20  # an unread body up to this size is drained to keep the connection alive
DRAIN_LIMIT = 64 * 2**20  # read at most this much of a refused body, so the client sees our 413
_MAX_LINE = 8192
_MAX_HEADERS = 100
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class HttpError(Exception):
    """Answer the current request with ``status`` and a JSON ``{"error": message}`` body."""

    def __init__(self, status: int, message: str, *, close: bool = False,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = list(headers)


class Disconnected(Exception):
    """The connection ended, or was cut on purpose, in the middle of a request: answer nothing."""


class App(Protocol):
    """What a listener serves."""

    def handle(self, exchange: Exchange) -> None: ...

    def body_limit(self, exchange: Exchange) -> int: ...


class Listener:
    """One listening socket, its accept thread, and the connections it accepted.

    ``open()`` binds (again after ``close()``: the same port), ``close()`` stops accepting, cuts every
    connection and waits for their threads. Each ``open()`` starts a new generation; an exchange
    whose connection belongs to an older one knows its listener went away.
    """

    def __init__(self, name: str, host: str, port: int, context: ssl.SSLContext, app: App,
                 on_close: Callable[[], None]) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.app = app
        self._context = context
        self._on_close = on_close
        self._lifecycle = threading.Lock()  # serialises open() and close()
        self._lock = threading.Lock()  # guards the fields below
        self._generation = 0
        self._up = False
        self._down = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._wake: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()

    @property
    def up(self) -> bool:
        return self._up

    def open_connections(self) -> int:
        """How many accepted connections are being served at this moment."""
        with self._lock:
            return len(self._connections)

    def is_current(self, generation: int) -> bool:
        """True while the listener that accepted a connection of ``generation`` is still open."""
        return self._up and generation == self._generation

    def wait_down(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True early if the listener goes down meanwhile."""
        return self._down.wait(seconds)

    def open(self) -> None:
        with self._lifecycle:
            if not self._up:
                self._open()

    def close(self, timeout: float = 5.0) -> None:
        with self._lifecycle:
            if self._up:
                self._close(timeout)

    def _open(self) -> None:
        sock = socket.create_server((self.host, self.port), backlog=128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        wake_read, wake_write = socket.socketpair()
        with self._lock:
            self._generation += 1
            self._up = True
            self._down.clear()
            self._wake = wake_write
            generation = self._generation
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(sock, wake_read, generation),
                                               name=f"{self.name}-accept", daemon=True)
        self._accept_thread.start()

    def _close(self, timeout: float) -> None:
        with self._lock:
            self._up = False
            self._down.set()
            wake, self._wake = self._wake, None
            connections = list(self._connections)
            threads = list(self._threads)
        if wake is not None:
            wake.send(b"x")
            wake.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        for connection in connections:
            cut(connection)
        self._on_close()  # wakes long polls, which then see their generation is gone
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _accept_loop(self, sock: socket.socket, wake: socket.socket, generation: int) -> None:
        with selectors.DefaultSelector() as selector, sock, wake:
            selector.register(sock, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                events = selector.select()
                if any(key.fileobj is wake for key, _ in events):
                    return
                try:
                    connection, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # e.g. out of file descriptors: back off instead of spinning
                    log.warning("runtime_accept_failed %s: %s", self.name, exc)
                    if self._down.wait(0.05):
                        return
                    continue
                thread = threading.Thread(target=self._serve, args=(connection, generation),
                                          name=f"{self.name}-conn", daemon=True)
                with self._lock:
                    self._threads.add(thread)
                thread.start()

    def _serve(self, connection: socket.socket, generation: int) -> None:
        try:
            tls = self._handshake(connection)
            if tls is not None:
                self._serve_tls(tls, generation)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _handshake(self, connection: socket.socket) -> ssl.SSLSocket | None:
        try:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.settimeout(HANDSHAKE_TIMEOUT)
            tls = self._context.wrap_socket(connection, server_side=True)
            tls.settimeout(IDLE_TIMEOUT)
            return tls
        except (OSError, ValueError):  # not TLS, an untrusted CA, a vanished client: this one only
            connection.close()
            return None

    def _serve_tls(self, tls: ssl.SSLSocket, generation: int) -> None:
        with self._lock:
            if not self.is_current(generation):
                tls.close()
                return
            self._connections.add(tls)
        reader = cast(io.BufferedReader, tls.makefile("rb", buffering=65536))
        try:
            while Exchange.serve_one(self, tls, reader, generation):
                pass
        except (OSError, Disconnected):
            pass  # the client went away or the connection was cut: nothing to answer
        except Exception:
            log.exception("runtime_connection_failed %s", self.name)
        finally:
            with self._lock:
                self._connections.discard(tls)
            reader.close()
            tls.close()


def cut(connection: socket.socket) -> None:
    """Shut a connection down under whoever is blocked on it.

    ``socket.socket.shutdown`` on purpose: ``SSLSocket.shutdown`` also detaches the TLS object that
    another thread may be reading through at that moment.
    """
    with contextlib.suppress(OSError):
        socket.socket.shutdown(connection, socket.SHUT_RDWR)


class Exchange:
    """One request on a connection, and the means to answer it."""

    def __init__(self, listener: Listener, sock: ssl.SSLSocket, reader: io.BufferedReader, generation: int,
                 method: str, target: str, version: str, headers: dict[str, str]) -> None:
        self.listener = listener
        self.sock = sock
        self.generation = generation
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.headers = headers  # names lower-cased; repeated headers joined with ", "
        self.close = headers.get("connection", "").lower() == "close" or (
            version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive")
        self._reader = reader
        self._body_read = False
        self._too_large = False
        self.first_chunk_at: float | None = None  # time.monotonic() when a chunked body's first chunk came
        self._continue_sent = False

    @classmethod
    def serve_one(cls, listener: Listener, sock: ssl.SSLSocket, reader: io.BufferedReader, generation: int) -> bool:
        """Read, route and answer one request; False when the connection should end."""
        try:
            head = _read_head(reader)
        except HttpError as exc:  # malformed request: answer and hang up, the stream is out of sync
            _write(sock, _response(exc.status, _json_error(exc.message), close=True))
            return False
        if head is None:
            return False
        exchange = cls(listener, sock, reader, generation, *head)
        exchange.dispatch()
        return not exchange.close

    @property
    def current(self) -> bool:
        """False once the listener that accepted this connection closed (or reopened)."""
        return self.listener.is_current(self.generation)

    def dispatch(self) -> None:
        try:
            if not self._refuse_expected_body():
                self.listener.app.handle(self)
        except HttpError as exc:
            self.close = self.close or exc.close
            self.reply(exc.status, _json_error(exc.message), headers=exc.headers)
        except (Disconnected, OSError):
            self.close = True
            return
        except Exception:
            log.exception("runtime_handler_failed %s %s", self.method, self.path)
            self.close = True
            self.reply(500, _json_error("internal error in the embedded runtime"))
        self._discard_unread_body()

    # -- answering ---------------------------------------------------------------------------

    def reply(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: Iterable[tuple[str, str]] = ()) -> None:
        """Write the whole response in one write: one TLS record for a small answer."""
        response = _response(status, body, content_type, headers, close=self.close)
        if self.method == "HEAD":  # same headers as GET, never a body
            response = response[:len(response) - len(body)] if status != 204 else response
        _write(self.sock, response)

    def peer_closed(self) -> bool:
        """True if the client already closed (or wrote more): it cannot be waiting for an answer.

        An HTTP/1.1 client sends nothing while it awaits a response, so a readable socket means EOF,
        a TLS close alert or a pipelined request; all three are safe to treat as "gone".
        """
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def cut(self) -> None:
        """Drop the connection without answering (fault injection)."""
        self.close = True
        cut(self.sock)

    def spoil(self, fault: Fault, status: int, body: bytes) -> bool:
        """Answer with the reply ``status`` + ``body`` spoiled as ``fault`` says, then close (fault
        injection). True when what was written is a whole reply a client can read: a trickle or a flood
        that ran to its end, not one cut short because the client left or the listener closed."""
        assert fault.spoil is not None
        steps, readable = spoiled(fault.spoil, status, body)
        self.close = True
        until = time.monotonic() + fault.seconds
        try:
            return all(self._write_step(step, fault.interval, until) for step in steps) and readable
        except OSError:
            return False

    def _write_step(self, step: Step, interval: float, until: float) -> bool:
        if step.repeat:
            while time.monotonic() < until:
                _write(self.sock, step.data)
                if not self._pause(interval):
                    return False
            return True
        if not step.trickle:
            _write(self.sock, step.data)
            return True
        for index in range(len(step.data)):
            _write(self.sock, step.data[index:index + 1])
            if not self._pause(interval):
                return False
        return True

    def _pause(self, seconds: float) -> bool:
        """Sleep between spoiled pieces; False when the listener went down meanwhile."""
        return not (seconds and self.listener.wait_down(seconds)) and self.current

    # -- request bodies ----------------------------------------------------------------------

    @property
    def chunked(self) -> bool:
        return "transfer-encoding" in self.headers

    def content_length(self) -> int:
        values = {value.strip() for value in self.headers.get("content-length", "0").split(",")}
        text = values.pop()
        if values or not (text.isascii() and text.isdigit()):
            raise HttpError(400, "malformed Content-Length", close=True)
        if len(text.lstrip("0")) > 18:  # int() refuses more than 4,300 digits with a ValueError: a 500
            raise HttpError(413, f"a Content-Length of {len(text)} digits is over any limit", close=True)
        return int(text)

    def read_body(self, limit: int, on_chunk: Callable[[bytes], None] | None = None) -> bytes:
        """The request body; 413 over ``limit``, 400 when malformed, ``Disconnected`` if cut short.
        ``on_chunk`` is told each chunk of a chunked body as it arrives."""
        self._body_read = True
        if self.chunked:
            encoding = self.headers["transfer-encoding"]
            if encoding.strip().lower() != "chunked":
                raise HttpError(400, f"unsupported Transfer-Encoding {encoding!r}", close=True)
            self._send_continue()
            return self._read_chunked(limit, on_chunk)
        length = self.content_length()
        if length > limit:
            self._body_read, self._too_large = False, True  # drained after the 413 is written
            raise HttpError(413, f"body of {length} bytes is over the {limit}-byte limit", close=True)
        if length == 0:
            return b""
        self._send_continue()
        data = self._reader.read(length)
        if len(data) < length:
            raise Disconnected
        return data

    def read_some(self, size: int) -> None:
        """Read ``size`` bytes of the body (some bytes if chunked) and forget them (fault injection)."""
        self._body_read = True
        self._send_continue()
        if self.chunked:
            self._reader.read1(1)
        elif size > 0:
            self._reader.read(size)

    def _refuse_expected_body(self) -> bool:
        # A client that sent "Expect: 100-continue" (curl does, for bodies over 1 MiB) waits for our
        # go-ahead: refuse an oversized body before it is sent, instead of inviting it.
        if self.headers.get("expect", "").lower() != "100-continue" or self.chunked:
            return False
        limit = self.listener.app.body_limit(self)
        if self.content_length() <= limit:
            return False
        self._body_read = True  # it will not be sent
        raise HttpError(413, f"body of {self.content_length()} bytes is over the {limit}-byte limit", close=True)

    def _send_continue(self) -> None:
        if self.headers.get("expect", "").lower() == "100-continue" and not self._continue_sent:
            self._continue_sent = True
            _write(self.sock, b"HTTP/1.1 100 Continue\r\n\r\n")

    def _read_chunked(self, limit: int, on_chunk: Callable[[bytes], None] | None = None) -> bytes:
        parts: list[bytes] = []
        total = 0
        while (size := self._chunk_size()) > 0:
            total += size
            if total > DRAIN_LIMIT:
                raise HttpError(413, f"chunked body is over the {limit}-byte limit", close=True)
            data = self._reader.read(size)
            if len(data) < size:
                raise Disconnected
            if self.first_chunk_at is None:
                self.first_chunk_at = time.monotonic()
            if total <= limit:
                parts.append(data)
                if on_chunk is not None:
                    on_chunk(data)
            if self._reader.readline(_MAX_LINE) != b"\r\n":
                raise HttpError(400, "malformed chunked body: chunk not followed by CRLF", close=True)
        self._skip_trailers()
        if total > limit:
            raise HttpError(413, f"chunked body of {total} bytes is over the {limit}-byte limit", close=True)
        return b"".join(parts)

    def _chunk_size(self) -> int:
        line = self._reader.readline(_MAX_LINE)
        if not line:
            raise Disconnected
        size_text = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not _HEX.fullmatch(size_text):
            raise HttpError(400, "malformed chunked body: bad chunk-size line", close=True)
        return int(size_text, 16)

    def _skip_trailers(self) -> None:
        while (line := self._reader.readline(_MAX_LINE)) not in (b"\r\n", b"\n"):
            if not line:
                raise Disconnected
            if not line.endswith(b"\n"):
                raise HttpError(400, "malformed chunked body: trailer line too long", close=True)

    def _discard_unread_body(self) -> None:
        """Keep the connection in sync when the answer went out before the body was read.

        Even a connection about to close is drained (up to a budget): closing a socket with unread
        data sends a reset, which can destroy the answer before the client reads it. A body refused
        as too large gets the large budget so that a client still sending it sees our 413.
        """
        if self._body_read:
            return
        if self.chunked or self.headers.get("expect", "").lower() == "100-continue":
            self.close = True  # a chunked body cannot be skipped cheaply; an expected one may never come
            return
        try:
            length = self.content_length()
        except HttpError:
            self.close = True
            return
        budget = DRAIN_LIMIT if self._too_large else SMALL_BODY
        if length > budget:
            self.close = True
        remaining = min(length, budget)
        try:
            while remaining > 0 and (chunk := self._reader.read(min(remaining, 1 << 16))):
                remaining -= len(chunk)
        except OSError:
            self.close = True


def _read_head(reader: io.BufferedReader) -> tuple[str, str, str, dict[str, str]] | None:
    """The request line and headers; ``None`` at a clean end of stream between requests."""
    line = reader.readline(_MAX_LINE + 1)
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLFs between requests (RFC 9112 §2.2)
        line = reader.readline(_MAX_LINE + 1)
    if not line:
        return None
    if len(line) > _MAX_LINE or not line.endswith(b"\n"):
        raise HttpError(400, "request line too long or cut short")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not _TOKEN.fullmatch(parts[0]):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    return method, target, version, _read_headers(reader)


def _read_headers(reader: io.BufferedReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = reader.readline(_MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise Disconnected
        if len(line) > _MAX_LINE or not line.endswith(b"\n"):
            raise HttpError(431, "header line too long")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not _TOKEN.fullmatch(name):  # also rejects obsolete line folding
            raise HttpError(400, f"malformed header line {line[:60]!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raise HttpError(431, f"more than {_MAX_HEADERS} headers")


def _response(status: int, body: bytes = b"", content_type: str = "application/json",
              headers: Iterable[tuple[str, str]] = (), *, close: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {_phrase(status)}"]
    if status != 204:  # a 204 has no body, and RFC 9110 forbids Content-Length on it
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if status == 204 else head + body


def _write(sock: ssl.SSLSocket, data: bytes) -> None:
    sock.sendall(data)


def _json_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"

