"""Serve compute-module jobs: the parent process's threads and its lifecycle.

What a GET body asks for is decided in ``cmworker.replica.intake``, the jobs held are kept in
``cmworker.replica.ledger``, the start-up exchange is ``cmworker.replica.announce``, and what jobs write
is re-emitted by ``cmworker.replica.job_output``. Threads of the parent process and what each owns::

    main       signals (handlers only record them), start-up, shutdown, reaping orphans as PID 1
    poll-N     GET job, each only with a worker promised to it (``Pool.reserve``): the first posts the
               schemas and the restart notification, then starts the others, if ``pollers`` says so
    pool       the supervisor loop (cmworker.pool.supervisor): workers, deadlines, memory, deaths; it
               hands answers and output on through the Poller's callbacks
    post-N     POST results/{jobId}, retried with backoff until the runtime has it
    stream-ID  one chunked POST per streaming job, fed item by item as the worker yields
    log        renders and writes the job_finished lines, in batches, 50 ms after the first (logs.FixedLine)

Admission: a job is asked for only when a worker is free to start it at once, so no job ever waits in
the replica for a worker. A worker is free once its answer is in the parent, while that answer may still
be on its way to the runtime: the next GET goes out beside the POST, each on its own keep-alive
connection, and the runtime then holds at most ``workers`` running jobs plus the answers being posted
(a runtime that caps a replica at ``MAX_CONCURRENT_TASKS`` holds that GET until the POST lands). As a
backstop against a runtime that takes answers slowly or not at all, no more than ``2 * workers`` jobs
are ever held.

Every job a poll thread accepts enters the ``Ledger`` and leaves it only when its one answer has
been posted (or the runtime said it no longer knows the job). A job is never held twice and never
answered twice: the pool answers each job exactly once, and a POST retried after a lost reply is
recognised by the runtime's ``409`` as already delivered.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from cmworker import heap, logs
from cmworker.config import Config
from cmworker.errors import CmworkerError, JobError, ResultTooLarge, RuntimeUnavailable
from cmworker.limits import JobLimits
from cmworker.pool.processes import forbid_tracing
from cmworker.pool.supervisor import Answer, Job, Pool, PoolOptions, StreamItem, Ticket
from cmworker.replica.announce import announce
from cmworker.replica.intake import Immediate, Refused, SecretFiles, parse_job
from cmworker.replica.job_output import OutputRelay
from cmworker.replica.ledger import Held, Ledger, Outgoing
from cmworker.replica.service import Connection, EmptyPolls, Reply, Service, TransportError, backoff
from cmworker.units import describe_size, human_duration

log = logging.getLogger("cmworker.poller")
events = logs.get_logger("cmworker.poller")

_END = object()   # closes a stream's item queue


def _where(answer: Answer) -> dict[str, str]:
    """Where a killed or crashed job was, for its job_finished line: the frame, and the stack (SLS
    ``stacktrace``). Absent otherwise, so that the ordinary line keeps its fast path (logs.FixedLine)."""
    if answer.error is None or answer.stack is None:
        return {}
    return {"where": answer.where, "stack": answer.stack} if answer.where else {"stack": answer.stack}


def _constant(body: bytes | bytearray) -> Callable[[], bytes | bytearray]:
    return lambda: body


def _unobserved(step: str, job_id: str) -> None:
    pass


# Threads that GET jobs and that POST answers, each with its own connection, at most this many of each
# and never more than the workers (but two posters at least: one retrying an answer sleeps out its
# backoff, the other keeps the rest flowing meanwhile). One poll thread, one GET at a time: measured with
# 2, 8 and 32 workers of 20 ms sleeps and a capping runtime, which holds a GET until the answer before it
# lands, so GETs in flight at once shorten nothing that matters and cost the parent's one interpreter.
# Four poll threads: 2.7-3.4 against 2.1-2.2 ms median hand-off at 32 workers; one thread with a GET in
# flight per free worker: 3.0-3.2 against 2.1-2.3 ms (docs/benchmarks.md, "GETs of different workers at
# once").
MAX_POLLERS = 1
MAX_POSTERS = 4


def pollers(workers: int) -> int:
    return max(1, min(workers, MAX_POLLERS))


def posters(workers: int) -> int:
    return max(2, min(workers, MAX_POSTERS))

# Told of each step of a job's way through the parent, as observer(step, job_id), for tracing it
# (scripts/trace_handoff.py): "get_start"/"get_end" around a GET job (job id "": not known yet), "submit"
# as a job goes to the pool, "answer" as its answer comes back, "post_start"/"post_end" around its POST.
Observer = Callable[[str, str], None]


class Poller:
    """Runs one replica: the pool, the poll loop and the posters, until a signal or a fatal error."""

    def __init__(self, config: Config, service: Service, observer: Observer | None = None) -> None:
        self.config = config
        self._observe: Observer = observer or _unobserved
        self.service = service
        self.ledger = Ledger()
        config.require_app()  # a replica serves an app: without one, a ConfigError saying so, now
        heap.return_big_buffers()
        self.pool = Pool(PoolOptions.from_config(config), on_answer=self._on_answer, on_stream=self._on_stream,
                         on_output=OutputRelay(), on_state_change=self._poke)
        self.outcomes: collections.Counter[str] = collections.Counter()
        # A concrete logger, bound once with the configuration in force now: resolving a lazy logger on
        # every call cost ~8 us of the ~50 us a log line takes, on the path of every job.
        self._events = events.bind()
        self._finished_line = logs.FixedLine(self._events, "cmworker.poller", "job_finished")
        self._next_stats = float("inf")
        logs.add_secret(service.endpoints.token)
        logs.add_secret(os.environ.get("CLIENT_SECRET"))
        # The sources' credentials are secrets, read again whenever their file changes: the platform may
        # write it after start-up, and jobs read it when they find it.
        self._sources = SecretFiles(os.environ, logs.add_secret)
        self._sources.refresh()
        self._stopping = threading.Event()
        self._fatal: BaseException | None = None
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._threads: list[threading.Thread] = []
        self._pollers: list[threading.Thread] = []
        self._asking = 0  # poll threads between taking a ticket and having acted on their GET's reply
        self._asked = threading.Condition()
        # One keep-alive connection kept for the next streaming job: a new TLS connection costs ~3.5 ms
        # here, which a stream's first item would otherwise wait for. Streams that run at once beside it
        # connect anew and close after; keeping one only, the parent's open files never grow with streams.
        self._spare_connection: Connection | None = None
        self._spare_lock = threading.Lock()
        self._limits: dict[str, JobLimits] = {}  # by function; all filled in by run() before any poll thread
        self.exit_code = 0

    # -- lifecycle (main thread) ----------------------------------------------------------------

    def run(self) -> int:
        forbid_tracing()  # this process holds every job's credentials, and jobs run as its user
        self._install_signals()
        if self.config.stats_interval:
            self._next_stats = time.monotonic() + self.config.stats_interval
        self.pool.start()
        try:
            self.config.check_functions(self.pool.functions)
            for name in self.pool.functions:  # limits that cannot hold fail here, naming the function,
                self._limits_of(name)         # not later on a job the replica then cannot answer
            self._decide_heap()
        except BaseException:
            self.pool.close()
            raise
        for i in range(posters(self.config.workers)):
            self._thread(self._post_loop, f"cmworker-post-{i}")
        self._pollers.append(self._thread(self._first_poll_loop, "cmworker-poll-0"))
        while not self._stopping.is_set():
            self._wait_main()
            self._handle_signals()
            if self._fatal is not None or self.pool.unhealthy is not None:
                break
        self._drain(self.config.shutdown_grace)
        if self._fatal is not None:
            log.error("stopping: %s", self._fatal)
            return 1
        if self.pool.unhealthy is not None:  # the crash-loop breaker: a failed container, not a clean stop
            log.error("stopping: %s", self.pool.unhealthy)
            return 1
        return self.exit_code

    def _log_stats(self) -> None:
        assert self.config.stats_interval
        self._next_stats = time.monotonic() + self.config.stats_interval
        self._events.info("stats", jobs_by_outcome=dict(self.outcomes), jobs=sum(self.outcomes.values()),
                    workers_alive=len(self.pool.worker_pids()), respawns=self.pool.respawns,
                    held=len(self.ledger), parent_rss_bytes=psutil.Process().memory_info().rss,
                    interval_s=self.config.stats_interval)

    def stop(self) -> None:
        """Ask the replica to drain and exit (what SIGTERM does). Any thread."""
        self._stopping.set()
        self._poke()

    def reloaded(self) -> None:
        """The pool serves a reloaded app (``cmworker dev``): each function's limits are worked out anew."""
        self._limits = {}
        self._decide_heap()

    def _decide_heap(self) -> None:
        """Workers keep the heap a big job freed for the next job (``cmworker.heap``) only when no function
        has a memory policy: a job's memory must not count what an earlier job left."""
        try:
            policies = [self._limits_of(name) for name in self.pool.functions]
        except CmworkerError:  # limits that cannot hold (said where they are checked): keep nothing
            self.pool.keep_heap = False
            return
        self.pool.keep_heap = not any(lim.memory_limit or lim.soft_memory_limit or lim.max_worker_memory
                                      for lim in policies)

    @property
    def stopping(self) -> bool:
        """Whether the replica is draining: no job is asked for any more. Any thread."""
        return self._stopping.is_set()

    def _drain(self, grace: float) -> None:
        """Stop polling, let running jobs finish within ``grace``, answer the rest, flush every POST.

        The main loop keeps handling signals meanwhile, so a second one cuts the grace short.
        """
        self._stopping.set()
        self.pool.close(grace=grace, wait=False)
        while not self.pool.closed:
            self._wait_main()
            self._handle_signals()
        # A GET under way may still bring a job: it is answered `shutdown`, and must be in the ledger
        # before the wait for an empty ledger starts. The runtime holds a GET ~5 s at most.
        with self._asked:
            self._asked.wait_for(lambda: not self._asking, timeout=max(self.config.shutdown_grace, 6.0))
        if not self.ledger.wait_empty(timeout=max(self.config.shutdown_grace, 5.0)):
            log.error("%d job(s) could not be answered before exit", len(self.ledger))
        self.ledger.close_outbox()
        for thread in self._threads:
            thread.join(timeout=5)
        logs.flush_deferred()  # the last job_finished lines, before the exit line
        with self._spare_lock:
            spare, self._spare_connection = self._spare_connection, None
        if spare is not None:
            spare.close()

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                log.exception("%s failed", threading.current_thread().name)
                self._fatal = exc
                self._poke()
        return run

    # -- signals: handlers only record; the main loop acts ---------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.set_wakeup_fd(self._wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _wait_main(self) -> None:
        """Sleep until a signal, a poke from another thread (fatal error, pool state change), or stats time."""
        timeout = None
        if self._next_stats != float("inf"):
            timeout = max(0.0, self._next_stats - time.monotonic())
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_r], [], [], timeout)
        if time.monotonic() >= self._next_stats:
            self._log_stats()
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name.lower()
            getattr(self, f"handle_{name}", lambda: None)()

    def handle_sigterm(self) -> None:
        if self._stopping.is_set():  # a second signal: stop now, still answering what we can
            log.warning("stopping now: killing running jobs and answering them `shutdown`")
            self.pool.close(grace=0.0, wait=False)
            return
        self._stopping.set()  # first: once the line below is out, no job is started any more
        running = self.ledger.running()  # not counting answers only being posted: those are done
        if running:
            log.warning("stopping: finishing running jobs (%d) for up to %s; a second Ctrl-C or SIGTERM stops "
                        "them now", running, human_duration(self.config.shutdown_grace))
        else:
            log.warning("stopping: no job is running")

    handle_sigint = handle_sighup = handle_sigterm

    def handle_sigchld(self) -> None:
        """As PID 1, orphans are re-parented to us: reap them so they do not pile up as zombies.

        Every child but the worker template: the pool waits for that one itself, and must read its real
        exit status (a ``waitpid(-1)`` here could take it first and leave the pool a made-up 0).
        """
        if os.getpid() != 1:
            return
        template = self.pool.template_pid
        for child in psutil.Process().children():
            if child.pid != template:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(child.pid, os.WNOHANG)

    # -- the poll loops (poll threads) -----------------------------------------------------------

    def _first_poll_loop(self) -> None:
        """Announce the replica (schemas, restart notification), then poll beside the other poll threads."""
        conn = self.service.connection()
        try:
            schemas = [i["schema"] for i in self.pool.function_info.values() if i.get("schema") is not None]
            announce(self.service, conn, schemas, self._stopping, self._thread)
            with self._spare_lock:  # connected already: the first stream's POST goes out at once
                self._spare_connection, conn = conn, self.service.connection()
        except BaseException:
            conn.close()
            raise
        for i in range(1, pollers(self.config.workers)):
            self._pollers.append(self._thread(self._poll_loop, f"cmworker-poll-{i}"))
        self._poll_loop(conn)

    def _poll_loop(self, conn: Connection | None = None) -> None:
        """GET jobs, each only once the pool has promised a free worker to it."""
        conn = conn or self.service.connection()
        failures = 0
        empty = EmptyPolls()
        hold_limit = 2 * self.config.workers
        try:
            while not self._stopping.is_set():
                if not self.ledger.wait_below(hold_limit, timeout=0.5):
                    continue
                started = time.monotonic()
                with self._asking_for_a_job():
                    ticket = self.pool.reserve(timeout=0.5)
                    if ticket is None:
                        continue
                    try:
                        self._observe("get_start", "")
                        reply = self.service.get_job(conn)
                        self._observe("get_end", "")
                    except TransportError as exc:
                        self.pool.release(ticket)
                        failures += 1
                        (log.warning if failures < 5 else log.error)("GET job failed (%s); retrying", exc)
                        self._stopping.wait(backoff(failures))
                        continue
                    try:
                        failures = 0 if reply.status < 300 else failures + 1
                        brought = self._on_get(reply, failures, ticket)
                    finally:
                        self.pool.release(ticket)  # unless the job it brought spent it
                    del reply  # not held through the next long poll: a big job's body is the job's only
                pause = empty.pause(time.monotonic() - started, brought)
                if pause:
                    self._stopping.wait(pause)
        finally:
            conn.close()

    @contextlib.contextmanager
    def _asking_for_a_job(self) -> Iterator[None]:
        """Counts the poll threads that may still take a job: the drain waits for them (and only them)."""
        with self._asked:
            self._asking += 1
        try:
            yield
        finally:
            with self._asked:
                self._asking -= 1
                self._asked.notify_all()

    def _on_get(self, reply: Reply, failures: int, ticket: Ticket) -> bool:
        """Act on one GET job reply; True when it brought a job."""
        if reply.status == 204:
            return False
        if reply.status in (401, 403):
            raise RuntimeUnavailable(f"the runtime rejected the module auth token (HTTP {reply.status}): "
                                     f"check {self.service.endpoints.token_source}")
        if reply.status != 200:
            log.error("GET job answered HTTP %s: %r", reply.status, logs.excerpt(reply.body, 300))
            self._stopping.wait(backoff(failures))
            return False
        return self._take(reply.body, ticket)

    def _take(self, body: bytes, ticket: Ticket) -> bool:
        """Act on what the intake decided for one GET body: hold the job, then run it or answer it now.
        False when the body named no job."""
        self._sources.refresh()  # before the job can read them (two poll threads at once: twice, harmlessly)
        intake = parse_job(body, self.pool.functions, self.ledger, self._stopping.is_set())
        for secret in intake.secrets:  # kept after the answer: the job's code may print them later
            logs.add_job_secret(secret)
        if isinstance(intake, Refused):
            log.error("%s", intake.problem)
            return intake.duplicate
        if self.ledger.accept(intake.job_id, intake.function) is None:
            return True  # never: parse_job found it not held, and no thread but this one adds jobs
        if isinstance(intake, Immediate):
            self._answer_now(intake.job_id, intake.error, intake.function)
            return True
        job = Job(intake.job_id, intake.function, body, self._limits_of(intake.function))
        self._observe("submit", job.id)
        self.pool.submit(job, ticket)
        return True

    def _limits_of(self, function: str) -> JobLimits:
        """Worked out once per function, as the configuration does not change, from the limits it declared
        as the template reported them: the parent never imports the app."""
        limits = self._limits.get(function)
        if limits is None:
            limits = self._limits[function] = self.config.limits_for(function, self.pool.function_info.get(function))
        return limits

    def _answer_now(self, job_id: str, error: JobError, function: str = "") -> None:
        self.outcomes[error.kind] += 1
        named = {"function": function} if function else {}  # "": the body named none that could be read
        self._events.warning("job_finished", job_id=job_id, **named, kind=error.kind,
                             result_bytes=len(error.to_bytes()))
        self.ledger.queue_answer(Outgoing(job_id, error.to_bytes(), None))

    # -- answers (pool thread -> posters) -------------------------------------------------------

    def _on_answer(self, answer: Answer) -> None:
        """Runs on the pool's loop: hand the answer on and return; rendering the log line is the poster's job."""
        self._observe("answer", answer.job.id)
        self.outcomes[answer.kind] += 1
        held = self.ledger.get(answer.job.id)
        if held is not None and held.stream is not None:
            held.answered = True
            self._log_finished(answer)  # a streaming job's POST thread is busy with the chunks
            if answer.body:
                held.stream.put(answer.body)
            held.stream.put(_END)
            return
        self.ledger.queue_answer(Outgoing(answer.job.id, answer.body, answer))

    def _log_finished(self, answer: Answer) -> None:
        """The one canonical line per job."""
        job = answer.job
        self._finished_line(
            "info" if answer.kind == "ok" else "warning", job_id=job.id, function=job.function, kind=answer.kind,
            worker_pid=answer.pid, queued_s=round(answer.queued, 6), wall_s=round(answer.wall, 6),
            cpu_s=round(answer.cpu, 6), peak_rss_bytes=answer.max_rss or None, result_bytes=len(answer.body),
            **_where(answer))

    def _on_stream(self, item: StreamItem) -> None:
        held = self.ledger.get(item.job.id)
        if held is None:
            return
        if held.stream is None:
            held.stream = queue.SimpleQueue()
            self._thread(lambda: self._post_stream(held), f"cmworker-stream-{held.job_id}")
        held.stream.put(item.data)

    def _post_loop(self) -> None:
        conn = self.service.connection()
        try:
            while (outgoing := self.ledger.next_answer()) is not None:
                replaced = self._post(conn, outgoing.job_id, _constant(outgoing.body), outgoing.attempts)
                if outgoing.answer is not None:  # after the POST: the runtime has the answer, and sooner
                    self._log_finished(dataclasses.replace(outgoing.answer, kind="result_too_large") if replaced
                                       else outgoing.answer)
                del outgoing  # not held while waiting for the next: a big answer is freed once posted
        finally:
            conn.close()

    def _post_stream(self, held: Held) -> None:
        """One chunked POST fed as items arrive; the items are kept so a failed POST can be replayed."""
        assert held.stream is not None
        sent: list[bytes] = []
        finished = False

        def chunks() -> Iterator[bytes]:
            nonlocal finished
            yield from sent
            while not finished:
                item = held.stream.get()  # type: ignore[union-attr]
                if item is _END:
                    finished = True
                    return
                sent.append(item)
                yield item

        with self._spare_lock:
            conn, self._spare_connection = self._spare_connection or self.service.connection(), None
        try:
            self._post(conn, held.job_id, chunks)
        except BaseException:
            conn.close()
            raise
        with self._spare_lock:
            if self._spare_connection is None and not self._stopping.is_set():
                self._spare_connection = conn
                return
        conn.close()

    def _post(self, conn: Connection, job_id: str, body: Callable[[], Any], attempt: int = 0) -> bool:
        """POST one answer until the runtime has it; then the job leaves the ledger. An answer whose
        earlier attempt failed (on the poll thread) waits its back-off first. True when the runtime took
        a ``result_too_large`` error in its place."""
        if attempt:
            time.sleep(backoff(min(attempt, 10)))
        replaced = False
        while (done := self._attempt_post(conn, job_id, body(), replaced)) is not True:
            if done is not False:  # refused as too large: the job gets the small answer that says so
                body, replaced = _constant(done), True
                continue
            attempt += 1
            time.sleep(backoff(min(attempt, 10)))
        self.ledger.release(job_id)
        return replaced

    def _attempt_post(self, conn: Connection, job_id: str, body: bytes | Iterator[bytes],
                      replaced: bool = False) -> bool | bytes:
        """One POST of an answer: True when that is the end of it, False when it must be tried again, and
        the answer to post instead when the runtime refused this one as too large (unless ``replaced``)."""
        try:
            self._observe("post_start", job_id)
            reply = self.service.post_result(conn, job_id, body)
            self._observe("post_end", job_id)
        except TransportError as exc:
            log.warning("POST result of job %s failed (%s); retrying", job_id, exc)
            return False
        if reply.status < 300 or reply.status == 409:
            return True  # 409: an earlier attempt did reach the runtime; the job is answered exactly once.
        if reply.status == 413 and not replaced:
            # The runtime takes smaller answers than this replica allows (max_result_size): given up, the
            # job, accepted, had no answer at all, and its caller waited for one.
            log.error("the runtime refused the answer to job %s as too large (HTTP 413): %r; answering it "
                      "with an error saying so", job_id, logs.excerpt(reply.body, 300))
            size = len(body) if isinstance(body, bytes | bytearray) else None  # None: a stream's
            what = "the streamed result" if size is None else f"the result of {describe_size(size)}"
            return ResultTooLarge(f"the runtime refused {what} as too large (HTTP 413): lower max_result_size "
                                  "to what the runtime takes", size_bytes=size).to_bytes()
        if 400 <= reply.status < 500:
            log.error("the runtime refused the answer to job %s with HTTP %s: %r; giving up",
                      job_id, reply.status, logs.excerpt(reply.body, 300))
            return True
        log.warning("POST result of job %s: HTTP %s; retrying", job_id, reply.status)
        return False
