"""HTTP/1.1 over one keep-alive TLS connection: how the parent talks to the runtime (parent process only).

The job loop makes two requests per job (GET job, POST result), and their cost in the parent decides
throughput. ``http.client`` spends most of its time on bookkeeping this client does not need: header
validation on every call, a new buffered file and response object per reply, the ``email`` parser for
the reply's headers. Here the fixed headers are encoded once per connection, a request is written in one
piece, and replies are read from one buffered reader that lives as long as the connection. Measured on a
2-vCPU VM against the embedded runtime: 485 µs of client CPU per GET + POST cycle with ``http.client``,
221 µs with this (docs/benchmarks.md, "The transport").

What a reply may be follows RFC 9112: a status line, at most ``MAX_HEADERS`` header lines of at most
``MAX_LINE`` bytes, then a body framed by ``Transfer-Encoding: chunked``, ``Content-Length``, or the end of
the connection; ``1xx`` replies are skipped. Anything else is a ``TransportError`` and the connection is
dropped: a request is only ever retried on a fresh one.
"""

from __future__ import annotations

import contextlib
import io
import re
import select
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_LINE = 65536
MAX_HEADERS = 100
_SMALL_BODY = 64 * 1024  # up to this size a body goes out in the same write as the head
_TARGET = re.compile(r"[^\x00-\x20\x7f]+")    # a request target: no spaces, no control characters
_FIELD = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")  # a header value: no CR, LF or other controls
_DIGITS = re.compile(r"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9a-fA-F]{1,15}")


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


class TransportError(Exception):
    """The request may not have reached the runtime, or its answer was lost; safe to retry."""


class BadReply(Exception):
    """What came back is not an HTTP/1.x reply this client can read."""


class Connection:
    """One keep-alive HTTPS connection to one host. Not thread-safe: one per thread.

    It connects on first use and again after any failure; ``headers`` go with every request.
    """

    def __init__(self, host: str, port: int, context: ssl.SSLContext, headers: Mapping[str, str],
                 timeout: float = 30.0) -> None:
        self.host, self.port, self.context, self.timeout = host, port, context, timeout
        authority = f"[{host}]" if ":" in host else host
        fields = {"Host": authority if port == 443 else f"{authority}:{port}", **headers,
                  "Accept-Encoding": "identity"}
        for name, value in fields.items():
            if not _FIELD.fullmatch(value):
                raise ValueError(f"the {name} header may not contain control characters")
        self._fields = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode("latin-1")
        self._sock: ssl.SSLSocket | None = None
        self._reader: io.BufferedReader | None = None

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                content_type: str | None = None, timeout: float | None = None) -> Reply:
        """Send one request and read its reply. An iterable body goes out chunked, each piece as it comes."""
        if not _TARGET.fullmatch(path):
            raise ValueError(f"not a request target: {path!r}")
        head = f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + self._fields
        if content_type:
            head += f"Content-Type: {content_type}\r\n".encode("latin-1")
        pieces: Iterable[bytes] | None = None  # a chunked body
        if isinstance(body, bytes | bytearray):
            head += b"Content-Length: %d\r\n\r\n" % len(body)
            writes = [head + body] if len(body) <= _SMALL_BODY else [head, body]
        elif body is None:
            writes = [head + (b"Content-Length: 0\r\n\r\n" if method in ("POST", "PUT") else b"\r\n")]
        else:
            writes, pieces = [head + b"Transfer-Encoding: chunked\r\n\r\n"], body
        try:
            sock, reader = self._connect()
            sock.settimeout(timeout or self.timeout)
            for data in writes:
                sock.sendall(data)
            if pieces is not None:
                for piece in pieces:
                    if piece:  # an empty chunk would end the body
                        sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            status, data, close = read_reply(reader, method)
        except (OSError, BadReply) as exc:
            self.close()
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if close:
            self.close()
        return Reply(status, data)

    def _connect(self) -> tuple[ssl.SSLSocket, io.BufferedReader]:
        if self._sock is not None and _dropped(self._sock):
            self.close()  # the other end closed it while it was idle (a restart, an idle timeout)
        if self._sock is None or self._reader is None:
            raw = socket.create_connection((self.host, self.port), self.timeout)
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sock = self.context.wrap_socket(raw, server_hostname=self.host)
            except BaseException:
                raw.close()
                raise
            self._reader = self._sock.makefile("rb")
        return self._sock, self._reader

    def close(self) -> None:
        for closable in (self._reader, self._sock):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()
        self._sock = self._reader = None


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle keep-alive connection was closed by the other end.

    Between requests nothing may arrive on it; if its socket is readable, what is there is the end of
    the stream (or a TLS close alert), and a request sent on it would fail after the wait for a reply.
    """
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def read_reply(reader: io.BufferedIOBase, method: str) -> tuple[int, bytes, bool]:
    """Read one reply: its status, its body, and whether the connection must be closed after it."""
    while True:
        version, status = _status_line(reader)
        headers = _header_lines(reader)
        if not 100 <= status < 200:
            break
    connection = headers.get("connection", "").lower()
    close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if method == "HEAD" or status in (204, 304):
        return status, b"", close
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, _chunked_body(reader), close
    length = headers.get("content-length")
    if length is None:  # the body ends with the connection
        return status, reader.read(), True
    if not _DIGITS.fullmatch(length):
        raise BadReply(f"Content-Length is {length!r}")
    return status, _exactly(reader, int(length)), close


def _line(reader: io.BufferedIOBase, what: str) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise BadReply(f"{what} is longer than {MAX_LINE} bytes")
    return line


def _status_line(reader: io.BufferedIOBase) -> tuple[str, int]:
    line = _line(reader, "the status line")
    if not line:
        raise BadReply("the connection closed without a reply")
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 \
            or not parts[1].isdigit():
        raise BadReply(f"not an HTTP status line: {line[:100]!r}")
    return parts[0].decode(), int(parts[1])


def _header_lines(reader: io.BufferedIOBase) -> dict[str, str]:
    """Header fields by lower-case name; repeated fields are joined with commas."""
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = _line(reader, "a header line")
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise BadReply("the connection closed inside the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            key, value = name.strip().lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise BadReply(f"more than {MAX_HEADERS} header lines")


def _chunked_body(reader: io.BufferedIOBase) -> bytes:
    pieces = []
    while True:
        size_line = _line(reader, "a chunk size line").split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_line):
            raise BadReply(f"not a chunk size: {size_line[:20]!r}")
        size = int(size_line, 16)
        if size == 0:
            break
        pieces.append(_exactly(reader, size))
        if _line(reader, "a chunk's end") not in (b"\r\n", b"\n"):
            raise BadReply("a chunk is longer than its size")
    _header_lines(reader)  # trailer fields, unused
    return b"".join(pieces)


def _exactly(reader: io.BufferedIOBase, size: int) -> bytes:
    data = reader.read(size)
    if len(data) < size:
        raise BadReply(f"the connection closed {size - len(data)} bytes before the end of the body")
    return data
