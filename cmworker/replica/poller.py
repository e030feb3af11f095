"""Serve compute-module jobs: admission, the job ledger, posting answers, and the process lifecycle.

Threads of the parent process and what each owns::

    main       signals (handlers only record them), start-up, shutdown, reaping orphans as PID 1
    poll       GET job, only while a worker is free and fewer than ``workers`` jobs are held; while it
               waits for that, it posts the answer that frees a place (one attempt), then asks again
    pool       the supervisor loop (cmworker.supervisor): workers, deadlines, memory, deaths
    post-N     POST results/{jobId} for the answers the poll thread does not take, retried with backoff
               until the runtime has it
    stream-ID  one chunked POST per streaming job, fed item by item as the worker yields
    log        renders and writes the job_finished lines, in batches, 50 ms after the first (logs.FixedLine)

Every job the poll thread accepts enters the ``Ledger`` and leaves it only when its one answer has
been posted (or the runtime said it no longer knows the job). A job is never held twice and never
answered twice: the pool answers each job exactly once, and a POST retried after a lost reply is
recognised by the runtime's ``409`` as already delivered.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import re
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from cmworker import logs
from cmworker.app.registry import FunctionSpec
from cmworker.errors import InvalidInput, JobError, RuntimeUnavailable, ShuttingDown, UnknownFunction
from cmworker.limits import JobLimits
from cmworker.pool.supervisor import Answer, Job, OutputLine, Pool, PoolOptions, StreamItem
from cmworker.replica.service import Connection, Reply, Service, TransportError, backoff

log = logging.getLogger("cmworker.poller")
events = logs.get_logger("cmworker.poller")
job_output = logs.get_logger("cmworker.job")
_SLS_PREFIX = '{"type": "service.1"'
_PY_METHOD = {"TRACE": "debug", "DEBUG": "debug", "INFO": "info", "WARN": "warning", "ERROR": "error",
              "FATAL": "critical"}

_END = object()   # closes a stream's item queue
# The job id of a body that json cannot parse: the first "jobId" key with a plain string value.
_JOB_ID = re.compile(rb'"jobId"\s*:\s*"([^"\\]{1,200})"')


def _source_secrets(environ: Mapping[str, str]) -> list[str]:
    """Every string in the sources' credentials file: none of them may reach a log line."""
    from cmworker.app.context import SOURCE_CREDENTIALS_ENV

    path = environ.get(SOURCE_CREDENTIALS_ENV)
    try:
        with open(path or "", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    found: list[str] = []
    todo: list[Any] = [data]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, str):
            found.append(item)
    return found


def _constant(body: bytes) -> Callable[[], bytes]:
    return lambda: body


def _not_run_here(*args: Any) -> None:
    raise RuntimeError("the parent process never runs user code")


@dataclass(eq=False)
class _Held:
    job_id: str
    function: str
    accepted: float
    stream: queue.SimpleQueue[Any] | None = None
    secrets: list[str] = field(default_factory=list)  # its credentials, redacted until it is answered


@dataclass(eq=False)
class _Outgoing:
    """One answer waiting for its POST."""

    job_id: str
    body: bytes
    answer: Answer | None  # None for answers made here (bad input, shutting down): nothing more to log
    attempts: int = 0


class Ledger:
    """The jobs this replica holds (accepted from the runtime, not yet answered to it), and the answers
    waiting for their POST.

    Both live under one lock because the poll thread waits for either: a free place to take a job, or an
    answer to post. When every worker is busy the next place frees up only once an answer is posted, so
    the poll thread posts it itself and asks for the next job straight after, on the same connection: no
    thread stands between the POST and the GET. The posters take every other answer, and all of them
    while the poll thread is inside a GET or a POST.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, _Held] = {}
        # One lock, three waits, so that a change wakes only the thread it concerns: an answer wakes the
        # poll thread or one poster, not every waiting thread (each needless wake-up costs the free CPU
        # of a hand-off some tens of microseconds, and the GIL a turn).
        self._lock = threading.Lock()
        self._poll = threading.Condition(self._lock)      # the poll thread, in poll_turn
        self._posters = threading.Condition(self._lock)   # the posters, in next_answer
        self._changed = threading.Condition(self._lock)   # wait_below: a job left the ledger
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._poll_waiting = False
        self._closed = False
        self.posted = 0

    def accept(self, job_id: str, function: str) -> _Held | None:
        """Record a job; ``None`` when it is already held (the runtime handed it out twice)."""
        with self._lock:
            if job_id in self._jobs:
                return None
            held = self._jobs[job_id] = _Held(job_id, function, time.monotonic())
            return held

    def get(self, job_id: str) -> _Held | None:
        with self._lock:
            return self._jobs.get(job_id)

    def release(self, job_id: str) -> None:
        with self._lock:
            held = self._jobs.pop(job_id, None)
            self.posted += 1
            self._poll.notify()
            self._changed.notify_all()
        if held is not None:
            for secret in held.secrets:
                logs.remove_secret(secret)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def wait_below(self, limit: int, timeout: float) -> bool:
        with self._lock:
            return self._changed.wait_for(lambda: len(self._jobs) < limit, timeout)

    def wait_empty(self, timeout: float) -> bool:
        return self.wait_below(1, timeout)

    # -- the outbox ---------------------------------------------------------------------------

    def queue_answer(self, outgoing: _Outgoing) -> None:
        with self._lock:
            self._outbox.append(outgoing)
            self._hand_on()

    def _hand_on(self) -> None:
        """Wake the one thread whose turn the head of the outbox is (caller holds the lock)."""
        if not self._outbox:
            return
        if self._poll_waiting and not self._outbox[0].attempts:
            self._poll.notify()
        else:
            self._posters.notify()

    def poll_turn(self, limit: int, timeout: float) -> _Outgoing | bool:
        """The poll thread's wait: True when fewer than ``limit`` jobs are held (it may ask for one), else
        an answer to post when one is waiting (first attempts only; retries are the posters' business),
        False after ``timeout``."""
        def ready() -> bool:
            return len(self._jobs) < limit or bool(self._outbox and not self._outbox[0].attempts)

        with self._lock:
            self._poll_waiting = True
            try:
                self._poll.wait_for(ready, timeout)
                if len(self._jobs) < limit:
                    return True
                if self._outbox and not self._outbox[0].attempts:
                    return self._outbox.popleft()
                return False
            finally:
                self._poll_waiting = False
                self._hand_on()  # what is left is the posters'

    def next_answer(self) -> _Outgoing | None:
        """A poster's wait: the next answer the poll thread is not waiting to take; None once closed."""
        def ready() -> bool:
            return self._closed or bool(self._outbox and (not self._poll_waiting or self._outbox[0].attempts))

        with self._lock:
            self._posters.wait_for(ready)
            outgoing = self._outbox.popleft() if self._outbox else None
            self._hand_on()  # more waiting: the next poster's turn, or the poll thread's
            return outgoing

    def close_outbox(self) -> None:
        """Let the posters go once the outbox is empty."""
        with self._lock:
            self._closed = True
            self._posters.notify_all()


@dataclass
class Settings:
    workers: int
    limits_for: Callable[[str, FunctionSpec | None], JobLimits]
    shutdown_grace: float = 25.0
    kill_grace: float = 0.05
    max_jobs_per_worker: int = 0
    worker_nice: int = 0
    posters: int = 2
    log_level: str = "INFO"
    logger_levels: tuple[tuple[str, str], ...] = ()
    stats_interval: float | None = 60.0
    functions: Mapping[str, FunctionSpec] = field(default_factory=dict)
    schemas: list[dict[str, Any]] | None = None


class Poller:
    """Runs one replica: the pool, the poll loop and the posters, until a signal or a fatal error."""

    def __init__(self, app: str, service: Service, settings: Settings,
                 check_functions: Callable[[list[str]], None] | None = None) -> None:
        self.check_functions = check_functions
        self.service = service
        self.settings = settings
        self.ledger = Ledger()
        self.pool = Pool(PoolOptions(settings.workers, app, log_level=settings.log_level,
                                     logger_levels=settings.logger_levels, kill_grace=settings.kill_grace,
                                     max_jobs_per_worker=settings.max_jobs_per_worker,
                                     worker_nice=settings.worker_nice),
                         on_answer=self._on_answer, on_stream=self._on_stream, on_output=self._on_output,
                         on_state_change=self._poke)
        self.outcomes: collections.Counter[str] = collections.Counter()
        # Concrete loggers, bound once with the configuration in force now: resolving a lazy logger on
        # every call cost ~8 us of the ~50 us a log line takes, on the path of every job.
        self._events = events.bind()
        self._job_output = job_output.bind()
        self._finished_line = logs.FixedLine(self._events, "cmworker.poller", "job_finished")
        self._next_stats = float("inf")
        logs.add_secret(service.endpoints.token)
        logs.add_secret(os.environ.get("CLIENT_SECRET"))
        for secret in _source_secrets(os.environ):
            logs.add_secret(secret)
        self._stopping = threading.Event()
        self._fatal: BaseException | None = None
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._threads: list[threading.Thread] = []
        # One keep-alive connection kept for the next streaming job: a new TLS connection costs ~3.5 ms
        # here, which a stream's first item would otherwise wait for. Streams that run at once beside it
        # connect anew and close after; keeping one only, the parent's open files never grow with streams.
        self._spare_connection: Connection | None = None
        self._spare_lock = threading.Lock()
        self._limits: dict[str, JobLimits] = {}  # by function; read and written by the poll thread only
        self.exit_code = 0

    # -- lifecycle (main thread) ----------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        if self.settings.stats_interval:
            self._next_stats = time.monotonic() + self.settings.stats_interval
        self.pool.start()
        self._learn_functions()
        conn = self.service.connection()
        self._announce(conn)
        self._spare_connection = conn  # connected already: the first stream's POST goes out at once
        for i in range(self.settings.posters):
            self._thread(self._post_loop, f"cmworker-post-{i}")
        self._thread(self._poll_loop, "cmworker-poll")
        while not self._stopping.is_set():
            self._wait_main()
            self._handle_signals()
            if self._fatal is not None or self.pool.unhealthy is not None:
                break
        self._drain(self.settings.shutdown_grace)
        if self._fatal is not None:
            log.error("stopping: %s", self._fatal)
            return 1
        return self.exit_code

    def _log_stats(self) -> None:
        assert self.settings.stats_interval
        self._next_stats = time.monotonic() + self.settings.stats_interval
        self._events.info("stats", jobs_by_outcome=dict(self.outcomes), jobs=sum(self.outcomes.values()),
                    workers_alive=len(self.pool.worker_pids()), respawns=self.pool.respawns,
                    held=len(self.ledger), parent_rss_bytes=psutil.Process().memory_info().rss,
                    interval_s=self.settings.stats_interval)

    def _learn_functions(self) -> None:
        """Declared limits and schemas, as the template reported them: the parent never imports the app."""
        info = self.pool.function_info
        self.settings.functions = {
            name: FunctionSpec(name, _not_run_here, bool(i.get("streaming")), i.get("timeout"),
                               i.get("soft_timeout"), i.get("memory_limit"))
            for name, i in info.items()}
        self.settings.schemas = [i["schema"] for i in info.values() if i.get("schema") is not None]
        if self.check_functions is not None:
            self.check_functions(self.pool.functions)

    def stop(self) -> None:
        """Ask the replica to drain and exit (what SIGTERM does). Any thread."""
        self._stopping.set()
        self._poke()

    def _announce(self, conn: Connection) -> None:
        """Post the schemas (failure is logged, not fatal) and the restart notification."""
        if self.settings.schemas is not None:
            try:
                reply = self._with_retries(lambda: self.service.post_schemas(conn, self.settings.schemas or []),
                                           "POST schemas", attempts=5)
                if reply is not None and reply.status >= 300:
                    log.error("the runtime refused the function schemas: HTTP %s %s", reply.status, reply.body[:500])
            except RuntimeUnavailable as exc:
                log.error("could not post the function schemas: %s", exc)
        reply = self._with_retries(lambda: self.service.restart_notification(conn), "restart notification",
                                   attempts=30)
        if reply is not None and reply.status == 200:
            with contextlib.suppress(ValueError):
                dropped = json.loads(reply.body)
                if dropped:
                    log.warning("the runtime dropped %d job(s) it thought were running here before this "
                                "restart: %s", len(dropped), ", ".join(map(str, dropped)))

    def _with_retries(self, call: Callable[[], Reply | None], what: str, attempts: int) -> Reply | None:
        for attempt in range(attempts):
            try:
                reply = call()
            except TransportError as exc:
                log.warning("%s failed (%s); retrying", what, exc)
                if self._stopping.wait(backoff(attempt)):
                    return None
                continue
            if reply is not None and reply.status in (401, 403):
                raise RuntimeUnavailable(f"the runtime rejected the module auth token (HTTP {reply.status}) "
                                         f"on {what}: check {self.service.endpoints.token_source}")
            if reply is not None and reply.status >= 500:
                log.warning("%s: HTTP %s; retrying", what, reply.status)
                if self._stopping.wait(backoff(attempt)):
                    return None
                continue
            return reply
        raise RuntimeUnavailable(f"{what} failed {attempts} times in a row")

    def _drain(self, grace: float) -> None:
        """Stop polling, let running jobs finish within ``grace``, answer the rest, flush every POST.

        The main loop keeps handling signals meanwhile, so a second one cuts the grace short.
        """
        self._stopping.set()
        self.pool.close(grace=grace, wait=False)
        while not self.pool.closed:
            self._wait_main()
            self._handle_signals()
        if not self.ledger.wait_empty(timeout=max(self.settings.shutdown_grace, 5.0)):
            log.error("%d job(s) could not be answered before exit", len(self.ledger))
        self.ledger.close_outbox()
        for thread in self._threads:
            thread.join(timeout=5)
        logs.flush_deferred()  # the last job_finished lines, before the exit line
        with self._spare_lock:
            spare, self._spare_connection = self._spare_connection, None
        if spare is not None:
            spare.close()

    def _thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

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
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
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
        log.warning("stopping: finishing running jobs for up to %.0fs", self.settings.shutdown_grace)

    handle_sigint = handle_sigterm

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

    # -- the poll loop (poll thread) --------------------------------------------------------------

    def _poll_loop(self) -> None:
        conn = self.service.connection()
        failures = 0
        try:
            while not self._stopping.is_set():
                turn = self.ledger.poll_turn(self.settings.workers, timeout=0.5)
                if isinstance(turn, _Outgoing):
                    self._post_once(conn, turn)
                    continue
                # A job is asked for only while a worker is idle and fewer than ``workers`` jobs are held.
                if not turn or not self.pool.wait_available(timeout=0.5):
                    continue
                try:
                    reply = self.service.get_job(conn)
                except TransportError as exc:
                    failures += 1
                    (log.warning if failures < 5 else log.error)("GET job failed (%s); retrying", exc)
                    self._stopping.wait(backoff(failures))
                    continue
                failures = 0 if reply.status < 500 else failures + 1
                self._on_get(reply, failures)
        finally:
            conn.close()

    def _on_get(self, reply: Reply, failures: int) -> None:
        if reply.status == 204:
            return
        if reply.status in (401, 403):
            raise RuntimeUnavailable(f"the runtime rejected the module auth token (HTTP {reply.status}): "
                                     f"check {self.service.endpoints.token_source}")
        if reply.status != 200:
            log.error("GET job answered HTTP %s: %s", reply.status, reply.body[:300])
            self._stopping.wait(backoff(failures))
            return
        self._accept(reply.body)

    def _accept(self, body: bytes) -> None:
        """Turn one GET body into a pool job, or answer it at once when it cannot run."""
        try:
            document = json.loads(body)
            v1 = document["computeModuleJobV1"] if isinstance(document, dict) else None
        except KeyError:
            v1 = None
        except (ValueError, RecursionError) as exc:
            self._answer_unreadable(body, exc)
            return
        job_id = v1.get("jobId") if isinstance(v1, dict) else None
        if isinstance(job_id, int) and not isinstance(job_id, bool):
            job_id = str(job_id)  # ids are strings in the protocol; a number still names the job
        if not isinstance(job_id, str) or not job_id:
            log.error("the runtime sent a job without a usable jobId; it cannot be answered: %.300r", body)
            return
        function = v1.get("queryType") if isinstance(v1, dict) else None
        secrets = []
        if isinstance(v1, dict):
            for key in ("authHeader", "temporaryCredentialsAuthToken"):
                value = v1.get(key)
                if isinstance(value, str) and value:
                    secrets.append(value.removeprefix("Bearer "))
        for secret in secrets:
            logs.add_secret(secret)
        held = self.ledger.accept(job_id, str(function))
        if held is None:
            log.error("job %s was handed out again while still running here; ignoring the duplicate", job_id)
            for secret in secrets:
                logs.remove_secret(secret)
            return
        held.secrets = secrets
        if not isinstance(function, str) or not function:
            self._answer_now(job_id, InvalidInput("the job has no queryType, so no function can run it"))
        elif self._stopping.is_set():
            self._answer_now(job_id, ShuttingDown("cmworker is shutting down; this job was never started"))
        elif self.pool.functions and function not in self.pool.functions:
            known = ", ".join(sorted(self.pool.functions))
            self._answer_now(job_id, UnknownFunction(f"no function named {function!r}; this app has: {known}",
                                                     function=function, known=sorted(self.pool.functions)))
        else:
            limits = self._limits.get(function)
            if limits is None:  # worked out once per function: the configuration does not change
                limits = self._limits[function] = self.settings.limits_for(function,
                                                                           self.settings.functions.get(function))
            self.pool.submit(Job(job_id, function, body, limits))

    def _answer_unreadable(self, body: bytes, exc: Exception) -> None:
        """A body that is not JSON to Python may still name its job: answer it rather than leave it held.

        A RecursionError here (a query nested ~1,000 deep) once ended the poll thread and with it the
        replica (found by tests/test_fuzz.py).
        """
        found = _JOB_ID.search(body)
        job_id = found.group(1).decode("utf-8", "replace") if found else ""
        if not job_id or self.ledger.accept(job_id, "") is None:
            log.error("the runtime sent a job without a usable jobId; it cannot be answered: %.300r", body)
            return
        if isinstance(exc, RecursionError):
            reason = "it is nested more deeply than Python's JSON parser allows (about 1,000 levels)"
        elif isinstance(exc, UnicodeDecodeError):
            reason = f"it is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position {exc.start})"
        else:
            reason = f"it is not valid JSON ({exc})"
        self._answer_now(job_id, InvalidInput(f"the job cannot be read: {reason}"))

    def _answer_now(self, job_id: str, error: JobError) -> None:
        self.outcomes[error.kind] += 1
        self._events.warning("job_finished", job_id=job_id, kind=error.kind, result_bytes=len(error.to_bytes()))
        self.ledger.queue_answer(_Outgoing(job_id, error.to_bytes(), None))

    def _on_output(self, line: OutputLine) -> None:
        """Re-emit what a job (or the template) wrote, tagged with its job; worker log lines pass through."""
        context = {"job_id": line.job_id, "function": line.function, "pid": line.pid}
        if line.dropped:
            self._job_output.warning("output_dropped", dropped_lines=line.dropped, **context)
            return
        if line.text.startswith(_SLS_PREFIX):
            try:
                record = json.loads(line.text)
                params = {**record.get("params", {}), **{k: v for k, v in context.items() if v is not None}}
                unsafe = record.get("unsafeParams", {})
                method = _PY_METHOD.get(record.get("level"), "info")
                getattr(self._job_output, method)(record.get("message", ""), **params, **unsafe, unsafe=list(unsafe),
                                            origin=record.get("origin", "cmworker.job"),
                                            safe=record.get("safe", False),
                                            stack=record.get("stacktrace"))
                return
            except (ValueError, TypeError, AttributeError):
                pass
        emit = self._job_output.info if line.stream == "stdout" else self._job_output.warning
        emit(line.text, stream=line.stream, safe=False, **context)

    # -- answers (pool thread -> posters) -------------------------------------------------------

    def _on_answer(self, answer: Answer) -> None:
        """Runs on the pool's loop: hand the answer on and return; rendering the log line is the poster's job."""
        self.outcomes[answer.kind] += 1
        held = self.ledger.get(answer.job.id)
        if held is not None and held.stream is not None:
            self._log_finished(answer)  # a streaming job's POST thread is busy with the chunks
            if answer.body:
                held.stream.put(answer.body)
            held.stream.put(_END)
            return
        self.ledger.queue_answer(_Outgoing(answer.job.id, answer.body, answer))

    def _log_finished(self, answer: Answer) -> None:
        """The one canonical line per job."""
        job = answer.job
        self._finished_line(
            "info" if answer.kind == "ok" else "warning", job_id=job.id, function=job.function, kind=answer.kind,
            worker_pid=answer.pid, queued_s=round(answer.queued, 6), wall_s=round(answer.wall, 6),
            cpu_s=round(answer.cpu, 6), peak_rss_bytes=answer.max_rss or None, result_bytes=len(answer.body))

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
                self._post(conn, outgoing.job_id, _constant(outgoing.body), outgoing.attempts)
                if outgoing.answer is not None:  # after the POST: the runtime has the answer, and sooner
                    self._log_finished(outgoing.answer)
        finally:
            conn.close()

    def _post_once(self, conn: Connection, outgoing: _Outgoing) -> None:
        """The poll thread's POST: one attempt; if it must be retried, the posters retry it."""
        if self._attempt_post(conn, outgoing.job_id, outgoing.body):
            self.ledger.release(outgoing.job_id)
            if outgoing.answer is not None:
                self._log_finished(outgoing.answer)
        else:
            outgoing.attempts += 1
            self.ledger.queue_answer(outgoing)

    def _post_stream(self, held: _Held) -> None:
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

    def _post(self, conn: Connection, job_id: str, body: Callable[[], Any], attempt: int = 0) -> None:
        """POST one answer until the runtime has it; then the job leaves the ledger."""
        while not self._attempt_post(conn, job_id, body()):
            attempt += 1
            time.sleep(backoff(min(attempt, 10)))
        self.ledger.release(job_id)

    def _attempt_post(self, conn: Connection, job_id: str, body: bytes | Iterator[bytes]) -> bool:
        """One POST of an answer: True when that is the end of it, False when it must be tried again."""
        try:
            reply = self.service.post_result(conn, job_id, body)
        except TransportError as exc:
            log.warning("POST result of job %s failed (%s); retrying", job_id, exc)
            return False
        if reply.status < 300 or reply.status == 409:
            return True  # 409: an earlier attempt did reach the runtime; the job is answered exactly once.
        if 400 <= reply.status < 500:
            log.error("the runtime refused the answer to job %s with HTTP %s: %.300r; giving up",
                      job_id, reply.status, reply.body)
            return True
        log.warning("POST result of job %s: HTTP %s; retrying", job_id, reply.status)
        return False
