"""The jobs behind scripts/failures.py: each misbehaves in one way, identically under cmworker and the SDK.

``failures_cmworker.py`` and ``failures_sdk.py`` only decorate these; nothing here imports cmworker or
the SDK, so both clients run the very same code.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

CHUNK_MIB = 16


def ok(event: Any) -> dict[str, Any]:
    """A well-behaved job: the one submitted after each failure, to see whether the client still serves."""
    return {"ok": True, "echo": event}


def segfault(event: Any) -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV in the process running the job


def exit1(event: Any) -> None:
    os._exit(1)  # no exception, no cleanup, no answer: the process is simply gone


def hang(event: Any) -> None:
    while True:
        time.sleep(3600)


def hog(event: Any) -> dict[str, int]:
    """Allocate ``event["mib"]`` MiB and write every page, hold it ``event["hold"]`` s, then answer.

    ``bytes`` of a repeated non-zero byte are written out in full, so the pages are really resident
    (a zero-filled ``bytearray`` could stay untouched copy-on-write pages)."""
    chunks = [b"\x01" * (CHUNK_MIB << 20) for _ in range(event["mib"] // CHUNK_MIB)]
    time.sleep(event.get("hold", 1.0))
    return {"allocated_mib": len(chunks) * CHUNK_MIB}


def slow(event: Any) -> dict[str, float]:
    time.sleep(event["seconds"])
    return {"slept_s": event["seconds"]}


def boom(event: Any) -> None:
    raise ValueError(f"boom on {event!r}")
