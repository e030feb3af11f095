"""The values that go in and out of a pool: a ``Job``, its one ``Answer``, stream items and output lines."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field

from cmworker.errors import JobError
from cmworker.limits import JobLimits
from cmworker.pool.messages import MODE_JSON


@dataclass(frozen=True)
class Job:
    """One unit of work. ``body`` is the job's JSON (``MODE_JSON``) or a cloudpickle (``MODE_PICKLE``)."""

    id: str
    function: str
    body: bytes
    limits: JobLimits = field(default_factory=JobLimits)
    mode: int = MODE_JSON
    submitted: float = field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True)
class Answer:
    """The one terminal answer of a job.

    ``body`` is what answers it: the result bytes, or an error payload (JSON). ``kind`` is ``"ok"`` or the
    error payload's kind. ``error`` is set when the parent itself ended the job (timeout, memory, death,
    shutdown); errors the worker reported travel in ``body`` only. For a streaming job ``streamed`` says
    items were already delivered through ``on_stream``; ``body`` is then the final item (an error) or empty.
    """

    job: Job
    body: bytes | bytearray  # a large result stays in the buffer it was received into: never copied
    kind: str = "ok"
    error: JobError | None = None
    streamed: bool = False
    pid: int | None = None
    queued: float = 0.0     # seconds from submit to dispatch
    wall: float = 0.0       # seconds from dispatch to answer
    cpu: float = 0.0        # CPU seconds the worker spent on the job, when it reported them
    # The job's peak RSS, bytes: the higher of the worker's own peak during the job (reported by the worker
    # from its VmHWM, exact) and the largest total of the job's process tree seen by the parent's sampler
    # (which also counts the processes the job started). 0 when neither is known.
    max_rss: int = 0

    @property
    def stack(self) -> str | None:
        """The Python stack of the worker's threads when the parent killed the job or it crashed."""
        return self.error.details.get("stack") if self.error is not None else None

    @property
    def where(self) -> str | None:
        """The innermost frame of the user's code in ``stack``: ``"solve() at /app/app.py:42"``."""
        return self.error.details.get("where") if self.error is not None else None

    @classmethod
    def failed(cls, job: Job, error: JobError) -> Answer:
        """The answer of a job that no worker ran to its end: ``error`` made here, in the parent."""
        return cls(job, error.to_bytes(), error.kind, error)


@dataclass(frozen=True)
class StreamItem:
    job: Job
    data: bytes | bytearray


@dataclass(frozen=True)
class OutputLine:
    """A line a worker (or the template) wrote to stdout/stderr; ``dropped`` counts lines a flood cost."""

    job_id: str | None
    pid: int | None
    stream: str        # "stdout" or "stderr"
    text: str
    function: str | None = None
    dropped: int = 0


def print_line(line: OutputLine) -> None:
    """Write ``line`` to this process's own stdout or stderr (the pool's default ``on_output``)."""
    stream = sys.stdout if line.stream == "stdout" else sys.stderr
    with contextlib.suppress(Exception):
        stream.write(line.text + "\n")
        stream.flush()
