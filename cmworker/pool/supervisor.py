"""The pool, parent side: workers, deadlines, memory, deaths — and exactly one answer per job.

Data flow::

    submit(job) ─► pending ─► _dispatch ─► worker socket ─► worker runs the function
                                                                   │
      on_answer(Answer) ◄─ _finish ◄─ Result / Failure / StreamEnd ◄┘   (Chunk ─► on_stream)
                             ▲
        Exited(pid, status) ─┘  template reaped a worker that never answered: classify, answer, respawn
        timers ──────────────┘  hard timeout / memory over the limit: answer now, kill the group

One thread runs ``_loop``: a single ``selector.select`` over the wake-up pipe, the template's control
socket, each worker's socket and output pipes, its timeout set by the nearest timer (job deadline, kill
escalation, memory sample, respawn backoff). Nothing polls at a fixed interval; an idle pool sleeps.

Every job moves ``pending -> busy -> answered`` exactly once: ``_finish`` is the only place that calls
``on_answer``, and it refuses a job that is already answered (a result that races a kill is dropped).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cmworker.errors import (
    AppLoadError,
    JobError,
    JobTimeout,
    MemoryLimitExceeded,
    PoolUnhealthy,
    ShuttingDown,
    WorkerDied,
)
from cmworker.limits import JobLimits
from cmworker.pool import processes
from cmworker.pool.messages import (
    MAX_CONTROL_MESSAGE,
    MODE_JSON,
    Chunk,
    Exited,
    Failure,
    FrameReader,
    Message,
    Ready,
    Result,
    Retiring,
    Run,
    Spawn,
    Spawned,
    StreamEnd,
    TemplateFailed,
    TemplateReady,
    frame,
    pack_packet,
    unpack_packet,
)
from cmworker.pool.output import LineReader, WorkerOutput
from cmworker.pool.processes import Exit
from cmworker.units import describe_size, format_duration, format_size

log = logging.getLogger("cmworker.supervisor")

_READ_SIZE = 256 * 1024
# Memory is sampled more often the closer a job is to its limit: the next sample is due when a job
# growing at _ASSUMED_GROWTH could reach the limit, bounded to [_SAMPLE_MIN, _SAMPLE_MAX] seconds. The
# rate must be one no real allocation beats: at 4 GiB/s, a job on transparent huge pages (measured at
# 5.5-7.8 GiB/s) overshot a 512 MiB limit by up to 364 MiB.
_ASSUMED_GROWTH = 16 * 2**30
_SAMPLE_MIN, _SAMPLE_MAX = 0.002, 0.1
# Crash-loop breaker: this many fresh workers dying in a row before taking a job stops respawning.
_MAX_STARTUP_FAILURES = 5
_RESPAWN_BACKOFF_MAX = 2.0


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
    body: bytes
    kind: str = "ok"
    error: JobError | None = None
    streamed: bool = False
    pid: int | None = None
    queued: float = 0.0     # seconds from submit to dispatch
    wall: float = 0.0       # seconds from dispatch to answer
    cpu: float = 0.0        # CPU seconds the worker spent on the job, when it reported them
    max_rss: int = 0        # highest RSS of the job's process tree seen by the sampler, bytes


@dataclass(frozen=True)
class StreamItem:
    job: Job
    data: bytes


@dataclass(frozen=True)
class OutputLine:
    """A line a worker (or the template) wrote to stdout/stderr; ``dropped`` counts lines a flood cost."""

    job_id: str | None
    pid: int | None
    stream: str        # "stdout" or "stderr"
    text: str
    function: str | None = None
    dropped: int = 0


class _Timer:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        """Never fire; and drop the references now, not when ``when`` comes (a job's timeout may be an
        hour away, and its timer holds the job, body included)."""
        self.cancelled = True
        self.callback, self.args = _never, ()


def _never(*args: Any) -> None:
    pass


@dataclass(eq=False)
class _Slot:
    """One worker process and the job it runs. States: starting, idle, busy, killing, retiring, dead."""

    id: int
    sock: socket.socket
    output: WorkerOutput
    spawned_at: float
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
    reader: FrameReader = field(default_factory=FrameReader)
    outbox: collections.deque[memoryview] = field(default_factory=collections.deque)
    writing: bool = False
    timers: list[_Timer] = field(default_factory=list)
    oom_count: int | None = None
    next: Job | None = None  # prefetch: sent already, starts when ``job`` is answered
    retiring: bool = False   # the worker said its next answer is its last (``Retiring``)


def _default_output(line: OutputLine) -> None:
    stream = sys.stdout if line.stream == "stdout" else sys.stderr
    with contextlib.suppress(Exception):
        stream.write(line.text + "\n")
        stream.flush()


class Pool:
    """A pool of pre-forked worker processes that answers every submitted job exactly once.

    ``on_answer`` (and ``on_stream``/``on_output``) run on the pool's own thread and must return quickly.
    """

    def __init__(
        self,
        app: str | None = None,
        *,
        workers: int,
        on_answer: Callable[[Answer], None],
        on_stream: Callable[[StreamItem], None] | None = None,
        on_output: Callable[[OutputLine], None] | None = None,
        on_state_change: Callable[[], None] | None = None,
        on_start: Callable[[Job], None] | None = None,
        preload: Sequence[str] = (),
        log_level: str = "INFO",
        logger_levels: Sequence[tuple[str, str]] = (),
        kill_grace: float = 0.05,
        max_jobs_per_worker: int = 0,
        worker_nice: int = 0,
        prefetch: bool = False,
        startup_timeout: float = 120.0,
        python: str = sys.executable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, not {workers}")
        self.app = app
        self.size = workers
        self.on_answer = on_answer
        self.on_stream = on_stream
        self.on_output = on_output or _default_output
        self.on_state_change = on_state_change or (lambda: None)
        self.on_start = on_start
        self.preload = list(preload)
        self.log_level = log_level
        self.logger_levels = list(logger_levels)
        self.kill_grace = kill_grace
        self.max_jobs_per_worker = max_jobs_per_worker
        self.worker_nice = worker_nice
        self.prefetch = prefetch
        self.startup_timeout = startup_timeout
        self.python = python
        self.clock = clock
        self.functions: list[str] = []
        self.function_info: dict[str, dict[str, Any]] = {}  # declared limits and schema, by function
        self.respawns = 0
        self.turns = 0  # iterations of the loop: lets a test prove an idle pool sleeps

        self._selector = selectors.DefaultSelector()
        self._slots: dict[int, _Slot] = {}
        self._by_pid: dict[int, _Slot] = {}
        self._slot_ids = itertools.count(1)
        self._timers: list[tuple[float, int, _Timer]] = []
        self._timer_seq = itertools.count()
        self._cancelled_timers = 0  # cancelled entries still in _timers
        # Guarded by _lock: the queue, the idle workers, the timer heap and the supervisor's planned
        # wake-up. A submitting thread may dispatch straight to an idle worker (one thread hop less per
        # job) and only wakes the loop when it adds a timer due before the loop means to wake anyway.
        self._pending: collections.deque[Job] = collections.deque()
        self._answers: collections.deque[Answer] = collections.deque()
        self._idle: list[_Slot] = []
        self._planned_wake = float("inf")
        self._lock = threading.Condition()
        self._ready = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._woken = False
        self._template: subprocess.Popen[bytes] | None = None
        self._template_lines = LineReader()
        self._read_buffer = bytearray(_READ_SIZE)
        self._control: socket.socket | None = None
        self._template_state = "none"  # none, starting, ready
        self._startup_failures = 0
        self._respawn_timer: _Timer | None = None
        self._unhealthy: PoolUnhealthy | None = None
        self._load_error: AppLoadError | None = None
        self._stopping = False
        self._stop_deadline: float | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- public API (any thread) ------------------------------------------------------------------

    def start(self) -> None:
        """Start the template and the workers; return when every worker is ready.

        Raises ``AppLoadError`` when the app cannot be imported and ``PoolUnhealthy`` when workers die
        at start-up.
        """
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._thread = threading.Thread(target=self._loop, name="cmworker-supervisor", daemon=True)
        self._thread.start()
        self._wake()
        if not self._ready.wait(self.startup_timeout):
            self.close()
            raise PoolUnhealthy(f"the pool did not become ready within {format_duration(self.startup_timeout)}")
        error = self._load_error or self._unhealthy
        if error is None and self._closed:
            error = PoolUnhealthy("the pool stopped while it was starting")
        if error is not None:
            self.close()
            raise error

    def submit(self, job: Job) -> None:
        """Run a job; its answer arrives through ``on_answer``. Thread-safe.

        With a worker idle and nothing queued, the job goes straight to that worker from this thread;
        otherwise it waits in the queue for the next free worker.
        """
        slot, wake = None, False
        with self._lock:
            if self._stopping or self._closed:
                closed = True
            else:
                closed = False
                if self._idle and not self._pending:
                    slot = self._idle.pop()
                    wake = self._start_job(slot, job)
                else:
                    self._pending.append(job)
                    wake = True
        if closed:
            error = ShuttingDown("the pool is shutting down and no longer accepts jobs")
            self.on_answer(Answer(job, error.to_bytes(), error.kind, error))
            return
        if slot is not None:
            wake = self._send_run(slot, job) or wake
        if wake:
            self._wake()

    def cancel(self, job_id: str) -> bool:
        """Withdraw a job that is still queued; True when it was (it then gets no answer). Thread-safe."""
        with self._lock:
            for job in self._pending:
                if job.id == job_id:
                    self._pending.remove(job)
                    self._lock.notify_all()
                    return True
        return False

    @property
    def available(self) -> int:
        """Workers that are idle and not yet promised to a queued job."""
        with self._lock:
            return len(self._idle) - len(self._pending)

    def wait_available(self, timeout: float | None = None) -> bool:
        """Block until a worker is free (for admission: ask for a job only then)."""
        with self._lock:
            self._lock.wait_for(lambda: len(self._idle) > len(self._pending) or self._stopping
                                or self._unhealthy is not None, timeout)
            return len(self._idle) > len(self._pending) and not self._stopping

    @property
    def unhealthy(self) -> PoolUnhealthy | None:
        """Why the pool stopped respawning workers, or ``None`` while it is healthy."""
        return self._unhealthy

    @property
    def template_pid(self) -> int | None:
        """The worker template's pid while it runs (the pool reaps it itself)."""
        template = self._template
        return template.pid if template is not None else None

    def worker_pids(self) -> list[int]:
        return [s.pid for s in list(self._slots.values()) if s.pid is not None and s.state != "dead"]

    def close(self, grace: float = 0.0, wait: bool = True) -> None:
        """Stop: let running jobs finish for up to ``grace`` seconds, then kill them and answer ``shutdown``.

        Calling it again shortens the grace (a second Ctrl-C). With ``wait=False`` it returns at once;
        ``closed`` tells when the pool is done and ``on_state_change`` is called then.
        """
        with self._lock:
            if self._closed:
                return
            self._stopping = True
            self._lock.notify_all()
            deadline = self.clock() + grace
            if self._stop_deadline is None or deadline < self._stop_deadline:
                self._stop_deadline = deadline
        self._wake()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._thread is None:
            self._closed = True

    @property
    def closed(self) -> bool:
        """Whether the pool has stopped and every job it took has been answered."""
        return self._closed

    def __enter__(self) -> Pool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop (pool thread only) --------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._start_template()
            while not self._finished():
                self.turns += 1
                self._wait_for_events()
                self._fire_timers()
                self._dispatch()
                self._watch_outboxes()
                self._maintain()
                self._check_stop()
                self._deliver()
        except BaseException as exc:
            log.exception("pool supervisor crashed")
            self._unhealthy = PoolUnhealthy(f"the pool supervisor crashed: {exc!r}")
            raise
        finally:
            self._teardown()

    def _wait_for_events(self) -> None:
        with self._lock:
            wake_at = self._timers[0][0] if self._timers else float("inf")
            if self._stop_deadline is not None:
                wake_at = min(wake_at, self._stop_deadline)
            self._planned_wake = wake_at
        timeout = None if wake_at == float("inf") else max(0.0, wake_at - self.clock())
        events = self._selector.select(timeout)
        # Output pipes before sockets. A worker flushes its output before it sends its answer, so
        # when the answer is in this batch its output is too; read first, it needs no drain (_finish).
        for key, mask in events:
            if not isinstance(key.fileobj, socket.socket):
                key.data(mask)
        for key, mask in events:
            if isinstance(key.fileobj, socket.socket):
                key.data(mask)

    def _finished(self) -> bool:
        return self._stopping and not any(s.state == "busy" for s in self._slots.values()) \
            and not self._pending and self._stop_deadline is not None

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError, OSError):  # OSError: the pool closed meanwhile
                os.write(self._wake_w, b"\0")

    def _on_wake(self, mask: int) -> None:
        # Drain first, then clear the flag: a wake-up requested in between is never lost, because
        # the loop looks at the queue after this.
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        self._woken = False

    # -- timers ---------------------------------------------------------------------------------

    def _after(self, delay: float, callback: Callable[..., None], *args: Any) -> _Timer:
        with self._lock:
            return self._push_timer(self.clock() + delay, callback, args)

    def _push_timer(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> _Timer:
        timer = _Timer(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._timer_seq), timer))
        return timer

    def _cancel_timers(self, timers: Iterable[_Timer]) -> None:
        """Cancel; once most of the heap is cancelled entries, rebuild it without them (it would
        otherwise grow by a job's timers until their deadlines pass)."""
        with self._lock:
            for timer in timers:
                if not timer.cancelled:
                    timer.cancel()
                    self._cancelled_timers += 1
            if self._cancelled_timers > 64 and self._cancelled_timers * 2 > len(self._timers):
                self._timers = [entry for entry in self._timers if not entry[2].cancelled]
                heapq.heapify(self._timers)
                self._cancelled_timers = 0

    def _fire_timers(self) -> None:
        now = self.clock()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                timer = heapq.heappop(self._timers)[2]
                if timer.cancelled:
                    self._cancelled_timers = max(0, self._cancelled_timers - 1)
                due.append(timer)
        for timer in due:
            if not timer.cancelled:
                timer.callback(*timer.args)

    # -- the template ---------------------------------------------------------------------------

    def _start_template(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        options = {"control_fd": child_end.fileno(), "app": self.app, "preload": self.preload,
                   "log_level": self.log_level, "logger_levels": self.logger_levels,
                   "worker_nice": self.worker_nice, "sys_path": [p or os.getcwd() for p in sys.path]}
        self._template = subprocess.Popen(
            [self.python, "-m", "cmworker.pool.template", json.dumps(options)],
            pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        child_end.close()
        # What the app prints while it is imported reaches the logs like any worker's output.
        for pipe, stream in ((self._template.stdout, "stdout"), (self._template.stderr, "stderr")):
            assert pipe is not None
            self._watch_template_pipe(pipe.fileno(), stream)
        parent_end.setblocking(False)
        self._control = parent_end
        self._template_state = "starting"
        self._selector.register(parent_end, selectors.EVENT_READ, self._on_control)

    def _on_control(self, mask: int) -> None:
        assert self._control is not None
        while True:
            try:
                packet = self._control.recv(MAX_CONTROL_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                packet = b""
            if not packet:
                self._on_template_died()
                return
            self._handle(None, unpack_packet(packet))

    def _watch_template_pipe(self, fd: int, stream: str) -> None:
        os.set_blocking(fd, False)
        self._selector.register(fd, selectors.EVENT_READ, lambda mask: self._read_template(fd, stream))

    def _read_template(self, fd: int, stream: str) -> None:
        pid = self._template.pid if self._template is not None else None
        lines, eof = self._template_lines.read(fd)
        if eof:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
        for raw in lines:
            self._call(self.on_output, OutputLine(None, pid, stream, raw.decode(errors="replace")))

    def _on_template_died(self) -> None:
        assert self._control is not None and self._template is not None
        self._selector.unregister(self._control)
        self._control.close()
        self._control = None
        try:
            status = self._template.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._template.kill()
            status = self._template.wait()
        was_starting = self._template_state == "starting"
        self._template_state = "none"
        if self._stopping:
            return
        if was_starting and self._load_error is None:
            self._load_error = AppLoadError(f"the app crashed while it was being imported (exit status {status})")
            self._ready.set()
            return
        # Workers are the template's children; without it their deaths cannot be classified.
        for slot in list(self._slots.values()):
            if slot.state != "dead":
                self._kill_slot(slot, signal.SIGKILL)
                self._end_slot(slot, WorkerDied(
                    f"cmworker's worker template process died (exit status {status}), taking this job's "
                    "worker with it", pid=slot.pid))
        self._startup_failed(f"the worker template process died with exit status {status}")

    # -- messages -------------------------------------------------------------------------------

    def _handle(self, slot: _Slot | None, message: Message) -> None:
        """Every message from a worker or the template is dispatched here, by type."""
        if isinstance(message, Result):
            self._on_result(slot, message)
        elif isinstance(message, Failure):
            self._on_failure(slot, message)
        elif isinstance(message, Chunk):
            self._on_chunk(slot, message)
        elif isinstance(message, StreamEnd):
            self._on_stream_end(slot, message)
        elif isinstance(message, Ready):
            self._on_ready(slot, message)
        elif isinstance(message, Retiring):
            self._on_retiring(slot)
        elif isinstance(message, Spawned):
            self._on_spawned(message)
        elif isinstance(message, Exited):
            self._on_exited(message)
        elif isinstance(message, TemplateReady):
            self._on_template_ready(message)
        elif isinstance(message, TemplateFailed):
            self._on_template_failed(message)
        else:
            log.error("unexpected message %r", message)

    def _on_template_ready(self, message: TemplateReady) -> None:
        self._template_state = "ready"
        self.function_info = json.loads(message.functions)
        self.functions = sorted(self.function_info)

    def _on_template_failed(self, message: TemplateFailed) -> None:
        self._load_error = AppLoadError(message.reason)
        self._unhealthy = PoolUnhealthy(f"the app cannot be loaded: {message.reason}")
        self._fail_pending(self._unhealthy.args[0])
        self._ready.set()

    def _on_spawned(self, message: Spawned) -> None:
        slot = self._slots.get(message.slot)
        if slot is not None:
            slot.pid = message.pid
            self._by_pid[message.pid] = slot

    def _on_ready(self, slot: _Slot | None, message: Ready) -> None:
        assert slot is not None
        if slot.pid is None:
            slot.pid = message.pid
            self._by_pid[message.pid] = slot
        if slot.state != "starting":
            return
        self._startup_failures = 0
        self._make_idle(slot)
        if not self._ready.is_set() and len(self._idle) >= self.size:
            self._ready.set()

    def _on_result(self, slot: _Slot | None, message: Result) -> None:
        assert slot is not None
        self._finish(slot, bytes(message.body), "ok", cpu=message.cpu, from_worker=True)
        self._job_done(slot)

    def _on_failure(self, slot: _Slot | None, message: Failure) -> None:
        assert slot is not None
        self._finish(slot, bytes(message.body), message.kind, cpu=message.cpu, from_worker=True)
        self._job_done(slot)

    def _on_chunk(self, slot: _Slot | None, message: Chunk) -> None:
        assert slot is not None
        if slot.job is not None and not slot.answered and self.on_stream is not None:
            slot.streamed = True
            self._call(self.on_stream, StreamItem(slot.job, bytes(message.body)))

    def _on_stream_end(self, slot: _Slot | None, message: StreamEnd) -> None:
        assert slot is not None
        self._finish(slot, b"", "ok", cpu=message.cpu, from_worker=True)
        self._job_done(slot)

    def _on_exited(self, message: Exited) -> None:
        slot = self._by_pid.pop(message.pid, None)
        if slot is None:
            return
        with self._lock:  # an idle worker that died must not be handed a job any more
            if slot in self._idle:
                self._idle.remove(slot)
                slot.state = "exited"
        slot.exit = Exit.from_status(message.pid, message.status, message.max_rss, message.cpu)
        # The worker may have answered just before dying: read what it sent before judging it.
        self._drain(slot)
        if slot.state == "starting":
            self._end_slot(slot, None)
            self._startup_failed(f"a new worker {slot.exit.describe()} before taking a job"
                                 + _last_lines(slot))
            return
        error = None if slot.answered else self._death_error(slot, slot.exit)
        self._end_slot(slot, error)

    # -- dispatch and answers -------------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                if self._idle:
                    slot, job = self._idle.pop(), self._pending.popleft()
                    self._start_job(slot, job)
                else:
                    busy = self._prefetch_slot()
                    if busy is None:
                        return
                    slot, job = busy, self._pending.popleft()
                    slot.next = job
            self._send_run(slot, job)

    def _prefetch_slot(self) -> _Slot | None:
        """With ``prefetch``, a busy worker that may be sent its next job already (caller holds the lock).

        The job waits in the worker's socket and starts the moment the worker has sent its answer to the
        current one, so the worker never waits for the parent between jobs. Its deadline and memory
        watch start then (``_job_done``); if the worker dies or is killed first, it goes back to the
        head of the queue, never having run. A prefetched job can no longer be cancelled.
        """
        if not self.prefetch or self._stopping:
            return None
        recycle = self.max_jobs_per_worker
        for slot in self._slots.values():
            if slot.state == "busy" and slot.next is None and not slot.answered \
                    and (not recycle or slot.jobs_done + 2 <= recycle):
                return slot
        return None

    def _start_job(self, slot: _Slot, job: Job) -> bool:
        """Mark ``slot`` busy with ``job`` and arm its timers (caller holds the lock).

        Returns whether the loop must be woken because a new timer is due before it plans to wake.
        """
        now = self.clock()
        slot.state, slot.job, slot.dispatched_at = "busy", job, now
        slot.answered, slot.streamed, slot.killed_for, slot.peak_rss = False, False, None, 0
        slot.output.start_job()
        lim = job.limits
        earliest = float("inf")
        if lim.timeout:
            timer = self._push_timer(now + lim.timeout, self._on_hard_timeout, (slot, job))
            slot.timers.append(timer)
            earliest = timer.when
        if lim.memory_limit:
            slot.oom_count = processes.oom_kill_count()
            first = min(_SAMPLE_MAX, max(_SAMPLE_MIN, lim.memory_limit / _ASSUMED_GROWTH))
            timer = self._push_timer(now + first, self._sample_memory, (slot, job))
            slot.timers.append(timer)
            earliest = min(earliest, timer.when)
        return earliest < self._planned_wake

    def _send_run(self, slot: _Slot, job: Job) -> bool:
        """Send the job to its worker; True when the loop must finish a partial send."""
        if self.on_start is not None:  # from here on it can no longer be withdrawn
            self._call(self.on_start, job)
        lim = job.limits
        return self._send(slot, Run(job.function, job.body, job.mode, lim.soft_timeout or 0.0,
                                    lim.max_result_size or 0))

    def _finish(self, slot: _Slot, body: bytes, kind: str, error: JobError | None = None,
                cpu: float = 0.0, from_worker: bool = False) -> None:
        """Answer the slot's job — the only place an answer is made, at most once per job.

        The job's output is logged before its answer. An answer the worker sent came in the same batch
        of events as that output, which was read first (``_wait_for_events``): the pipes need reading
        again only when that read may have left some behind.
        """
        job = slot.job
        if job is None or slot.answered:
            return
        slot.answered = True
        if not from_worker or slot.output.unread:
            self._drain_output(slot)
        else:
            self._emit(slot, ())  # only the count of lines the flood limit dropped, if any
        self._cancel_timers(slot.timers)
        slot.timers.clear()
        now = self.clock()
        self._answers.append(Answer(job, body, kind, error, slot.streamed, slot.pid,
                                    queued=slot.dispatched_at - job.submitted, wall=now - slot.dispatched_at,
                                    cpu=cpu, max_rss=slot.peak_rss))

    def _deliver(self) -> None:
        """Hand out the answers made in this turn of the loop — last, just before the loop blocks again.

        Waking a caller's thread and then holding the GIL for the rest of the turn would make it wait;
        done last, the woken thread gets the interpreter as soon as this one sleeps in ``select``.
        """
        while self._answers:
            self._call(self.on_answer, self._answers.popleft())

    def _fail(self, slot: _Slot, error: JobError) -> None:
        self._finish(slot, error.to_bytes(), error.kind, error)

    def _job_done(self, slot: _Slot) -> None:
        """The worker answered and is free again — unless it was being killed, or is due for recycling."""
        if slot.state != "busy":
            return
        slot.jobs_done += 1
        slot.job = None
        if slot.retiring:  # it exits after this answer; a job sent ahead goes back to the queue then
            self._retire(slot)
            return
        if slot.next is not None:  # already in the worker's socket: it is running from now on
            with self._lock:
                job, slot.next = slot.next, None
                self._start_job(slot, job)
            return
        if self.max_jobs_per_worker and slot.jobs_done >= self.max_jobs_per_worker:
            self._retire(slot)
        else:
            self._make_idle(slot)

    def _make_idle(self, slot: _Slot) -> None:
        with self._lock:
            slot.state = "idle"
            self._idle.append(slot)
            self._lock.notify_all()

    def _call(self, callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception:
            log.exception("pool callback %r failed", callback)

    # -- limits ---------------------------------------------------------------------------------

    def _on_hard_timeout(self, slot: _Slot, job: Job) -> None:
        if slot.job is not job or slot.answered:
            return
        timeout = job.limits.timeout or 0.0
        self._fail(slot, JobTimeout(
            f"function {job.function!r} ran past its timeout of {format_duration(timeout)} and was killed",
            timeout_s=timeout, pid=slot.pid))
        self._kill_job(slot, "timeout", signal.SIGTERM)

    def _sample_memory(self, slot: _Slot, job: Job) -> None:
        if slot.job is not job or slot.answered or slot.pid is None:
            return
        limit = job.limits.memory_limit or 0
        tree = processes.job_processes(slot.pid)
        used = sum(processes.rss(p) for p in tree)
        slot.peak_rss = max(slot.peak_rss, used)
        if used > limit:
            self._fail(slot, MemoryLimitExceeded(
                f"function {job.function!r} used {describe_size(used)} of memory, over its limit of "
                f"{format_size(limit)}, and was killed", limit_bytes=limit, rss_bytes=used, pid=slot.pid))
            self._kill_job(slot, "memory", signal.SIGKILL, tree)
            return
        delay = min(_SAMPLE_MAX, max(_SAMPLE_MIN, (limit - used) / _ASSUMED_GROWTH))
        slot.timers.append(self._after(delay, self._sample_memory, slot, job))

    def _kill_job(self, slot: _Slot, reason: str, sig: int, tree: list[int] | None = None) -> None:
        """Kill the job's process group (and stray descendants); escalate to SIGKILL after the grace."""
        slot.killed_for = reason
        slot.state = "killing"
        self._kill_slot(slot, sig, tree)
        if sig != signal.SIGKILL:
            self._after(self.kill_grace, self._escalate, slot)

    def _kill_slot(self, slot: _Slot, sig: int, tree: list[int] | None = None) -> None:
        """Signal the worker and every process of its job, escaped ones included (``job_processes``).

        SIGKILL stops them all first, so that none can fork out of the kill; what outlives the worker
        anyway is re-parented to the template, which kills it.
        """
        if slot.pid is None:
            return
        if sig == signal.SIGKILL:
            processes.kill_job(slot.pid)
            return
        processes.kill_group(slot.pid, sig, processes.job_processes(slot.pid) if tree is None else tree)

    def _on_retiring(self, slot: _Slot | None) -> None:
        """The job left its worker unfit for another: retire it when it answers, and send it nothing."""
        assert slot is not None
        slot.retiring = True

    def _escalate(self, slot: _Slot) -> None:
        if slot.state == "killing":
            self._kill_slot(slot, signal.SIGKILL)

    def _death_error(self, slot: _Slot, exit: Exit) -> JobError:
        """Classify a worker death that nobody answered for (decoded once into ``exit``)."""
        job = slot.job
        name = job.function if job else "?"
        output = "\n".join(slot.output.last)
        details: dict[str, Any] = {"pid": exit.pid, "output": output}
        if exit.signal is not None:
            details["signal"] = exit.signal_name
        else:
            details["exit_code"] = exit.code
        if exit.signal == signal.SIGKILL:
            count = processes.oom_kill_count()
            if count is not None and slot.oom_count is not None and count > slot.oom_count:
                return WorkerDied(
                    f"the worker running function {name!r} was killed by the kernel's out-of-memory killer "
                    "(the container ran out of memory)", likely_oom=True, **details)
        return WorkerDied(f"the worker running function {name!r} {exit.describe()} without answering",
                          **details)

    # -- spawning, retiring, ending -------------------------------------------------------------

    def _maintain(self) -> None:
        """Keep ``size`` live workers, unless stopping, unhealthy or backing off after crashes."""
        if self._stopping or self._unhealthy is not None or self._load_error is not None:
            return
        if self._respawn_timer is not None and not self._respawn_timer.cancelled:
            return
        if self._template_state == "none":
            self._start_template()
            return
        if self._template_state != "ready":
            return
        live = sum(s.state in ("starting", "idle", "busy") for s in self._slots.values())
        for _ in range(self.size - live):
            self._spawn()

    def _spawn(self) -> None:
        assert self._control is not None
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        slot = _Slot(next(self._slot_ids), parent_sock, WorkerOutput(out_r, err_r, self.clock),
                     spawned_at=self.clock())
        self._slots[slot.id] = slot
        try:
            socket.send_fds(self._control, [pack_packet(Spawn(slot.id))],
                            [child_sock.fileno(), out_w, err_w])
        finally:
            child_sock.close()
            os.close(out_w)
            os.close(err_w)
        parent_sock.setblocking(False)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self._selector.register(parent_sock, selectors.EVENT_READ, lambda mask: self._on_socket(slot, mask))
        for fd in (out_r, err_r):
            self._selector.register(fd, selectors.EVENT_READ, lambda mask, fd=fd: self._read_output(slot, fd))

    def _retire(self, slot: _Slot) -> None:
        """Recycle a worker: closing its socket makes it exit; a replacement is spawned at once."""
        slot.state = "retiring"
        self._close_socket(slot)

    def _end_slot(self, slot: _Slot, error: JobError | None) -> None:
        """The worker is gone: answer its job if still owed, release its fds, count a respawn."""
        if error is not None:
            self._fail(slot, error)
        with self._lock:
            if slot.next is not None:  # sent but never started: first in line for another worker
                self._pending.appendleft(slot.next)
                slot.next = None
                self._lock.notify_all()
            if slot in self._idle:
                self._idle.remove(slot)
            was_live = slot.state in ("idle", "busy", "killing", "exited")
        if slot.pid is not None:
            # Whatever the job left behind in its process group goes with it.
            processes.kill_group(slot.pid, signal.SIGKILL)
            self._by_pid.pop(slot.pid, None)
        self._drain(slot)
        self._close_socket(slot)
        self._close_output(slot)
        slot.state = "dead"
        del self._slots[slot.id]
        if was_live and not self._stopping:
            self.respawns += 1

    def _startup_failed(self, reason: str) -> None:
        self._startup_failures += 1
        if self._startup_failures >= _MAX_STARTUP_FAILURES:
            self._unhealthy = PoolUnhealthy(
                f"{self._startup_failures} workers in a row died at start-up, so the pool stopped "
                f"respawning them; the last one: {reason}")
            log.error("%s", self._unhealthy)
            self._call(lambda _: self.on_state_change(), None)
            self._fail_pending(str(self._unhealthy))
            with self._lock:
                self._lock.notify_all()
            self._ready.set()
            return
        delay = min(_RESPAWN_BACKOFF_MAX, 0.05 * 2 ** (self._startup_failures - 1))
        self._respawn_timer = self._after(delay, self._end_backoff)

    def _end_backoff(self) -> None:
        self._respawn_timer = None

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            jobs = list(self._pending)
            self._pending.clear()
        for job in jobs:
            error = WorkerDied(f"no worker could run this job: {reason}")
            self._answers.append(Answer(job, error.to_bytes(), error.kind, error))

    # -- I/O ------------------------------------------------------------------------------------

    def _send(self, slot: _Slot, message: Message) -> bool:
        """Send without blocking; what does not fit waits in the slot's outbox for the loop to flush.

        Returns True when an outbox was started, so the caller wakes the loop (which owns the selector).
        """
        parts = frame(message)
        try:
            sent = slot.sock.sendmsg(parts)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False  # the worker is gone; its Exited message will answer the job
        total = sum(len(p) for p in parts)
        if sent == total:
            return False
        slot.outbox.append(memoryview(b"".join(bytes(p) for p in parts))[sent:])
        return True

    def _watch_outboxes(self) -> None:
        for slot in self._slots.values():
            if slot.outbox and not slot.writing and slot.sock.fileno() >= 0:
                slot.writing = True
                self._selector.modify(slot.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                      lambda mask, slot=slot: self._on_socket(slot, mask))

    def _on_socket(self, slot: _Slot, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush_outbox(slot)
        if mask & selectors.EVENT_READ:
            self._read_socket(slot)

    def _flush_outbox(self, slot: _Slot) -> None:
        while slot.outbox:
            view = slot.outbox[0]
            try:
                sent = slot.sock.send(view)
            except BlockingIOError:
                return
            except OSError:
                slot.outbox.clear()
                break
            if sent < len(view):
                slot.outbox[0] = view[sent:]
                return
            slot.outbox.popleft()
        slot.writing = False
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(slot.sock, selectors.EVENT_READ, lambda mask: self._on_socket(slot, mask))

    def _read_socket(self, slot: _Slot) -> None:
        # One buffer for every read: a fresh 256 KiB allocation per answer cost two page faults each
        # time glibc served it with mmap (measured: 202 -> 164 us per no-op round trip).
        buf = self._read_buffer
        while True:
            try:
                n = slot.sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError:
                n = 0
            if not n:
                # End of stream: the worker exited or closed its end. Its Exited message (from the
                # template) carries the status; stop watching the socket meanwhile.
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(slot.sock)
                return
            # feed() copies what it keeps, so the shared buffer may be reused at once.
            for message in slot.reader.feed(memoryview(buf)[:n]):
                self._handle(slot, message)
            if n < _READ_SIZE:
                return

    def _read_output(self, slot: _Slot, fd: int) -> None:
        lines, eof = slot.output.read(fd)
        if eof:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
        self._emit(slot, lines)

    def _emit(self, slot: _Slot, lines: Iterable[tuple[str, str]]) -> None:
        job = slot.job
        job_id, function = (job.id, job.function) if job else (None, None)
        for stream, text in lines:
            self._call(self.on_output, OutputLine(job_id, slot.pid, stream, text, function))
        dropped = slot.output.take_dropped() if slot.answered or job is None else 0
        if dropped:
            self._call(self.on_output, OutputLine(job_id, slot.pid, "stderr", "", function, dropped=dropped))

    def _drain(self, slot: _Slot) -> None:
        """Read everything a dead worker left in its socket and pipes."""
        if slot.sock.fileno() >= 0:
            self._read_socket(slot)
        self._drain_output(slot)

    def _drain_output(self, slot: _Slot) -> None:
        """Log what is already in a worker's pipes, so a job's lines come before its answer."""
        self._emit(slot, list(slot.output.drain()))

    def _close_output(self, slot: _Slot) -> None:
        for fd in (slot.output.out_fd, slot.output.err_fd):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
        slot.output.close()

    def _close_socket(self, slot: _Slot) -> None:
        if slot.sock.fileno() < 0:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(slot.sock)
        slot.sock.close()

    # -- stopping -------------------------------------------------------------------------------

    def _check_stop(self) -> None:
        if not self._stopping:
            return
        if self._pending:
            with self._lock:
                jobs = list(self._pending)
                self._pending.clear()
            for job in jobs:
                error = ShuttingDown("cmworker is shutting down; this job was never started")
                self._answers.append(Answer(job, error.to_bytes(), error.kind, error))
        if self._stop_deadline is not None and self.clock() >= self._stop_deadline:
            for slot in list(self._slots.values()):
                if slot.state == "busy" and not slot.answered and slot.job is not None:
                    self._fail(slot, ShuttingDown(
                        f"cmworker is shutting down and stopped function {slot.job.function!r} before it "
                        "finished", pid=slot.pid))
                    self._kill_job(slot, "shutdown", signal.SIGKILL)

    def _teardown(self) -> None:
        # Normally every job is answered by now; after a crash of this loop, answer what is still owed.
        with self._lock:
            self._stopping = True
        self._check_stop()
        for slot in list(self._slots.values()):
            if slot.job is not None and not slot.answered:
                self._fail(slot, ShuttingDown("the pool stopped before this job finished", pid=slot.pid))
            if slot.next is not None:
                error = ShuttingDown("cmworker is shutting down; this job was never started")
                self._answers.append(Answer(slot.next, error.to_bytes(), error.kind, error))
                slot.next = None
        for slot in list(self._slots.values()):
            if slot.pid is not None:
                processes.kill_group(slot.pid, signal.SIGKILL)
            self._close_socket(slot)
            self._close_output(slot)
        self._slots.clear()
        if self._control is not None:
            self._control.close()  # the template kills any worker left and exits
            self._control = None
        if self._template is not None:
            try:
                self._template.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._template.kill()
                self._template.wait()
            for pipe in (self._template.stdout, self._template.stderr):
                if pipe is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(pipe.fileno())
                    pipe.close()
        self._deliver()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._closed = True
        with self._lock:
            self._lock.notify_all()
        self._ready.set()
        self._call(lambda _: self.on_state_change(), None)


def _last_lines(slot: _Slot) -> str:
    if not slot.output.last:
        return ""
    return "; its last output:\n" + "\n".join(slot.output.last)

