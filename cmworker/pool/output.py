"""What a worker writes to stdout and stderr, read by the parent a line at a time (parent side).

Each worker's fds 1 and 2 are pipes into the parent, so output written by C extensions and
subprocesses is caught too, and output of a worker that dies is not lost. The parent always drains the
pipes, so a job can never block on a full pipe; a line longer than ``MAX_LINE`` is cut into lines of
that length, and a flood is rate-limited (a burst, then a steady rate, in lines, a long line counting
as one per ``LINE_BYTES`` it holds: so in bytes too) and the lines over the limit are only counted.
The last lines are kept regardless, for the answer to a job whose worker died.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterator

from cmworker.pool.stack import StackCatcher
from cmworker.redaction import SECRETS

READ_SIZE = 256 * 1024
LAST_LINES = 20
# A longer line is cut into lines this long, never inside a secret (_split). A pipe's whole buffer: a
# structured log line a job writes at once stays whole, and parsed as one.
MAX_LINE = 64 * 1024
LINE_BURST, LINE_RATE = 2000.0, 1000.0
LINE_BYTES = 16 * 1024  # the flood limit counts a line as one per LINE_BYTES it holds, started


class LineReader:
    """Whole lines from non-blocking pipes; a partial line waits for its newline, EOF, or MAX_LINE."""

    def __init__(self) -> None:
        self._partial: dict[int, bytes] = {}
        self._full: set[int] = set()  # fds whose last read filled its buffer: more may be waiting

    def read(self, fd: int) -> tuple[list[bytes], bool]:
        """The complete lines now readable on ``fd``, and whether it reached end of file."""
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            self._full.discard(fd)
            return [], False
        except OSError:
            data = b""
        if len(data) == READ_SIZE:
            self._full.add(fd)
        else:
            self._full.discard(fd)
        if not data:
            rest = self._partial.pop(fd, b"")
            return ([rest] if rest else []), True
        whole = (self._partial.pop(fd, b"") + data).split(b"\n")
        tail = whole.pop()
        # Every line at most MAX_LINE long, each counted against the flood limit: cut only where a read
        # ended, a job's 64 MiB without a newline would reach the log whole, in lines of a read each.
        lines: list[bytes] = []
        for line in whole:
            pieces, rest = _split(line, 0)
            lines += pieces
            lines.append(rest)
        pieces, tail = _split(tail, max(SECRETS.longest - 1, 0))
        lines += pieces
        if tail:
            self._partial[fd] = tail
        return lines, False

    @property
    def unread(self) -> bool:
        """Whether the last read of some pipe filled its buffer, so that output may be left in it."""
        return bool(self._full)


def _split(line: bytes, keep: int) -> tuple[list[bytes], bytes]:
    """Lines of at most MAX_LINE bytes cut from the front of ``line`` while more than ``keep`` bytes would
    be left past them, and what is left. A cut never falls inside a secret; for a partial line ``keep``
    is one byte short of the longest secret, so what waits for the next read can hold any secret that
    read may complete, and no secret is ever logged as two harmless halves."""
    pieces = []
    while len(line) > MAX_LINE + keep:
        at = _cut_at(line, MAX_LINE)
        pieces.append(line[:at])
        line = line[at:]
    return pieces, line


def _cut_at(line: bytes, at: int) -> int:
    """``at``, or the start of the secret it falls inside (its end, if that secret starts the line)."""
    longest = SECRETS.longest
    if longest:
        start = max(at - longest, 0)
        for begin, end in SECRETS.spans(line[start:at + longest]):
            if begin + start < at < end + start:
                return begin + start if begin + start > 0 else end + start
    return at


class WorkerOutput:
    """One worker's stdout and stderr pipes (read ends), its last lines, and its flood limit."""

    def __init__(self, out_fd: int, err_fd: int, clock: Callable[[], float], crashes_only: bool = False) -> None:
        self.out_fd, self.err_fd = out_fd, err_fd
        self.clock = clock
        self.last: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self.dropped = 0
        self.stack = StackCatcher(crashes_only)  # a stack dump on stderr goes to the answer, not to the log
        self._reader = LineReader()
        self._tokens = LINE_BURST
        self._refilled = clock()

    def read(self, fd: int) -> tuple[list[tuple[str, str]], bool]:
        """Lines to log as ``(stream, text)`` — flood-limited — and whether ``fd`` reached end of file."""
        raw_lines, eof = self._reader.read(fd)
        stream = "stdout" if fd == self.out_fd else "stderr"
        if stream == "stderr" and raw_lines:
            take = self.stack.take
            raw_lines = [raw for raw in raw_lines if not take(raw.decode(errors="replace"))]
        return [(stream, text) for text in self._admit(raw_lines)], eof

    def drain(self) -> Iterator[tuple[str, str]]:
        """Everything already written to both pipes (a finished job's last lines, a dead worker's)."""
        for fd in (self.out_fd, self.err_fd):
            for _ in range(64):  # bounded: a grandchild still writing must not keep us here
                lines, eof = self.read(fd)
                yield from lines
                if eof or not lines:
                    break

    @property
    def unread(self) -> bool:
        """Whether the last read of a pipe may have left output behind in it."""
        return self._reader.unread

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped

    def release_stack(self) -> list[tuple[str, str]]:
        """The dump lines caught since the job started, as stderr lines to log (flood-limited), and
        forgotten: for a job that wrote them itself and answered, not one killed or crashed."""
        lines = self.stack.release()
        return [("stderr", text) for text in self._admit([line.encode() for line in lines])] if lines else []

    def start_job(self) -> None:
        self.last.clear()
        self.stack.reset()

    def close(self) -> None:
        for fd in (self.out_fd, self.err_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _admit(self, raw_lines: list[bytes]) -> Iterator[str]:
        for raw in raw_lines:
            text = raw.decode(errors="replace")
            self.last.append(text)
            now = self.clock()
            self._tokens = min(LINE_BURST, self._tokens + (now - self._refilled) * LINE_RATE)
            self._refilled = now
            cost = 1 + (len(raw) - 1) // LINE_BYTES if raw else 1
            if self._tokens < cost:
                self.dropped += 1
                continue
            self._tokens -= cost
            yield text
