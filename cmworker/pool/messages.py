"""Every message that crosses a pipe between cmworker's processes, and its framing.

Parent and worker talk over one socketpair per worker; parent and template over one SOCK_SEQPACKET
control socket (so that file descriptors ride on the message that needs them). A frame is
``!IB`` (body length, tag) followed by the body. Bodies are packed with ``struct`` — no pickles: the
compute-module path carries the job's JSON bytes in and the result's JSON bytes out untouched.

    parent -> worker     Run, RunLimits (just before its Run, when the job has a deadline or soft memory limit)
    worker -> parent     Ready, Result, Failure, Chunk, StreamEnd, Retiring, Usage (just before an answer)
    parent -> template   Spawn (+ the worker's socket and output pipes as SCM_RIGHTS)
    template -> parent   TemplateReady, TemplateFailed, Spawned, Exited

A worker runs user code, and user code can write to the worker's socket: to the parent, every frame from
a worker is untrusted input. ``FrameReader`` accepts only the kinds its channel may carry
(``WORKER_MESSAGES`` or ``TEMPLATE_MESSAGES``) and frames up to ``MAX_FRAME`` bytes, and raises
``ProtocolError`` (a few words naming what came instead) for anything else, for a body that does not
decode, and for an unknown tag. Each ``Run`` carries the job's number on its worker (``seq``), and
every answer, chunk and stream end the worker sends carries it back, so that a stray or forged answer
cannot pass for the answer to the job the worker runs now.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

from cmworker.units import format_size

HEADER = struct.Struct("!IB")
MAX_CONTROL_MESSAGE = 64 * 1024
# The largest frame a worker may send. The parent holds a frame whole before decoding it, so a worker
# that announces a bigger one broke the protocol; results and stream items are capped below it (the Run
# message tells the worker its cap, and a bigger result is answered result_too_large).
MAX_FRAME = 2**30
MAX_BODY = MAX_FRAME - 1024

# How a job's bytes are to be read: JSON (compute-module jobs) or cloudpickle (the local executor).
# Bytes as they travel: a large frame's body stays in the bytearray it was received into.
Buffer = bytes | bytearray | memoryview



def owned(body: Buffer) -> bytes | bytearray:
    """A message's body for keeping beyond the read that brought it: a large frame's is its own
    bytearray already (kept as it is), a small one's is copied out of the shared read buffer."""
    return body if isinstance(body, bytes | bytearray) else bytes(body)


MODE_JSON = 0
MODE_PICKLE = 1


class ProtocolError(ValueError):
    """A frame that its channel may not carry; the message says what came, in a few words."""


class Message:
    tag: ClassVar[int]
    _registry: ClassVar[dict[int, type[Message]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "tag" in cls.__dict__:  # a kind of message, not a shared base such as _Packed
            Message._registry[cls.tag] = cls

    def pack(self) -> bytes | memoryview:
        raise NotImplementedError

    def parts(self) -> list[Buffer]:
        """The body in pieces to be sent one after the other: a job's or an answer's bytes are never
        copied into one buffer with the fields before them."""
        return [self.pack()]

    @classmethod
    def unpack(cls, body: memoryview) -> Message:
        raise NotImplementedError

    @classmethod
    def unpack_owned(cls, body: bytearray) -> Message:
        """Like ``unpack``, from a buffer the message may keep: a large frame's, read into a buffer of
        its own (``FrameReader``), whose bytes then become the message's body without a copy."""
        return cls.unpack(memoryview(body))


class _Packed(Message):
    """A message whose body is its fields, in order, packed by ``layout``."""

    layout: ClassVar[struct.Struct]

    def pack(self) -> bytes:
        return self.layout.pack(*(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]

    @classmethod
    def unpack(cls, body: memoryview) -> Message:
        return cls(*cls.layout.unpack(body))


def frame(message: Message) -> list[Buffer]:
    """Header and body, ready for ``socket.sendmsg`` (the body is not copied)."""
    parts = message.parts()
    return [HEADER.pack(sum(len(part) for part in parts), message.tag), *parts]


def decode(tag: int, body: memoryview | bytearray) -> Message:
    cls = message_class(tag)
    try:
        return cls.unpack_owned(body) if isinstance(body, bytearray) else cls.unpack(body)
    except (struct.error, ValueError, IndexError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"an undecodable {cls.__name__} message ({len(body)} bytes)") from exc


def message_class(tag: int) -> type[Message]:
    try:
        return Message._registry[tag]
    except KeyError:
        raise ProtocolError(f"a frame with unknown message tag {tag}") from None


_F64 = struct.Struct("!d")
_U32 = struct.Struct("!I")
_SEQ = struct.Struct("!Q")
_ANSWER = struct.Struct("!Qd")  # the job's number, the CPU seconds it used


@dataclass(frozen=True)
class Ready(_Packed):
    tag = 1
    layout = _U32
    pid: int


_RUN = struct.Struct("!QBdQHB")


@dataclass(frozen=True)
class Run(Message):
    """One job: which function, in which mode, with which in-job limits, and its bytes.

    ``seq`` numbers the jobs sent to one worker; everything the worker sends about the job carries it.
    ``job_id`` is for the worker's process title only (the job's own id is in its body), cut to
    ``_TITLE_ID`` characters. ``keep_heap``: the worker may keep what the job frees for its next job
    (``cmworker.heap``): no job of this pool has a memory policy that the kept heap would count against.
    """

    tag = 2
    function: str
    body: Buffer
    mode: int = MODE_JSON
    soft_timeout: float = 0.0        # seconds; 0 = none
    max_result_size: int = 0         # bytes; 0 = unlimited
    seq: int = 0
    job_id: str = ""
    keep_heap: bool = False

    def pack(self) -> bytes:
        return b"".join(self.parts())

    def parts(self) -> list[Buffer]:
        # The function and the id in one field, split at the first NUL: no function name holds one.
        name = self.function.encode() + b"\0" + self.job_id[:_TITLE_ID].encode(errors="replace")
        return [_RUN.pack(self.seq, self.mode, self.soft_timeout, self.max_result_size, len(name),
                          self.keep_heap) + name, self.body]

    @classmethod
    def unpack(cls, body: memoryview) -> Run:
        seq, mode, soft, max_size, name_len, keep = _RUN.unpack_from(body)
        start = _RUN.size
        function, job_id = _names(bytes(body[start:start + name_len]))
        return cls(function, body[start + name_len:], mode, soft, max_size, seq, job_id, bool(keep))

    @classmethod
    def unpack_owned(cls, body: bytearray) -> Run:
        seq, mode, soft, max_size, name_len, keep = _RUN.unpack_from(body)
        start = _RUN.size + name_len
        if len(body) < start:
            raise ValueError("the function name runs past the end of the frame")
        function, job_id = _names(bytes(body[_RUN.size:start]))
        del body[:start]  # no copy: a bytearray drops a prefix by moving its start
        return cls(function, body, mode, soft, max_size, seq, job_id, bool(keep))


_TITLE_ID = 200


def _names(field: bytes) -> tuple[str, str]:
    function, _, job_id = field.partition(b"\0")
    return function.decode(), job_id.decode(errors="replace")


@dataclass(frozen=True)
class Result(Message):
    """The job's encoded result and the CPU seconds it used."""

    tag = 3
    body: Buffer
    cpu: float = 0.0
    seq: int = 0

    def pack(self) -> bytes:
        return _ANSWER.pack(self.seq, self.cpu) + self.body

    def parts(self) -> list[Buffer]:
        return [_ANSWER.pack(self.seq, self.cpu), self.body]

    @classmethod
    def unpack(cls, body: memoryview) -> Result:
        seq, cpu = _ANSWER.unpack_from(body)
        return cls(body[_ANSWER.size:], cpu, seq)

    @classmethod
    def unpack_owned(cls, body: bytearray) -> Result:
        seq, cpu = _ANSWER.unpack_from(body)
        del body[:_ANSWER.size]
        return cls(body, cpu, seq)


@dataclass(frozen=True)
class Failure(Message):
    """The job failed inside the worker: its payload ``kind`` and the error payload (JSON, or a pickle)."""

    tag = 4
    kind: str
    body: Buffer
    cpu: float = 0.0
    seq: int = 0

    def pack(self) -> bytes:
        kind = self.kind.encode()
        return b"".join((_ANSWER.pack(self.seq, self.cpu), bytes((len(kind),)), kind, self.body))

    @classmethod
    def unpack(cls, body: memoryview) -> Failure:
        seq, cpu = _ANSWER.unpack_from(body)
        n = body[_ANSWER.size]
        start = _ANSWER.size + 1
        kind = bytes(body[start:start + n]).decode()
        if len(kind) != n:
            raise ValueError("the kind is cut short")
        return cls(kind, body[start + n:], cpu, seq)


@dataclass(frozen=True)
class Chunk(Message):
    """One streamed item, already encoded."""

    tag = 5
    body: Buffer
    seq: int = 0

    def pack(self) -> bytes:
        return _SEQ.pack(self.seq) + self.body

    def parts(self) -> list[Buffer]:
        return [_SEQ.pack(self.seq), self.body]

    @classmethod
    def unpack(cls, body: memoryview) -> Chunk:
        return cls(body[_SEQ.size:], _SEQ.unpack_from(body)[0])

    @classmethod
    def unpack_owned(cls, body: bytearray) -> Chunk:
        seq = _SEQ.unpack_from(body)[0]
        del body[:_SEQ.size]
        return cls(body, seq)


@dataclass(frozen=True)
class StreamEnd(Message):
    """A streaming job's generator finished cleanly."""

    tag = 6
    cpu: float = 0.0
    seq: int = 0

    def pack(self) -> bytes:
        return _ANSWER.pack(self.seq, self.cpu)

    @classmethod
    def unpack(cls, body: memoryview) -> StreamEnd:
        seq, cpu = _ANSWER.unpack(body)
        return cls(cpu, seq)


@dataclass(frozen=True)
class Retiring(_Packed):
    """Sent just before a job's answer: the job left this worker unfit for another job, so the answer is
    its last and it exits after sending it. The parent must send it nothing more."""

    tag = 7
    layout = _SEQ
    seq: int = 0


_USAGE = struct.Struct("!QQQ")


@dataclass(frozen=True)
class Usage(_Packed):
    """Sent with a job's answer, ahead of it: the job's peak RSS as the worker measured it (bytes: its own
    high-water mark, reset when the job started, or the largest process of the job it reaped) and the
    worker's RSS once the job was cleaned up (0: not measured, as the job has no ``max_worker_memory``)."""

    tag = 8
    layout = _USAGE
    seq: int = 0
    peak_rss: int = 0
    rss: int = 0

    def pack(self) -> bytes:  # one per job: without the generic field walk
        return _USAGE.pack(self.seq, self.peak_rss, self.rss)


_RUN_LIMITS = struct.Struct("!QdQQQ")


@dataclass(frozen=True)
class RunLimits(_Packed):
    """Sent just before the ``Run`` of job ``seq`` when it has a hard timeout (seconds: the job's
    deadline, for ``cmworker.remaining()``), a soft memory limit, a ``max_worker_memory`` or a memory
    limit (bytes; the worker gives its kept heap back before such a job: ``cmworker.heap``); 0 = none."""

    tag = 9
    layout = _RUN_LIMITS
    seq: int = 0
    timeout: float = 0.0
    soft_memory_limit: int = 0
    max_worker_memory: int = 0
    memory_limit: int = 0

    def pack(self) -> bytes:
        return _RUN_LIMITS.pack(self.seq, self.timeout, self.soft_memory_limit, self.max_worker_memory,
                                self.memory_limit)


@dataclass(frozen=True)
class Spawn(_Packed):
    """Fork a worker for ``slot``; its socket and stdout/stderr pipes travel alongside as fds."""

    tag = 10
    layout = _U32
    slot: int


@dataclass(frozen=True)
class Spawned(Message):
    tag = 11
    slot: int
    pid: int

    def pack(self) -> bytes:
        return struct.pack("!II", self.slot, self.pid)

    @classmethod
    def unpack(cls, body: memoryview) -> Spawned:
        slot, pid = struct.unpack("!II", body)
        return cls(slot, pid)


@dataclass(frozen=True)
class Exited(Message):
    """A worker was reaped by the template: raw wait status and peak RSS (bytes) from ``wait4``."""

    tag = 12
    pid: int
    status: int
    max_rss: int
    cpu: float

    def pack(self) -> bytes:
        return struct.pack("!IiQd", self.pid, self.status, self.max_rss, self.cpu)

    @classmethod
    def unpack(cls, body: memoryview) -> Exited:
        return cls(*struct.unpack("!IiQd", body))


@dataclass(frozen=True)
class TemplateReady(Message):
    tag = 13
    pid: int
    functions: str   # JSON: {name: {streaming, timeout, soft_timeout, memory_limit, schema}}

    def pack(self) -> bytes:
        return struct.pack("!I", self.pid) + self.functions.encode()

    @classmethod
    def unpack(cls, body: memoryview) -> TemplateReady:
        return cls(struct.unpack_from("!I", body)[0], bytes(body[4:]).decode())


@dataclass(frozen=True)
class TemplateFailed(Message):
    """The app could not be loaded; ``reason`` carries the import traceback."""

    tag = 14
    reason: str

    def pack(self) -> bytes:
        return self.reason.encode()[: MAX_CONTROL_MESSAGE - HEADER.size]

    @classmethod
    def unpack(cls, body: memoryview) -> TemplateFailed:
        return cls(bytes(body).decode(errors="replace"))


WORKER_MESSAGES: tuple[type[Message], ...] = (Ready, Result, Failure, Chunk, StreamEnd, Retiring, Usage)
TEMPLATE_MESSAGES: tuple[type[Message], ...] = (TemplateReady, TemplateFailed, Spawned, Exited)


# Frames of this size and more are read into a buffer of their own (FrameReader, BlockingReader).
LARGE_FRAME = 1 << 20


class FrameReader:
    """Accumulates bytes from a non-blocking stream and yields whole messages.

    With ``accept``, a frame of any other kind is a ``ProtocolError`` as soon as its header is read;
    so is a frame longer than ``max_frame``. After a ``ProtocolError`` the stream cannot be trusted to
    be in step any more: read no further.

    A frame of ``LARGE_FRAME`` bytes or more is read into a buffer of its own size, which becomes the
    message's body: ``direct()`` is where the next bytes belong, to receive them in place, and
    ``advance(n)`` takes them. A 20 MB answer is then one allocation and no copy here, rather than a
    buffer grown by doubling and copied out (whose capacity also outlived the frame).
    """

    def __init__(self, accept: tuple[type[Message], ...] | None = None, max_frame: int | None = None,
                 sender: str = "this sender") -> None:
        self._buf = bytearray()
        self._need = HEADER.size
        self._accept = accept
        self._max_frame = max_frame
        self._sender = sender
        self._large: bytearray | None = None  # the body of a large frame being read
        self._large_tag = 0
        self._filled = 0

    def direct(self) -> memoryview | None:
        """The unfilled part of a large frame's body, to receive into; None when no large frame is open."""
        if self._large is None:
            return None
        return memoryview(self._large)[self._filled:]

    def advance(self, n: int) -> list[Message]:
        """``n`` bytes were received into ``direct()``."""
        assert self._large is not None
        self._filled += n
        if self._filled < len(self._large):
            return []
        body, self._large = self._large, None
        return [decode(self._large_tag, body)]

    def feed(self, data: bytes | memoryview) -> list[Message]:
        messages: list[Message] = []
        if self._large is not None:
            take = min(len(data), len(self._large) - self._filled)
            self._large[self._filled:self._filled + take] = data[:take]
            messages += self.advance(take)
            data = data[take:]
            if not data:
                return messages
        buf = self._buf
        buf += data
        while len(buf) >= self._need:
            length, tag = HEADER.unpack_from(buf)
            self._check_header(length, tag)
            end = HEADER.size + length
            if len(buf) < end:
                if length >= LARGE_FRAME:
                    self._open_large(length, tag)
                    return messages
                self._need = end
                break
            with memoryview(buf) as view:
                body = bytes(view[HEADER.size:end])
            del buf[:end]
            messages.append(decode(tag, memoryview(body)))
            self._need = HEADER.size
        return messages

    def _open_large(self, length: int, tag: int) -> None:
        """Move the start of a large frame's body out of the shared buffer into one of its own."""
        self._large, self._large_tag = bytearray(length), tag
        start = self._buf[HEADER.size:]
        self._large[:len(start)] = start
        self._filled = len(start)
        self._buf = bytearray()
        self._need = HEADER.size

    def _check_header(self, length: int, tag: int) -> None:
        _check_kind(message_class(tag), self._accept, self._sender)
        if self._max_frame is not None and length > self._max_frame:
            raise ProtocolError(f"a frame of {length} bytes, over the limit of {format_size(self._max_frame)}")


def _check_kind(cls: type[Message], accept: tuple[type[Message], ...] | None, sender: str) -> None:
    if accept is not None and cls not in accept:
        name = cls.__name__
        raise ProtocolError(f"{'an' if name[0] in 'AEIOU' else 'a'} {name} message, which {sender} may not send")


def send_message(sock: socket.socket, message: Message, ahead: Sequence[Message] = ()) -> None:
    """Blocking send of one message (worker and template side), after the small messages ``ahead`` of it,
    all in one system call."""
    parts = [part for small in ahead for part in frame(small)] + frame(message) if ahead else frame(message)
    sent = sock.sendmsg(parts)
    for part in parts:  # what did not fit, part by part, none copied
        if sent < len(part):
            sock.sendall(memoryview(part)[sent:])
        sent = max(0, sent - len(part))


class BlockingReader:
    """Reads whole messages from a blocking stream socket, usually with one ``recv`` per message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self._chunk = bytearray(65536)  # reused: a fresh 64 KiB buffer per recv costs page faults

    def read(self) -> Message | None:
        """The next message, or ``None`` at end of stream."""
        buf = self.buf
        while len(buf) < HEADER.size:
            if not self._fill():
                return None
        length, tag = HEADER.unpack_from(buf)
        end = HEADER.size + length
        if length >= LARGE_FRAME and len(buf) < end:
            return self._read_large(length, tag)
        while len(buf) < end:
            if not self._fill():
                return None
        with memoryview(buf) as view:
            body = bytes(view[HEADER.size:end])
        del buf[:end]
        return decode(tag, memoryview(body))

    def _read_large(self, length: int, tag: int) -> Message | None:
        """A large frame, received straight into a buffer of its size (see ``FrameReader``)."""
        body = bytearray(length)
        start = self.buf[HEADER.size:]
        body[:len(start)] = start
        self.buf = bytearray()
        view, filled = memoryview(body), len(start)
        while filled < length:
            n = self.sock.recv_into(view[filled:])
            if not n:
                return None
            filled += n
        view.release()
        return decode(tag, body)

    def _fill(self) -> bool:
        n = self.sock.recv_into(self._chunk)
        self.buf += memoryview(self._chunk)[:n]
        return n > 0


def pack_packet(message: Message) -> bytes:
    """A whole frame as one datagram, for the SOCK_SEQPACKET control socket."""
    return b"".join(bytes(p) for p in frame(message))


def unpack_packet(packet: bytes, accept: tuple[type[Message], ...] | None = None,
                  sender: str = "this sender") -> Message:
    """The message in one control-socket datagram; ``ProtocolError`` if it is not whole, or not accepted."""
    try:
        length, tag = HEADER.unpack_from(packet)
    except struct.error:
        raise ProtocolError(f"a packet of {len(packet)} bytes, too short for a header") from None
    if HEADER.size + length != len(packet):
        raise ProtocolError(f"a packet of {len(packet)} bytes announcing {length} after its header")
    _check_kind(message_class(tag), accept, sender)
    return decode(tag, memoryview(packet)[HEADER.size:])
