"""The pool, parent side: workers, deadlines, memory, deaths — and exactly one answer per job.

Data flow::

    submit(job) ─► pending ─► dispatch ──► worker socket ─► worker runs the function
                                                                   │
      on_answer(Answer) ◄─ _finish ◄─ Result / Failure / StreamEnd ◄┘   (Chunk ─► on_stream)
                             ▲
        Exited(pid, status) ─┘  template reaped a worker that never answered: classify, answer, respawn
        timers ──────────────┘  hard timeout / memory over the limit: answer now, kill the group

One thread runs ``_loop``: one ``selector.select`` over the wake-up pipe, the template's control socket,
each worker's socket and pipes, timed by the nearest timer. Nothing polls at a fixed interval. Every job
moves ``pending -> busy -> answered`` once: ``_finish`` alone calls ``on_answer``, and only once per job.

A worker runs user code, which can write to the worker's socket: a frame out of protocol (a kind only the
template sends, an answer for a job it does not run, a bad length or body) ends that worker only, its job
answered ``worker_died`` naming what it sent (``_on_broken``). If the template dies, the jobs running go
on in its orphaned workers, watched through their pidfds, and are answered; those workers then retire and
a new template forks their replacements (``_on_template_died``). Only a death after the template's comes
without a wait status, and its answer says so.

The pieces it drives live beside it, see docs/architecture.md.
"""

from __future__ import annotations

import collections
import json
import logging
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from cmworker.errors import (
    AppLoadError,
    JobError,
    PoolUnhealthy,
    ShuttingDown,
    WorkerDied,
)
from cmworker.pool import processes
from cmworker.pool.crew import Crew
from cmworker.pool.dispatch import Dispatcher, Ticket
from cmworker.pool.enforce import Enforcer
from cmworker.pool.jobs import Answer, Job, OutputLine, StreamItem, print_line
from cmworker.pool.messages import (
    MAX_BODY,
    Chunk,
    Exited,
    Failure,
    Message,
    Ready,
    Result,
    Retiring,
    Run,
    RunLimits,
    Spawned,
    StreamEnd,
    TemplateFailed,
    TemplateReady,
    Usage,
    owned,
)
from cmworker.pool.options import PoolOptions
from cmworker.pool.processes import Exit
from cmworker.pool.slot import Slot as _Slot
from cmworker.pool.timers import Doorbell, Timer, Timers
from cmworker.units import format_duration

__all__ = ["Answer", "Job", "OutputLine", "Pool", "PoolOptions", "StreamItem", "Ticket"]

log = logging.getLogger("cmworker.supervisor")

# Crash-loop breaker: this many fresh workers dying in a row before taking a job stops respawning.
_MAX_STARTUP_FAILURES = 5


class Pool:
    """A pool of pre-forked worker processes that answers every submitted job exactly once.

    ``options`` say what the pool is. ``on_answer`` (and ``on_stream``/``on_output``) run on the pool's
    own thread and must return quickly; ``on_start`` is told when a job is sent to a worker (from then on
    it can no longer be cancelled); ``on_state_change`` when the pool turns unhealthy or closes.
    """

    def __init__(
        self,
        options: PoolOptions,
        *,
        on_answer: Callable[[Answer], None],
        on_stream: Callable[[StreamItem], None] | None = None,
        on_output: Callable[[OutputLine], None] | None = None,
        on_state_change: Callable[[], None] | None = None,
        on_start: Callable[[Job], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.on_answer = on_answer
        self.on_stream = on_stream
        self.on_output = on_output or print_line
        self.on_state_change = on_state_change or (lambda: None)
        self.on_start = on_start
        self.clock = clock
        self.functions: list[str] = []
        self.function_info: dict[str, dict[str, Any]] = {}  # declared limits and schema, by function
        self.respawns = 0
        # Workers may keep the heap a job freed for the next (cmworker.heap): whoever submits knows that no
        # job of this pool has a memory policy the kept heap would count against.
        self.keep_heap = False
        self.turns = 0  # iterations of the loop: lets a test prove an idle pool sleeps

        self._selector = selectors.DefaultSelector()
        self._answers: collections.deque[Answer] = collections.deque()
        self._ready = threading.Event()
        self._bell = Doorbell()
        # One lock for the queue, the idle workers and the timers: a submitting thread may start a job.
        self._lock = threading.Condition()
        self._timers = Timers(self._lock, clock)
        self._after = self._timers.after
        self._crew = Crew(options, self._selector, clock, self._after,
                          on_message=self._on_control_message,
                          on_output=lambda line: self._call(self.on_output, line),
                          on_template_exit=self._on_template_died)
        self._slots = self._crew.slots
        self._enforcer = Enforcer(options, self._timers, self._slots, self._fail)
        self._desk = Dispatcher(options, self._slots, self._lock, clock, arm=self._enforcer.arm,
                                send=self._send_run, wake=self._bell.ring)
        # A free worker promised to a caller with no job yet, spent by ``submit(job, ticket)`` (thread-safe).
        self.reserve, self.release = self._desk.reserve, self._desk.release
        self._unhealthy: PoolUnhealthy | None = None
        self._load_error: AppLoadError | None = None
        self._stop_deadline: float | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- public API (any thread) ------------------------------------------------------------------

    def start(self) -> None:
        """Start the template and the workers; return when every worker is ready.

        Raises ``AppLoadError`` when the app cannot be imported and ``PoolUnhealthy`` when workers die
        at start-up.
        """
        self._selector.register(self._bell.fd, selectors.EVENT_READ, self._bell.answer)
        self._thread = threading.Thread(target=self._loop, name="cmworker-supervisor", daemon=True)
        self._thread.start()
        self._bell.ring()
        timeout = self.options.startup_timeout
        if not self._ready.wait(timeout):
            self.close()
            raise PoolUnhealthy(f"the pool did not become ready within {format_duration(timeout)}")
        error = self._load_error or self._unhealthy
        if error is None and self._closed:
            error = PoolUnhealthy("the pool stopped while it was starting")
        if error is not None:
            self.close()
            raise error

    def submit(self, job: Job, ticket: Ticket | None = None) -> None:
        """Run a job; its answer arrives through ``on_answer``. Thread-safe.

        With a worker idle and nothing queued, the job goes straight to that worker from this thread;
        otherwise it waits in the queue for the next free worker. ``ticket`` (from ``reserve``) is spent.
        """
        if not self._desk.submit(job, ticket):
            error = ShuttingDown("the pool is shutting down and no longer accepts jobs")
            self.on_answer(Answer.failed(job, error))

    def cancel(self, job_id: str) -> bool:
        """Withdraw a job that is still queued; True when it was (it then gets no answer). Thread-safe."""
        return self._desk.cancel(job_id)

    @property
    def available(self) -> int:
        """Workers that are idle and not yet promised to a queued job."""
        return self._desk.available

    @property
    def unhealthy(self) -> PoolUnhealthy | None:
        """Why the pool stopped respawning workers, or ``None`` while it is healthy."""
        return self._unhealthy

    @property
    def template_pid(self) -> int | None:
        """The worker template's pid while it runs (the pool reaps it itself)."""
        return self._crew.template.pid

    def worker_pids(self) -> list[int]:
        return self._crew.pids()

    def reload(self, on_done: Callable[[str | None], None], check: Callable[[str], str | None] | None = None) -> None:
        """Import the app afresh in a new template (any thread; ``crew`` says how). ``on_done(None)`` on the
        pool's thread once new jobs go to its workers, ``on_done(reason)`` if it cannot import the app or
        ``check(functions JSON)`` returns a reason. Until then the old code serves on."""
        def ready(message: TemplateReady) -> None:
            self._on_template_ready(message)
            on_done(None)
        self._after(0.0, self._crew.reload, ready, on_done, self._desk.remove_idle, self._on_worker_gone, check)
        self._bell.ring()

    def pending_timers(self) -> list[Timer]:
        """The timers in the pool's heap now, cancelled ones not yet dropped included."""
        return self._timers.pending()

    def close(self, grace: float = 0.0, wait: bool = True) -> None:
        """Stop: let running jobs finish for up to ``grace`` seconds, then kill them and answer ``shutdown``.

        Calling it again shortens the grace (a second Ctrl-C). With ``wait=False`` it returns at once;
        ``closed`` tells when the pool is done and ``on_state_change`` is called then.
        """
        with self._lock:
            if self._closed:
                return
            self._desk.stopping = True
            self._lock.notify_all()
            deadline = self.clock() + grace
            if self._stop_deadline is None or deadline < self._stop_deadline:
                self._stop_deadline = deadline
        self._bell.ring()
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
            self._maintain()
            while not self._finished():
                self.turns += 1
                self._wait_for_events()
                self._timers.fire_due()
                self._desk.dispatch()
                for slot in self._slots.values():
                    slot.watch_writes()
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
            wake_at = self._timers.next_when
            if self._stop_deadline is not None:
                wake_at = min(wake_at, self._stop_deadline)
            self._desk.planned_wake = wake_at
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
        return self._desk.stopping and not any(s.state == "busy" for s in self._slots.values()) \
            and not self._desk.pending and self._stop_deadline is not None

    # -- the template ---------------------------------------------------------------------------

    def _on_template_died(self, status: int, was_starting: bool) -> None:
        """The template is gone. Its workers live on, re-parented: the jobs they run finish and are
        answered (their deadlines and memory watch still hold); idle ones retire; a new template is
        started for the jobs after. Only a worker that cannot be watched without the template (no pidfd,
        or still starting) is killed, and its job answered ``worker_died``."""
        if self._desk.stopping or self._load_error is not None:  # the latter: TemplateFailed said why
            return
        if was_starting and not self._ready.is_set():  # the pool's first template: the app cannot load
            self._load_error = AppLoadError(f"the app crashed while it was being imported (exit status {status})")
            self._ready.set()
            return
        log.error("the worker template process died (exit status %s); the jobs running go on, and a new "
                  "template is started", status)
        for slot in list(self._slots.values()):
            if not self._crew.watch_orphan(slot, self._on_worker_gone):
                slot.kill(signal.SIGKILL)
                self._end_slot(slot, WorkerDied(
                    f"cmworker's worker template process died (exit status {status}), taking this job's "
                    "worker with it", pid=slot.pid))
            elif self._desk.remove_idle(slot):
                self._crew.retire(slot)
        self._startup_failed(f"the worker template process died with exit status {status}")

    def _on_broken(self, slot: _Slot, what: str) -> None:
        """The worker sent something out of protocol: user code wrote to its socket. End that worker only."""
        log.warning("worker %s broke cmworker's protocol: it sent %s; it is killed", slot.pid, what)
        slot.broke = what
        if slot.state == "starting":  # its death counts toward the crash-loop breaker
            slot.kill(signal.SIGKILL)
            return
        self._desk.remove_idle(slot)
        if slot.job is not None:
            self._fail(slot, WorkerDied(
                f"the worker running function {slot.job.function!r} broke cmworker's protocol and was "
                f"killed: it sent {what}", pid=slot.pid, protocol_error=what, output="\n".join(slot.output.last)))
        self._enforcer.kill_job(slot, "protocol", signal.SIGKILL)

    # -- messages -------------------------------------------------------------------------------

    def _on_worker_message(self, slot: _Slot, message: Message) -> None:
        """A message from a worker, in protocol (``Slot.fault`` has checked it)."""
        if isinstance(message, Result | Failure | StreamEnd):
            self._on_answered(slot, message)
        elif isinstance(message, Chunk):
            self._on_chunk(slot, message)
        elif isinstance(message, Ready):
            slot.announced, slot.announced_pid = True, message.pid
            self._on_started(slot)
        elif isinstance(message, Retiring):  # the job left it unfit for another: its answer is its last
            slot.retiring = True
        elif isinstance(message, Usage):
            self._enforcer.on_usage(slot, message)

    def _on_control_message(self, message: Message) -> None:
        """A message from the template (only its kinds pass ``TemplateLink``)."""
        if isinstance(message, Exited):
            self._on_exited(message)
        elif isinstance(message, Spawned):
            slot = self._crew.spawned(message)
            if slot is not None:
                self._on_started(slot)
        elif isinstance(message, TemplateReady):
            self._on_template_ready(message)
        elif isinstance(message, TemplateFailed):
            self._on_template_failed(message)

    def _on_template_ready(self, message: TemplateReady) -> None:
        self._crew.template.state = "ready"
        self.function_info = json.loads(message.functions)
        self.functions = sorted(self.function_info)

    def _on_template_failed(self, message: TemplateFailed) -> None:
        self._load_error = AppLoadError(message.reason)
        self._unhealthy = PoolUnhealthy(f"the app cannot be loaded: {message.reason}")
        self._fail_pending(self._unhealthy.args[0])
        self._desk.stall()
        self._ready.set()

    def _on_started(self, slot: _Slot) -> None:
        """A new worker is idle once it said Ready and the template told its pid (in either order)."""
        if slot.state != "starting" or not slot.announced or slot.pid is None:
            return
        if slot.announced_pid != slot.pid:  # a Ready forged before the template said whose it was
            self._on_broken(slot, f"a Ready message naming pid {slot.announced_pid}, not its own")
            return
        if self._crew.stale(slot):  # forked by a template a reload replaced meanwhile
            self._crew.retire(slot)
            return
        self._crew.started()
        self._desk.make_idle(slot)
        if not self._ready.is_set() and len(self._desk.idle) >= self.options.workers:
            self._ready.set()

    def _on_answered(self, slot: _Slot, message: Result | Failure | StreamEnd) -> None:
        if slot.dumping is not None:  # past its limit, being killed: a late answer does not count
            return
        body = b"" if isinstance(message, StreamEnd) else owned(message.body)
        kind = message.kind if isinstance(message, Failure) else "ok"
        self._finish(slot, body, kind, cpu=message.cpu, from_worker=True)
        self._job_done(slot)

    def _on_chunk(self, slot: _Slot, message: Chunk) -> None:
        if slot.job is not None and not slot.answered and self.on_stream is not None:
            slot.streamed = True
            self._call(self.on_stream, StreamItem(slot.job, owned(message.body)))

    def _on_exited(self, message: Exited) -> None:
        slot = self._crew.forget(message.pid)
        if slot is not None:
            slot.exit = Exit.from_status(message.pid, message.status, message.max_rss, message.cpu)
            self._on_worker_gone(slot)

    def _on_worker_gone(self, slot: _Slot) -> None:
        """A worker exited: reported by its template with the wait status (``slot.exit``), or seen through
        its pidfd once the template had died (no status then)."""
        if self._desk.remove_idle(slot):  # an idle worker that died must not be handed a job any more
            slot.state = "exited"
        # The worker may have answered just before dying: read what it sent before judging it.
        slot.drain()
        if slot.state == "starting" and slot.exit is not None:
            self._end_slot(slot, None)
            how = f"broke cmworker's protocol (it sent {slot.broke})" if slot.broke else slot.exit.describe()
            self._startup_failed(f"a new worker {how} before taking a job" + slot.last_lines())
            return
        error = None
        if slot.job is not None and not slot.answered:
            error = slot.death_error()
        self._end_slot(slot, error)

    # -- dispatch and answers -------------------------------------------------------------------

    def _send_run(self, slot: _Slot, job: Job) -> bool:
        """Send the job to its worker; True when the loop must finish a partial send."""
        if self.on_start is not None:  # from here on it can no longer be withdrawn
            self._call(self.on_start, job)
        lim = job.limits
        slot.sent += 1
        result_cap = min(lim.max_result_size or MAX_BODY, MAX_BODY)  # a bigger one: result_too_large
        ahead = None
        if lim.timeout or lim.soft_memory_limit or lim.max_worker_memory or lim.memory_limit:  # the worker's too
            ahead = RunLimits(slot.sent, lim.timeout or 0.0, lim.soft_memory_limit or 0, lim.max_worker_memory or 0,
                              lim.memory_limit or 0)
        return slot.send(Run(job.function, job.body, job.mode, lim.soft_timeout or 0.0, result_cap, slot.sent,
                             job.id, self.keep_heap), ahead)

    def _finish(self, slot: _Slot, body: bytes | bytearray, kind: str, error: JobError | None = None,
                cpu: float = 0.0, from_worker: bool = False) -> None:
        """Answer the slot's job — the only place an answer is made, at most once per job. Its output is
        logged first; an answer the worker sent came with that output, read first (``_wait_for_events``)."""
        job = slot.job
        if job is None or slot.answered:
            return
        slot.answered = True
        if not from_worker:
            slot.drain_output()
        else:
            if slot.output.unread:
                slot.drain_output()
            # A stack the job dumped itself and lived on (faulthandler.dump_traceback) is its output after
            # all; and the count of lines the flood limit dropped, if any.
            slot.emit(slot.output.release_stack())
        self._timers.cancel(slot.timers)
        slot.timers.clear()
        now = self.clock()
        self._answers.append(Answer(job, body, kind, error, slot.streamed, slot.pid,
                                    queued=slot.dispatched_at - job.submitted, wall=now - slot.dispatched_at,
                                    cpu=cpu, max_rss=slot.peak_rss))

    def _deliver(self) -> None:
        """Hand out the answers made in this turn of the loop, last: a caller's thread woken earlier would wait
        for the GIL the rest of the turn; now it gets the interpreter as this one sleeps in ``select``."""
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
        if slot.retiring:  # it exits after this answer; a job sent ahead to it goes back to the queue then
            self._crew.retire(slot)
            return
        if self._desk.start_next(slot):  # already in the worker's socket: it is running from now on
            slot.retiring = self._crew.stale(slot)  # sent ahead before a reload: the last on the old code
            return
        recycle = self.options.max_jobs_per_worker
        if slot.orphan or self._crew.stale(slot) or (recycle and slot.jobs_done >= recycle):
            self._crew.retire(slot)
        else:
            self._desk.make_idle(slot)

    def _call(self, callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception:
            log.exception("pool callback %r failed", callback)

    # -- spawning, retiring, ending -------------------------------------------------------------

    def _maintain(self) -> None:
        """Keep ``size`` live workers, unless stopping or unhealthy."""
        if self._desk.stopping or self._unhealthy is not None or self._load_error is not None:
            return
        self._crew.maintain(self._on_worker_message, self._on_broken, lambda line: self._call(self.on_output, line))

    def _end_slot(self, slot: _Slot, error: JobError | None) -> None:
        """The worker is gone: answer its job if still owed, release its fds, count a respawn."""
        if error is not None:
            self._fail(slot, error)
        self._desk.requeue_next(slot)  # sent but never started: first in line for another worker
        self._desk.remove_idle(slot)
        was_live = slot.state in ("idle", "busy", "killing", "exited")
        if slot.pid is not None:
            # Whatever the job left behind in its process group goes with it.
            processes.kill_group(slot.pid, signal.SIGKILL)
        slot.drain()
        self._crew.release(slot)
        if was_live and not self._desk.stopping:
            self.respawns += 1

    def _startup_failed(self, reason: str) -> None:
        if not self._crew.startup_failed(_MAX_STARTUP_FAILURES):
            return
        self._unhealthy = PoolUnhealthy(
            f"{self._crew.startup_failures} workers in a row died at start-up, so the pool stopped "
            f"respawning them; the last one: {reason}")
        log.error("%s", self._unhealthy)
        self._call(lambda _: self.on_state_change(), None)
        self._fail_pending(str(self._unhealthy))
        self._desk.stall()
        self._ready.set()

    def _fail_pending(self, reason: str) -> None:
        for job in self._desk.take_pending():
            error = WorkerDied(f"no worker could run this job: {reason}")
            self._answers.append(Answer.failed(job, error))

    # -- stopping -------------------------------------------------------------------------------

    def _check_stop(self) -> None:
        if not self._desk.stopping:
            return
        for job in self._desk.take_pending():
            error = ShuttingDown("cmworker is shutting down; this job was never started")
            self._answers.append(Answer.failed(job, error))
        if self._stop_deadline is not None and self.clock() >= self._stop_deadline:
            for slot in list(self._slots.values()):
                if slot.state == "busy" and not slot.answered and slot.job is not None:
                    self._fail(slot, ShuttingDown(
                        f"cmworker is shutting down and stopped function {slot.job.function!r} before it "
                        "finished", pid=slot.pid))
                    self._enforcer.kill_job(slot, "shutdown", signal.SIGKILL)

    def _teardown(self) -> None:
        # Normally every job is answered by now; after a crash of this loop, answer what is still owed.
        self._desk.stop()
        self._check_stop()
        for slot in list(self._slots.values()):
            if slot.job is not None and not slot.answered:
                self._fail(slot, slot.death_error() if slot.dumping else
                           ShuttingDown("the pool stopped before this job finished", pid=slot.pid))
            if slot.next is not None:
                error = ShuttingDown("cmworker is shutting down; this job was never started")
                self._answers.append(Answer.failed(slot.next, error))
                slot.next = None
        self._crew.close()
        self._deliver()
        self._selector.close()
        self._bell.close()
        self._closed = True
        with self._lock:
            self._lock.notify_all()
        self._ready.set()
        self._call(lambda _: self.on_state_change(), None)

