"""Faults a test can arm on the module endpoints: each is consumed by the next matching request.

Faults are one-shot and ordered: ``fail_next_gets(3)`` arms three entries, the next three GETs each
take one. A fault may target one replica or any (``replica=None``). Listener-level faults (refusing
connections, restarting) live in ``EmbeddedRuntime`` because they act on sockets, not requests.

A *spoiled* reply is what a broken runtime or proxy could send instead of the real one (``Spoil``).
``spoiled()`` turns the real reply into the bytes to write, as ``Step``s; ``wire.Exchange.spoil`` writes
them, one byte at a time or again and again where a step says so, then closes the connection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["get_status", "get_hang", "get_spoil", "result_status", "result_drop", "result_spoil",
                    "schemas_spoil", "restart_spoil"]
GET_FAULTS: tuple[FaultKind, ...] = ("get_status", "get_hang", "get_spoil")
RESULT_FAULTS: tuple[FaultKind, ...] = ("result_status", "result_drop", "result_spoil")
SCHEMA_FAULTS: tuple[FaultKind, ...] = ("schemas_spoil",)
RESTART_FAULTS: tuple[FaultKind, ...] = ("restart_spoil",)

Spoil = Literal["trickle_head", "trickle_body", "interim_flood", "huge_length", "short_body", "huge_chunk",
                "garbage_status", "endless_body", "endless_chunks"]
"""How a reply is spoiled:

- ``trickle_head``: the status line and headers one byte per interval, then the body.
- ``trickle_body``: the head at once, the body one byte per interval.
- ``interim_flood``: ``100 Continue`` replies, one per interval, for the fault's ``seconds``; then the reply.
- ``huge_length``: ``Content-Length`` of 10^17 bytes, then the real body, then the connection closes.
- ``short_body``: ``Content-Length`` 1,000 bytes longer than the body, then the connection closes.
- ``huge_chunk``: a chunked body whose first chunk announces 2^60 - 1 bytes, then the real body.
- ``garbage_status``: a line that is not an HTTP status line, then the connection closes.
- ``endless_body``: no length, 64 KiB of body per interval for the fault's ``seconds`` (read to close).
- ``endless_chunks``: chunks of 64 KiB, one per interval, for the fault's ``seconds``; no last chunk.

The body faults need a body: a reply without one (a 204) becomes ``200`` with ``PLACEHOLDER`` as its body.
"""
BODY_SPOILS: frozenset[str] = frozenset({"trickle_body", "huge_length", "short_body", "huge_chunk",
                                         "endless_body", "endless_chunks"})
HUGE_LENGTH = 10**17
HUGE_CHUNK = b"fffffffffffffff"  # 2**60 - 1: the most hex digits a careful reader still parses
_FILL = b"x" * 65536
PLACEHOLDER = b'{"note": "the real reply had no body, and this fault needs one to spoil"}'


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    replica: int | None = None
    status: int = 503
    seconds: float = 0.0  # get_hang: how long; a spoil: the longest a trickle, flood or endless body goes on
    spoil: Spoil | None = None
    interval: float = 0.0  # a spoil: the pause between trickled bytes, interim replies or endless pieces


@dataclass(frozen=True)
class Step:
    """Bytes of a spoiled reply: written at once, one byte per interval (``trickle``), or again every
    interval until the fault's ``seconds`` are up (``repeat``)."""

    data: bytes
    trickle: bool = False
    repeat: bool = False


def spoiled(spoil: Spoil, status: int, body: bytes) -> tuple[list[Step], bool]:
    """The steps of ``spoil`` applied to the reply ``status`` + ``body``, and whether, written in full,
    they still make a reply a client can read (a trickle does, a lying length does not)."""
    if spoil in BODY_SPOILS and not body:
        status, body = 200, PLACEHOLDER
    length = [] if status == 204 else [f"Content-Length: {len(body)}"]
    if spoil == "trickle_head":
        return [Step(_head(status, length), trickle=True), Step(body)], True
    if spoil == "trickle_body":
        return [Step(_head(status, length)), Step(body, trickle=True)], True
    if spoil == "interim_flood":
        return [Step(b"HTTP/1.1 100 Continue\r\n\r\n", repeat=True), Step(_head(status, length) + body)], True
    if spoil == "huge_length":
        return [Step(_head(status, [f"Content-Length: {HUGE_LENGTH}"]) + body)], False
    if spoil == "short_body":
        return [Step(_head(status, [f"Content-Length: {len(body) + 1000}"]) + body)], False
    if spoil == "huge_chunk":
        return [Step(_head(status, ["Transfer-Encoding: chunked"]) + HUGE_CHUNK + b"\r\n" + body)], False
    if spoil == "garbage_status":
        return [Step(b"HTTP/1.1 2O4 N0 C0NTENT\r\n\r\n" + body)], False
    if spoil == "endless_body":
        return [Step(_head(status, ["Connection: close"]) + body), Step(_FILL, repeat=True)], False
    if spoil == "endless_chunks":
        chunk = b"%x\r\n" % len(_FILL) + _FILL + b"\r\n"
        return [Step(_head(status, ["Transfer-Encoding: chunked"])), Step(chunk, repeat=True)], False
    raise ValueError(f"no such spoil: {spoil!r}")


def _head(status: int, fields: list[str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Spoiled", "Content-Type: application/json", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class FaultPlan:
    """The armed faults, in the order they were armed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Fault] = []

    def arm(self, fault: Fault, count: int = 1) -> None:
        if count < 0:
            raise ValueError(f"fault count must be >= 0, got {count}")
        with self._lock:
            self._pending.extend([fault] * count)

    def take(self, kinds: tuple[FaultKind, ...], replica: int) -> Fault | None:
        """Remove and return the oldest armed fault of ``kinds`` aimed at ``replica``, if any."""
        if not self._pending:  # the common case: nothing armed, no lock taken
            return None
        with self._lock:
            for index, fault in enumerate(self._pending):
                if fault.kind in kinds and fault.replica in (None, replica):
                    return self._pending.pop(index)
        return None

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._pending)
