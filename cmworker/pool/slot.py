"""One worker as the parent sees it: its process and job, and the I/O on its socket and output pipes.

A slot is opened before its worker exists: the parent makes the worker's socketpair and its stdout and
stderr pipes, keeps its own ends (watched by the pool's selector) and has the template fork a worker
onto the other ends. Sends never block the loop (what does not fit waits in the slot's outbox) and
reads take whatever is there.

The worker runs user code, which can write to the worker's socket too: what comes from it is checked
before the pool acts on it (``fault``). The first frame out of protocol ends the reading for good and
is reported to ``on_broken``; the pool then ends that worker, and nothing else.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import signal
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cmworker.errors import JobError, WorkerDied
from cmworker.pool import processes, stack
from cmworker.pool.jobs import Job, OutputLine
from cmworker.pool.messages import (
    MAX_FRAME,
    WORKER_MESSAGES,
    Chunk,
    Failure,
    FrameReader,
    Message,
    ProtocolError,
    Ready,
    Result,
    Retiring,
    StreamEnd,
    Usage,
    frame,
)
from cmworker.pool.output import WorkerOutput
from cmworker.pool.processes import Exit
from cmworker.pool.timers import Timer

READ_SIZE = 256 * 1024  # of the buffer a pool's slots share for reading their sockets


@dataclass(eq=False)
class Slot:
    """One worker process and the job it runs.

    States: starting, idle, busy, killing, retiring, exited (dead while idle), dead.
    """

    id: int
    sock: socket.socket
    output: WorkerOutput
    spawned_at: float
    selector: selectors.BaseSelector
    buffer: bytearray                                  # shared by the pool's slots: see ``read_socket``
    on_message: Callable[[Slot, Message], None]
    on_broken: Callable[[Slot, str], None]
    on_line: Callable[[OutputLine], None]
    pid: int | None = None
    state: str = "starting"
    job: Job | None = None
    dispatched_at: float = 0.0
    answered: bool = True
    streamed: bool = False
    killed_for: str | None = None
    jobs_done: int = 0
    peak_rss: int = 0
    exit: Exit | None = None
    reader: FrameReader = field(default_factory=lambda: FrameReader(WORKER_MESSAGES, MAX_FRAME, "a worker"))
    seq: int = 0      # the number of the job it runs: the n-th job started on a worker ...
    sent: int = 0     # ... is the n-th sent to it (Runs are numbered as they are sent)
    pidfd: int | None = None  # the worker's pidfd, to see it end once no template reports it
    orphan: bool = False      # its template died: it finishes what it was sent, then retires
    retiring: bool = False    # it said its next answer is its last (``Retiring``)
    announced: bool = False   # it sent Ready (its pid comes from the template only: ``Spawned``)
    announced_pid: int | None = None  # the pid its Ready named, checked once the template tells
    broke: str | None = None  # what it sent out of protocol, if it did
    outbox: collections.deque[memoryview] = field(default_factory=collections.deque)
    writing: bool = False
    timers: list[Timer] = field(default_factory=list)
    oom_count: int | None = None
    next: Job | None = None  # prefetch: sent already, starts when ``job`` is answered
    # Asked for its stack before a kill (``enforce.py``): the answer its job gets, made once the stack is in.
    dumping: Callable[[str, dict[str, Any]], JobError] | None = None
    soft_memory_sent: bool = False  # told its job passed the job's soft memory limit
    on_closed: Callable[[Slot], None] | None = None  # once, when its socket reaches end of stream

    @classmethod
    def open(cls, slot_id: int, selector: selectors.BaseSelector, clock: Callable[[], float], buffer: bytearray,
             on_message: Callable[[Slot, Message], None], on_broken: Callable[[Slot, str], None],
             on_line: Callable[[OutputLine], None]) -> tuple[Slot, list[int]]:
        """A new slot watched by ``selector``, and the worker's ends (socket, stdout, stderr) to hand on.

        What the worker sends goes to ``on_message`` (or, out of protocol, to ``on_broken``), what it
        writes to ``on_line``. The caller closes the worker's ends once the template has them.
        """
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_fd = child_sock.detach()
        slot = cls(slot_id, parent_sock, WorkerOutput(out_r, err_r, clock), clock(), selector, buffer,
                   on_message, on_broken, on_line)
        parent_sock.setblocking(False)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        selector.register(parent_sock, selectors.EVENT_READ, slot.on_socket)
        for fd in (out_r, err_r):
            selector.register(fd, selectors.EVENT_READ, lambda mask, fd=fd: slot.read_output(fd))
        return slot, [child_fd, out_w, err_w]

    # -- the socket -----------------------------------------------------------------------------

    def send(self, message: Message, ahead: Message | None = None) -> bool:
        """Send without blocking (after the small message ``ahead``, in the same call); what does not fit
        waits in the outbox for ``flush``.

        Returns True when an outbox was started, so the caller wakes the loop (which owns the selector).
        """
        parts = frame(message) if ahead is None else frame(ahead) + frame(message)
        if self.outbox:  # behind a message still being sent: never into the middle of it
            self.outbox.extend(memoryview(part) for part in parts)
            return True
        try:
            sent = self.sock.sendmsg(parts)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False  # the worker is gone; its Exited message will answer the job
        for part in parts:  # what did not fit waits in the outbox, part by part, none copied
            if sent < len(part):
                self.outbox.append(memoryview(part)[sent:])
            sent = max(0, sent - len(part))
        return bool(self.outbox)

    def watch_writes(self) -> None:
        """Have the selector report when the socket can take more of the outbox."""
        if self.outbox and not self.writing and self.sock.fileno() >= 0:
            self.writing = True
            self.selector.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self.on_socket)

    def on_socket(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if mask & selectors.EVENT_READ:
            self.read_socket()

    def flush(self) -> None:
        """Send what the outbox holds; once it is empty, watch the socket for reading only again."""
        while self.outbox:
            view = self.outbox[0]
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                return
            except OSError:
                self.outbox.clear()
                break
            if sent < len(view):
                self.outbox[0] = view[sent:]
                return
            self.outbox.popleft()
        self.writing = False
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(self.sock, selectors.EVENT_READ, self.on_socket)

    def read_socket(self) -> None:
        """Pass on the messages readable now; at the first one out of protocol, report it and read no more
        (the stream cannot be trusted to be in step from there)."""
        try:
            for message in self._receive():
                fault = self.fault(message)
                if fault is not None:
                    raise ProtocolError(fault)
                self.on_message(self, message)
        except ProtocolError as exc:
            self.close_socket()
            self.on_broken(self, str(exc))

    def fault(self, message: Message) -> str | None:
        """What is out of protocol in ``message`` from this worker now, in a few words; None if nothing."""
        name = type(message).__name__
        if isinstance(message, Ready):
            if self.state != "starting" or self.announced:
                return "a Ready message after it had started"
            if self.pid is not None and message.pid != self.pid:
                return f"a Ready message naming pid {message.pid}, not its own"
            return None
        if not isinstance(message, Result | Failure | Chunk | StreamEnd | Retiring | Usage):
            return f"a {name} message"
        if self.job is None:
            return f"a {name} message while it had no job"
        if message.seq != self.seq:
            return f"a {name} for job {message.seq} while it runs job {self.seq}"
        if isinstance(message, Failure) and message.kind not in _failure_kinds():
            return f"a Failure of unknown kind {message.kind[:40]!r}"
        return None

    def _receive(self) -> Iterator[Message]:
        # One buffer for every read of the pool's slots: a fresh 256 KiB allocation per answer cost two
        # page faults each time glibc served it with mmap (measured: 202 -> 164 us per no-op round trip).
        buf = self.buffer
        while self.sock.fileno() >= 0:
            large = self.reader.direct()  # a large answer is received in place, into its own buffer
            if large is not None:
                try:
                    n = self.sock.recv_into(large)
                except BlockingIOError:
                    return
                except OSError:
                    n = 0
                finally:
                    large.release()  # the buffer becomes the answer's body, which must not stay pinned
                if n:
                    yield from self.reader.advance(n)
                    continue
            try:
                n = self.sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError:
                n = 0
            if not n:
                # End of stream: the worker exited or closed its end. Its Exited message (from the
                # template) carries the status; stop watching the socket meanwhile.
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(self.sock)
                if self.on_closed is not None:
                    on_closed, self.on_closed = self.on_closed, None
                    on_closed(self)
                return
            # feed() copies what it keeps, so the shared buffer may be reused at once.
            yield from self.reader.feed(memoryview(buf)[:n])
            if n < len(buf):
                return

    def watch_exit(self, on_exit: Callable[[Slot], None]) -> bool:
        """Have the selector report the worker's exit (its pidfd turns readable); False if it cannot."""
        if self.pidfd is None:
            return False
        try:
            self.selector.modify(self.pidfd, selectors.EVENT_READ, lambda mask: on_exit(self))
        except KeyError:
            self.selector.register(self.pidfd, selectors.EVENT_READ, lambda mask: on_exit(self))
        return True

    def unwatch_exit(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.pidfd)

    def close_pidfd(self) -> None:
        if self.pidfd is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None

    def close_socket(self) -> None:
        if self.sock.fileno() < 0:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()

    # -- the output pipes -----------------------------------------------------------------------

    def read_output(self, fd: int) -> None:
        """Pass on the lines now readable on one of the pipes; stop watching it at EOF."""
        lines, eof = self.output.read(fd)
        if eof:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        self.emit(lines)

    def emit(self, lines: Iterable[tuple[str, str]]) -> None:
        """``lines`` tagged with this slot's job, and then the count of lines a flood cost, if any."""
        job = self.job
        job_id, function = (job.id, job.function) if job else (None, None)
        for stream, text in lines:
            self.on_line(OutputLine(job_id, self.pid, stream, text, function))
        dropped = self.output.take_dropped() if self.answered or job is None else 0
        if dropped:
            self.on_line(OutputLine(job_id, self.pid, "stderr", "", function, dropped=dropped))

    def drain(self) -> None:
        """Pass on everything a dead worker left in its socket and pipes."""
        if self.sock.fileno() >= 0:
            self.read_socket()
        self.drain_output()

    def drain_output(self) -> None:
        """Pass on what is already in the pipes, so that a job's lines come before its answer."""
        self.emit(list(self.output.drain()))

    def close_output(self) -> None:
        for fd in (self.output.out_fd, self.output.err_fd):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        self.output.close()

    def kill(self, sig: int, tree: list[int] | None = None) -> None:
        """Signal the worker and every process of its job, escaped ones included (``job_processes``).

        SIGKILL stops them all first, so that none can fork out of the kill; what outlives the worker
        anyway is re-parented to the template, which kills it.
        """
        if self.pid is None:
            return
        if sig == signal.SIGKILL:
            processes.kill_job(self.pid)
            return
        processes.kill_group(self.pid, sig, processes.job_processes(self.pid) if tree is None else tree)

    def death_error(self) -> JobError:
        """Why the job of this worker, which ended without answering, is answered ``worker_died``: decoded
        once from its wait status (``exit``), which is missing when its template had died first. A worker
        that cmworker asked for its stack before killing it gets the answer it was being killed for.

        The stack it wrote at a crash (or when asked), if any, rides along (``stack.details``)."""
        where, found = stack.details(self.output.stack.text)
        if self.dumping is not None:
            return self.dumping(where, found)
        name = self.job.function if self.job else "?"
        output = "\n".join(self.output.last)
        if self.exit is None:
            return WorkerDied(f"the worker running function {name!r} ended without answering after cmworker's "
                              "worker template had died, so its exit status is unknown", pid=self.pid, output=output)
        details: dict[str, Any] = {"pid": self.exit.pid, "output": output, **found}
        if self.exit.signal is not None:
            details["signal"] = self.exit.signal_name
        else:
            details["exit_code"] = self.exit.code
        if self.exit.signal == signal.SIGKILL:
            count = processes.oom_kill_count()
            if count is not None and self.oom_count is not None and count > self.oom_count:
                return WorkerDied(
                    f"the worker running function {name!r} was killed by the kernel's out-of-memory killer "
                    "(the container ran out of memory)", likely_oom=True, **details)
        return WorkerDied(f"the worker running function {name!r} {self.exit.describe()}{where} without "
                          "answering", **details)

    def last_lines(self) -> str:
        if not self.output.last:
            return ""
        return "; its last output:\n" + "\n".join(self.output.last)


def _failure_kinds() -> set[str]:
    """The payload kinds a worker may fail a job with: those of ``JobError`` and every class under it
    (an Executor job may raise its own), looked up now, as classes may be defined at any time."""
    kinds, todo = set(), [JobError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "kind" in vars(cls):
            kinds.add(cls.kind)
    return kinds
