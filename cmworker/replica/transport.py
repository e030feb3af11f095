"""HTTP/1.1 over one keep-alive TLS connection: how the parent talks to the runtime (parent process only).

The job loop makes two requests per job (GET job, POST result), and their cost in the parent decides
throughput. ``http.client`` spends most of its time on bookkeeping this client does not need: header
validation on every call, a new buffered file and response object per reply, the ``email`` parser for
the reply's headers. Here the fixed headers are encoded once per connection, a request is written in one
piece, and replies are read from one buffered reader that lives as long as the connection. Measured on a
2-vCPU VM against the embedded runtime: 485 µs of client CPU per GET + POST cycle with ``http.client``,
221 µs with this (docs/benchmarks.md, "The transport").

What a reply may be follows RFC 9112: a status line, at most ``MAX_HEADERS`` header lines of at most
``MAX_LINE`` bytes and ``MAX_HEAD`` bytes in all, then a body framed by ``Transfer-Encoding: chunked``,
``Content-Length``, or the end of the connection; at most ``MAX_INTERIM`` ``1xx`` replies are skipped.
The other end is not trusted to be sane: each request has one deadline for the whole of it (connect,
TLS handshake, every write and every read), so a reply that trickles in byte by byte costs no more time
than one that never comes; and a body is refused, before any of it is read, as soon as it announces or
reaches more than the caller's ``max_body``. Anything else is a ``TransportError`` and the connection is
dropped: a request is only ever retried on a fresh one.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import select
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_LINE = 16 * 1024      # one status or header line; nothing the runtime or a proxy sends comes near it
MAX_HEADERS = 100
MAX_HEAD = 64 * 1024      # a status line and its header lines together
MAX_INTERIM = 10          # 1xx replies before the final one: a server sends one or two, if any
MAX_BODY = 2**20          # the default bound on a reply's body (callers that expect more say so)
_PIECE = 2**20            # a large body is read in pieces of this size, as it arrives
EARLY_REPLY_WAIT = 1.0    # for the rest of a reply that began to arrive before the request was all sent
MAX_REPLY_EARLY = 64 * 1024  # such a reply refuses the request: a status and a few words
_SMALL_BODY = 64 * 1024   # up to this size a body goes out in the same write as the head
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
    """What came back is not an HTTP/1.x reply this client will read."""


class _Deadline(io.RawIOBase):
    """The socket under a connection's buffered reader: no read waits past the current request's deadline.

    A socket timeout bounds one read only; a reply that sends a byte just before each timeout would hold
    a request for as long as it likes (a GET trickling its headers held the poll loop ~25 s with a 3 s
    poll timeout). Setting the timeout to what is left before every read makes the bound the request's.
    """

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.deadline = math.inf
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.sock.settimeout(_left(self.deadline))
        count = self.sock.recv_into(buffer)
        self.received += count
        return count

    def tell(self) -> int:
        """The bytes received so far: the buffered reader's ``tell`` is then the bytes it gave out."""
        return self.received


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request ran out of time")
    return left


def _send(sock: ssl.SSLSocket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        sock.settimeout(_left(deadline))
        view = view[sock.send(view):]


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
        self._stream: _Deadline | None = None
        self._reader: io.BufferedReader | None = None

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                content_type: str | None = None, timeout: float | None = None,
                max_body: int = MAX_BODY) -> Reply:
        """Send one request and read its reply, all of it within ``timeout`` seconds (the connection's by
        default): connecting, writing and reading, however slowly the reply comes. A reply body over
        ``max_body`` bytes is refused.

        An iterable body goes out chunked, each piece as it comes. Waiting for the next piece is not the
        runtime's time (a stream's items come as its job yields them), so each piece gets ``timeout`` to
        be written, and the reply ``timeout`` from the last piece.
        """
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
        seconds = timeout or self.timeout
        try:
            deadline = time.monotonic() + seconds
            sock, stream, reader = self._connect(deadline)
            try:
                for data in writes:
                    _send(sock, data, deadline)
                if pieces is not None:
                    for piece in pieces:
                        if piece:  # an empty chunk would end the body
                            _send(sock, b"%x\r\n" % len(piece) + piece + b"\r\n", time.monotonic() + seconds)
                    deadline = time.monotonic() + seconds
                    _send(sock, b"0\r\n\r\n", deadline)
            except OSError:
                # The runtime may have answered before taking the whole body (a 413 as soon as it read the
                # length), then stopped reading or closed: that reply, already here, is the answer (RFC
                # 9112 section 9.5). Unread, the same refused body went out again on every retry.
                early = _early_reply(sock, stream, reader, method)
                if early is None:
                    raise
                self.close()
                return early
            stream.deadline = deadline
            status, data, close = read_reply(reader, method, max_body)
            # Bytes already here after the reply answer nothing that was asked (a second reply, a 204's
            # body, a length short of the body): on this connection the next request would take them
            # for its reply, and the reply meant for it (a GET's job) would never be read.
            close = close or stream.received != reader.tell() or sock.pending() > 0
        except (OSError, BadReply) as exc:
            self.close()
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if close:
            self.close()
        return Reply(status, data)

    def _connect(self, deadline: float) -> tuple[ssl.SSLSocket, _Deadline, io.BufferedReader]:
        if self._sock is not None and _dropped(self._sock):
            self.close()  # the other end closed it while it was idle (a restart, an idle timeout)
        if self._sock is None or self._stream is None or self._reader is None:
            raw = socket.create_connection((self.host, self.port), _left(deadline))
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                raw.settimeout(_left(deadline))  # the TLS handshake counts against the request too
                self._sock = self.context.wrap_socket(raw, server_hostname=self.host)
            except BaseException:
                raw.close()
                raise
            self._stream = _Deadline(self._sock)
            self._reader = io.BufferedReader(self._stream, 65536)
        self._stream.deadline = deadline
        return self._sock, self._stream, self._reader

    def close(self) -> None:
        for closable in (self._reader, self._sock):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()
        self._sock = self._stream = self._reader = None


def _early_reply(sock: ssl.SSLSocket, stream: _Deadline, reader: io.BufferedReader, method: str) -> Reply | None:
    """A reply that arrived while the request was still being written, if a whole one is here already."""
    if not (sock.pending() or _dropped(sock)):
        return None  # nothing came back: the write failed for its own reasons
    stream.deadline = time.monotonic() + EARLY_REPLY_WAIT
    try:
        status, data, _ = read_reply(reader, method, MAX_REPLY_EARLY)
    except (OSError, BadReply):
        return None
    return Reply(status, data)


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


def read_reply(reader: io.BufferedIOBase, method: str, max_body: int = MAX_BODY) -> tuple[int, bytes, bool]:
    """Read one reply: its status, its body, and whether the connection must be closed after it."""
    version, status, headers = _final_head(reader)
    connection = headers.get("connection", "").lower()
    close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if method == "HEAD" or status in (204, 304):
        return status, b"", close
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, _chunked_body(reader, max_body), close
    length = headers.get("content-length")
    if length is None:  # the body ends with the connection
        return status, _to_the_end(reader, max_body), True
    if not _DIGITS.fullmatch(length):
        raise BadReply(f"Content-Length is {length!r}")
    if int(length) > max_body:
        raise BadReply(f"the body announces {length} bytes; at most {max_body} are read")
    return status, _exactly(reader, int(length)), close


def _final_head(reader: io.BufferedIOBase) -> tuple[str, int, dict[str, str]]:
    """The status line and headers of the final reply, past any interim (1xx) ones."""
    for _ in range(MAX_INTERIM + 1):
        version, status, budget = _status_line(reader)
        headers = _header_lines(reader, budget)
        if status == 101:
            raise BadReply("the server switched protocols, unasked")
        if not 100 <= status < 200:
            return version, status, headers
    raise BadReply(f"more than {MAX_INTERIM} interim (1xx) replies")


def _line(reader: io.BufferedIOBase, what: str) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise BadReply(f"{what} is longer than {MAX_LINE} bytes")
    return line


def _status_line(reader: io.BufferedIOBase) -> tuple[str, int, int]:
    """The version and status of a reply, and how many bytes are left of ``MAX_HEAD`` for its headers."""
    line = _line(reader, "the status line")
    if not line:
        raise BadReply("the connection closed without a reply")
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 \
            or not parts[1].isdigit():
        raise BadReply(f"not an HTTP status line: {line[:100]!r}")
    return parts[0].decode(), int(parts[1]), MAX_HEAD - len(line)


def _header_lines(reader: io.BufferedIOBase, budget: int = MAX_HEAD) -> dict[str, str]:
    """Header fields by lower-case name, in at most ``budget`` bytes; repeated fields are joined with commas."""
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = _line(reader, "a header line")
        budget -= len(line)
        if budget < 0:
            raise BadReply(f"the head of the reply is longer than {MAX_HEAD} bytes")
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise BadReply("the connection closed inside the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            key, value = name.strip().lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise BadReply(f"more than {MAX_HEADERS} header lines")


def _chunked_body(reader: io.BufferedIOBase, max_body: int) -> bytes:
    # One growing buffer, not a list of pieces: a body of a million one-byte chunks would cost ~50 bytes
    # of list entry and bytes object per byte.
    body = bytearray()
    while True:
        size_line = _line(reader, "a chunk size line").split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_line):
            raise BadReply(f"not a chunk size: {size_line[:20]!r}")
        size = int(size_line, 16)
        if size == 0:
            break
        if len(body) + size > max_body:
            raise BadReply(f"the chunked body goes past {max_body} bytes")
        body += _exactly(reader, size)
        if _line(reader, "a chunk's end") not in (b"\r\n", b"\n"):
            raise BadReply("a chunk is longer than its size")
    _header_lines(reader)  # trailer fields, unused
    return bytes(body)


def _exactly(reader: io.BufferedIOBase, size: int) -> bytes:
    """``size`` bytes, read in pieces as they arrive: memory follows what came, not what was announced."""
    if size <= _PIECE:
        data = reader.read(size)
    else:
        pieces = []
        left = size
        while left and (piece := reader.read(min(left, _PIECE))):
            pieces.append(piece)
            left -= len(piece)
        data = b"".join(pieces)
    if len(data) < size:
        raise BadReply(f"the connection closed {size - len(data)} bytes before the end of the body")
    return data


def _to_the_end(reader: io.BufferedIOBase, max_body: int) -> bytes:
    pieces = []
    total = 0
    while piece := reader.read(min(_PIECE, max_body + 1 - total)):
        pieces.append(piece)
        total += len(piece)
        if total > max_body:
            raise BadReply(f"the body goes past {max_body} bytes")
    return b"".join(pieces)
