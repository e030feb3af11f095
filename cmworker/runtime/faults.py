"""Faults a test can arm on the module endpoints: each is consumed by the next matching request.

Faults are one-shot and ordered: ``fail_next_gets(3)`` arms three entries, the next three GETs each
take one. A fault may target one replica or any (``replica=None``). Listener-level faults (refusing
connections, restarting) live in ``EmbeddedRuntime`` because they act on sockets, not requests.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["get_status", "get_hang", "result_status", "result_drop"]
GET_FAULTS: tuple[FaultKind, ...] = ("get_status", "get_hang")
RESULT_FAULTS: tuple[FaultKind, ...] = ("result_status", "result_drop")


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    replica: int | None = None
    status: int = 503
    seconds: float = 0.0


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
