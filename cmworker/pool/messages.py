"""Every message that crosses a pipe between cmworker's processes, and its framing.

Parent and worker talk over one socketpair per worker; parent and template over one SOCK_SEQPACKET
control socket (so that file descriptors ride on the message that needs them). A frame is
``!IB`` (body length, tag) followed by the body. Bodies are packed with ``struct`` — no pickles: the
compute-module path carries the job's JSON bytes in and the result's JSON bytes out untouched.

    parent -> worker     Run
    worker -> parent     Ready, Result, Failure, Chunk, StreamEnd, Retiring
    parent -> template   Spawn (+ the worker's socket and output pipes as SCM_RIGHTS)
    template -> parent   TemplateReady, TemplateFailed, Spawned, Exited
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import ClassVar

HEADER = struct.Struct("!IB")
MAX_CONTROL_MESSAGE = 64 * 1024

# How a job's bytes are to be read: JSON (compute-module jobs) or cloudpickle (the local executor).
MODE_JSON = 0
MODE_PICKLE = 1


class Message:
    tag: ClassVar[int]
    _registry: ClassVar[dict[int, type[Message]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        Message._registry[cls.tag] = cls

    def pack(self) -> bytes | memoryview:
        raise NotImplementedError

    @classmethod
    def unpack(cls, body: memoryview) -> Message:
        raise NotImplementedError


def frame(message: Message) -> list[bytes | memoryview]:
    """Header and body, ready for ``socket.sendmsg`` (the body is not copied)."""
    body = message.pack()
    return [HEADER.pack(len(body), message.tag), body]


def decode(tag: int, body: memoryview) -> Message:
    try:
        cls = Message._registry[tag]
    except KeyError:
        raise ValueError(f"unknown message tag {tag}") from None
    return cls.unpack(body)


_F64 = struct.Struct("!d")


@dataclass(frozen=True)
class Ready(Message):
    tag = 1
    pid: int

    def pack(self) -> bytes:
        return struct.pack("!I", self.pid)

    @classmethod
    def unpack(cls, body: memoryview) -> Ready:
        return cls(struct.unpack("!I", body)[0])


_RUN = struct.Struct("!BdQH")


@dataclass(frozen=True)
class Run(Message):
    """One job: which function, in which mode, with which in-job limits, and its bytes."""

    tag = 2
    function: str
    body: bytes | memoryview
    mode: int = MODE_JSON
    soft_timeout: float = 0.0        # seconds; 0 = none
    max_result_size: int = 0         # bytes; 0 = unlimited

    def pack(self) -> bytes:
        name = self.function.encode()
        return b"".join((_RUN.pack(self.mode, self.soft_timeout, self.max_result_size, len(name)), name,
                         self.body))

    @classmethod
    def unpack(cls, body: memoryview) -> Run:
        mode, soft, max_size, name_len = _RUN.unpack_from(body)
        start = _RUN.size
        name = bytes(body[start:start + name_len]).decode()
        return cls(name, body[start + name_len:], mode, soft, max_size)


@dataclass(frozen=True)
class Result(Message):
    """The job's encoded result and the CPU seconds it used."""

    tag = 3
    body: bytes | memoryview
    cpu: float = 0.0

    def pack(self) -> bytes:
        return _F64.pack(self.cpu) + self.body

    @classmethod
    def unpack(cls, body: memoryview) -> Result:
        return cls(body[_F64.size:], _F64.unpack_from(body)[0])


@dataclass(frozen=True)
class Failure(Message):
    """The job failed inside the worker: its payload ``kind`` and the error payload (JSON, or a pickle)."""

    tag = 4
    kind: str
    body: bytes | memoryview
    cpu: float = 0.0

    def pack(self) -> bytes:
        kind = self.kind.encode()
        return b"".join((_F64.pack(self.cpu), bytes((len(kind),)), kind, self.body))

    @classmethod
    def unpack(cls, body: memoryview) -> Failure:
        n = body[_F64.size]
        start = _F64.size + 1
        kind = bytes(body[start:start + n]).decode()
        return cls(kind, body[start + n:], _F64.unpack_from(body)[0])


@dataclass(frozen=True)
class Chunk(Message):
    """One streamed item, already encoded."""

    tag = 5
    body: bytes | memoryview

    def pack(self) -> bytes | memoryview:
        return self.body

    @classmethod
    def unpack(cls, body: memoryview) -> Chunk:
        return cls(body)


@dataclass(frozen=True)
class StreamEnd(Message):
    """A streaming job's generator finished cleanly."""

    tag = 6
    cpu: float = 0.0

    def pack(self) -> bytes:
        return _F64.pack(self.cpu)

    @classmethod
    def unpack(cls, body: memoryview) -> StreamEnd:
        return cls(_F64.unpack_from(body)[0])


@dataclass(frozen=True)
class Retiring(Message):
    """Sent just before a job's answer: the job left this worker unfit for another job, so the answer is
    its last and it exits after sending it. The parent must send it nothing more."""

    tag = 7

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, body: memoryview) -> Retiring:
        return cls()


@dataclass(frozen=True)
class Spawn(Message):
    """Fork a worker for ``slot``; its socket and stdout/stderr pipes travel alongside as fds."""

    tag = 10
    slot: int

    def pack(self) -> bytes:
        return struct.pack("!I", self.slot)

    @classmethod
    def unpack(cls, body: memoryview) -> Spawn:
        return cls(struct.unpack("!I", body)[0])


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


class FrameReader:
    """Accumulates bytes from a non-blocking stream and yields whole messages."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = HEADER.size

    def feed(self, data: bytes | memoryview) -> list[Message]:
        buf = self._buf
        buf += data
        messages: list[Message] = []
        while len(buf) >= self._need:
            length, tag = HEADER.unpack_from(buf)
            end = HEADER.size + length
            if len(buf) < end:
                self._need = end
                break
            messages.append(decode(tag, memoryview(bytes(buf[HEADER.size:end]))))
            del buf[:end]
            self._need = HEADER.size
        return messages


def send_message(sock: socket.socket, message: Message) -> None:
    """Blocking send of one message (worker and template side)."""
    parts = frame(message)
    sent = sock.sendmsg(parts)
    total = sum(len(p) for p in parts)
    if sent < total:
        sock.sendall(b"".join(bytes(p) for p in parts)[sent:])


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
            if not self._fill(HEADER.size - len(buf)):
                return None
        length, tag = HEADER.unpack_from(buf)
        end = HEADER.size + length
        while len(buf) < end:
            if not self._fill(end - len(buf)):
                return None
        body = bytes(buf[HEADER.size:end])
        del buf[:end]
        return decode(tag, memoryview(body))

    def _fill(self, want: int) -> bool:
        n = self.sock.recv_into(self._chunk)
        self.buf += memoryview(self._chunk)[:n]
        return n > 0


def pack_packet(message: Message) -> bytes:
    """A whole frame as one datagram, for the SOCK_SEQPACKET control socket."""
    return b"".join(bytes(p) for p in frame(message))


def unpack_packet(packet: bytes) -> Message:
    length, tag = HEADER.unpack_from(packet)
    return decode(tag, memoryview(packet)[HEADER.size:HEADER.size + length])
