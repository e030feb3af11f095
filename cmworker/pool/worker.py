"""Child side only: read a job, run the function, send back its answer. Never touches the network.

A worker is forked from the template with the app already imported. It reads ``Run`` messages from
its own socket (one per worker, never shared), and answers each with exactly one terminal message:
``Result``, ``Failure``, or — for a streaming function — ``Chunk``s then ``StreamEnd``/``Failure``.
Anything the function does wrong that Python can see (raising, an unencodable or oversized result,
its soft timeout) becomes a ``Failure`` with a payload kind; what Python cannot see (a segfault,
``os._exit``, a kill) the parent learns from the wait status and classifies there.

After each job, before its answer, the worker kills and reaps every process the job left (it is their
subreaper, so none escaped) and puts its own state back (``baseline.py``). When a job left what cannot
be put back, the worker says so (``Retiring``) before the answer and exits after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from types import FrameType
from typing import Any, NoReturn

import cloudpickle
import structlog

from cmworker import heap, logs
from cmworker.app.encoding import encode_result
from cmworker.app.envelope import V1, disagreement, fields_from_ends
from cmworker.app.registry import FunctionSpec
from cmworker.errors import (
    InvalidInput,
    JobError,
    JobTimeout,
    MemoryLimitExceeded,
    RemoteException,
    ResultNotSerializable,
    ResultTooLarge,
    StreamFailed,
    UnknownFunction,
    unreadable_job,
)
from cmworker.pool import pickled, processes, stack
from cmworker.pool.baseline import Baseline
from cmworker.pool.messages import (
    MODE_PICKLE,
    BlockingReader,
    Chunk,
    Failure,
    Message,
    Ready,
    Result,
    Retiring,
    Run,
    RunLimits,
    StreamEnd,
    send_message,
)
from cmworker.pool.usage import JobWatch
from cmworker.proctitle import set_title
from cmworker.units import describe_size, format_duration, format_size

# True only while user code runs, so that a soft-timeout signal arriving between jobs is ignored.
_in_job = False
# The worker's own pid. A job that forks and lets the child return (or raise) hands that copy back to
# this module; a copy must never answer, stream or read the next job off the worker's socket.
_worker_pid = 0
_soft_timeout = 0.0
# How long the worker waits for the processes a job left to die once killed (one stuck in the kernel
# cannot); past it, the worker retires and the template, their next subreaper, reaps them.
_REAP_DEADLINE = 2.0


def serve(sock: socket.socket, functions: Mapping[str, FunctionSpec], title: str = "",
          untraceable: bool = False) -> NoReturn:
    """The worker's whole life: announce itself, then run jobs until the parent closes the socket.
    ``title`` names it in ``ps``, with the function it runs; ``untraceable``: non-dumpable from its
    first job on (``processes.forbid_tracing``), once its own /proc files are open."""
    global _worker_pid
    _worker_pid = os.getpid()
    signal.signal(signal.SIGALRM, _on_soft_timeout)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    stack.install()  # the stack at a crash, and at the parent's kill, goes to stderr (pool/stack.py)
    watch = JobWatch(lambda: _in_job)  # before the baseline: its signal handler is part of it
    if untraceable:  # after JobWatch opened /proc/self/clear_refs, before the baseline records the flag
        processes.forbid_tracing()
    baseline = Baseline.capture(sock.fileno())
    send_message(sock, Ready(os.getpid()))
    reader = BlockingReader(sock)
    keeping = False  # the heap kept between jobs, from the first job whose pool allows it (cmworker.heap)
    kept = False     # what the last job freed may be in the heap
    while True:
        if kept and not reader.buf and not _readable(sock, heap.IDLE_TRIM):
            heap.trim()  # idle: what the last jobs freed goes back to the system
            kept = False
        try:
            message = reader.read()
        except OSError:
            message = None
        if message is None:  # the parent closed our socket: retire quietly
            _flush_output()
            os._exit(0)
        if isinstance(message, Run):
            if title:
                set_title(f"{title} [{message.function} {message.job_id}]")
            if message.keep_heap and not keeping:
                keeping = heap.keep_big_buffers()
            _run(sock, message, functions, baseline, watch)
            kept = keeping
            if title:
                set_title(f"{title} idle")
        elif isinstance(message, RunLimits):
            watch.expect(message)


def _readable(sock: socket.socket, timeout: float) -> bool:
    try:
        return bool(select.select([sock], [], [], timeout)[0])
    except (OSError, ValueError):
        return True  # let the read find out


def _run(sock: socket.socket, run: Run, functions: Mapping[str, FunctionSpec], baseline: Baseline,
         watch: JobWatch) -> None:
    watch.begin(run)
    cpu_start = time.process_time()
    try:
        reply = _run_pickled(run) if run.mode == MODE_PICKLE else _run_json(sock, run, functions)
    finally:
        structlog.contextvars.clear_contextvars()
    _end_if_copy(reply)
    unfit = _clean_up(baseline)
    _flush_output()
    cpu = time.process_time() - cpu_start
    usage = watch.end(run.seq)
    if not unfit and (unfit := watch.too_big(usage)):
        logs.get_logger("cmworker.worker").info("worker_replaced_after_job", reasons=unfit)
    # One send for all: the parent wakes once, and finds the answer behind the usage.
    ahead: list[Message] = [usage, Retiring(run.seq)] if unfit else [usage]
    if isinstance(reply, Result):
        send_message(sock, Result(reply.body, cpu, run.seq), ahead)
    elif isinstance(reply, Failure):
        send_message(sock, Failure(reply.kind, reply.body, cpu, run.seq), ahead)
    else:
        send_message(sock, StreamEnd(cpu, run.seq), ahead)
    if unfit:
        _flush_output()
        os._exit(0)


def _clean_up(baseline: Baseline) -> list[str]:
    """End what the job left and put the worker back as the template made it; why it cannot serve again."""
    reasons = []
    ended, killed = _end_leftovers()
    if not ended:
        reasons.append(f"processes the job started did not die within {format_duration(_REAP_DEADLINE)} "
                       "of being killed")
    elif killed:
        # What the worker holds of them would fail the next job: multiprocessing's forkserver pid, reaped
        # here, made the next job's pool raise ChildProcessError; a reusable executor's workers are gone.
        reasons.append(f"the job left {killed} process(es) running, which were killed; what it kept of them "
                       "in the worker would fail the next job")
    try:
        reasons += baseline.restore()
    except Exception as exc:  # whatever the job did to make this fail, the next job must not meet it
        reasons.append(f"the worker's state could not be put back: {exc!r}")
    if reasons:
        logs.get_logger("cmworker.worker").warning("worker_replaced_after_job", reasons=reasons)
    return reasons


def _run_json(sock: socket.socket, run: Run, functions: Mapping[str, FunctionSpec]) -> Result | Failure | StreamEnd:
    spec = functions.get(run.function)
    if spec is None:
        known = ", ".join(sorted(functions)) or "none"
        return _failure(UnknownFunction(f"no function named {run.function!r}; this app has: {known}",
                                        function=run.function, known=sorted(functions)))
    body = run.body if isinstance(run.body, bytes | bytearray) else bytes(run.body)
    try:  # the parent read only the ends of the envelope: the body is parsed here, once
        job = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return _failure(unreadable_job(exc))
    if unsure := _read_differently(body, job):
        return _failure(unsure)
    query, context = _query_and_context(job)
    structlog.contextvars.bind_contextvars(job_id=context["jobId"], function=run.function)
    try:
        context_arg, event = spec.prepare(context, query)
    except InvalidInput as exc:
        return _failure(exc)
    try:
        with _soft_limit(run.soft_timeout):
            value = spec.fn(context_arg, event)
            if spec.streaming and _is_stream(value):
                return _stream(sock, value, run)
    except (JobTimeout, MemoryLimitExceeded) as exc:  # at a soft limit, not caught by the function
        return _failure(exc)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the job raised them
        return _failure(RemoteException.from_exception(exc, _format_exc(exc)))
    return _encode(value, run.max_result_size)


def _read_differently(body: bytes | bytearray, job: Any) -> InvalidInput | None:
    """The parent acted on the id, function and credentials it read from the envelope's ends
    (``app.envelope``); a body that reads otherwise in full is one no runtime sends, and no code runs on
    it: the parent may have missed a credential that the job could print."""
    fields = fields_from_ends(body)
    v1 = job.get(V1) if isinstance(job, dict) else None
    if fields is None or not isinstance(v1, dict) or (key := disagreement(fields, v1)) is None:
        return None
    return InvalidInput(f"the job's {key} reads differently from the ends of its body than in full (a member "
                        f"after {V1}, or a duplicate key): the function was not run")


def _query_and_context(job: Any) -> tuple[Any, dict[str, Any]]:
    """The query and the SDK-shaped context dict from a runtime job or a bare ``{"query": ...}``."""
    if isinstance(job, dict):
        v1 = job.get("computeModuleJobV1", job)
        if isinstance(v1, dict):
            context = {
                "jobId": v1.get("jobId"),
                "tempCredsAuthToken": v1.get("temporaryCredentialsAuthToken", ""),
                "authHeader": v1.get("authHeader", ""),
                "userId": v1.get("userId", ""),
            }
            return v1.get("query"), context
    return job, {"jobId": None, "tempCredsAuthToken": "", "authHeader": "", "userId": ""}


def _is_stream(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, dict | str | bytes | bytearray)


def _stream(sock: socket.socket, items: Iterable[Any], run: Run) -> StreamEnd | Failure:
    """Send each item as it is produced. Runs inside the soft-timeout window: items are user code."""
    sent = 0
    iterator: Iterator[Any] = iter(items)
    try:
        for item in iterator:
            try:
                data = encode_result(item)
            except Exception as exc:
                return _failure(StreamFailed(f"stream item {sent} cannot be encoded as JSON: {exc}",
                                             items_sent=sent))
            if run.max_result_size and len(data) > run.max_result_size:
                return _failure(ResultTooLarge(
                    f"stream item {sent} is {describe_size(len(data))}, over the limit of "
                    f"{format_size(run.max_result_size)}", size_bytes=len(data),
                    limit_bytes=run.max_result_size, items_sent=sent))
            _end_if_copy(None)
            send_message(sock, Chunk(data, run.seq))
            sent += 1
    except (JobTimeout, MemoryLimitExceeded) as exc:
        return _failure(exc)
    except BaseException as exc:
        tb = _format_exc(exc)
        return _failure(StreamFailed(f"the stream failed after {sent} items: {type(exc).__name__}: "
                                     f"{_safe_str(exc)}", items_sent=sent, type=type(exc).__name__,
                                     traceback=tb))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            with contextlib.suppress(BaseException):
                close()
    return StreamEnd()


def _encode(value: Any, max_size: int) -> Result | Failure:
    try:
        body = encode_result(value)
    except BaseException as exc:  # TypeError, ValueError (circular), RecursionError (too deep), and whatever
        # the value's own methods raise (a dict subclass's items()): SystemExit(0) ended the worker, "code 0"
        return _failure(ResultNotSerializable(
            f"the function returned a {type(value).__name__} that cannot be encoded as JSON: {_describe(exc)}",
            type=type(value).__name__))
    if max_size and len(body) > max_size:
        return _failure(ResultTooLarge(
            f"the result is {describe_size(len(body))}, over the limit of {format_size(max_size)}",
            size_bytes=len(body), limit_bytes=max_size))
    return Result(body)


def _failure(error: JobError) -> Failure:
    payload = error.to_payload()
    try:
        body = json.dumps(payload).encode()
    except (TypeError, ValueError):
        body = json.dumps(payload, default=repr).encode()
    return Failure(error.kind, body)


def _run_pickled(run: Run) -> Result | Failure:
    """Executor jobs: a cloudpickled ``(fn, args, kwargs)`` in, a pickled result or exception out."""
    try:
        # The body's format lives in cmworker.pool.pickled: a function sent by value comes as bytes plus a
        # digest and is unpickled once per worker, so its module globals (a cache) persist across calls.
        fn, args, kwargs = pickled.load_call(run.body)
        with _soft_limit(run.soft_timeout):
            value = fn(*args, **kwargs)
    except BaseException as exc:
        return _pickled_failure(exc, _format_exc(exc))
    try:
        body = cloudpickle.dumps(value)
    except BaseException as exc:  # the value's __reduce__ is user code
        return _pickled_failure(ResultNotSerializable(
            f"the function returned a {type(value).__name__} that cannot be pickled: {_describe(exc)}",
            type=type(value).__name__), "")
    if run.max_result_size and len(body) > run.max_result_size:
        return _pickled_failure(ResultTooLarge(
            f"the result is {describe_size(len(body))}, over the limit of {format_size(run.max_result_size)}",
            size_bytes=len(body), limit_bytes=run.max_result_size), "")
    return Result(body)


def _pickled_failure(exc: BaseException, tb: str) -> Failure:
    """The exception itself when it pickles and unpickles; else a RemoteException carrying its text."""
    kind = exc.kind if isinstance(exc, JobError) else RemoteException.kind
    try:
        body = cloudpickle.dumps((exc, tb))
        cloudpickle.loads(body)
    except BaseException:  # its __reduce__, and what unpickling it calls, are user code
        body = cloudpickle.dumps((RemoteException.from_exception(exc, tb), tb))
    return Failure(kind, body)


class _soft_limit:
    """Arms SIGALRM for the job's soft timeout; the handler raises JobTimeout inside user code."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        global _in_job, _soft_timeout
        _soft_timeout = self.seconds
        _in_job = True
        if self.seconds > 0:
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        global _in_job
        _in_job = False
        if self.seconds > 0:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _end_if_copy(reply: Result | Failure | StreamEnd | None) -> None:
    """A forked copy of the worker that came back out of the job ends here, as the child of a fork in a
    script would at its end: exit status 0 if the function returned, 1 if it raised. The original worker
    answers; a copy answering instead (seen: the copy's result, or its exception, posted for the job) or
    reading the next job would serve jobs outside the parent's watch."""
    if os.getpid() != _worker_pid:
        _flush_output()
        os._exit(1 if isinstance(reply, Failure) else 0)


def _on_soft_timeout(signum: int, frame: FrameType | None) -> None:
    if _in_job:
        raise JobTimeout(f"the job passed its soft timeout of {format_duration(_soft_timeout)}",
                         timeout_s=_soft_timeout, soft=True)


def _end_leftovers() -> tuple[bool, int]:
    """Kill every process the job left and reap them all: whether all died in time, and how many were
    still running (exited ones are only reaped).

    The worker is their subreaper: a process whose parent exited was re-parented here, so "no child
    left" means nothing of the job is left, whatever session or group it moved to.
    """
    me = os.getpid()
    deadline = time.monotonic() + _REAP_DEADLINE
    pause = 0.0005
    killed = 0
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return True, killed  # the common case, one syscall: the job left no process
        if time.monotonic() > deadline:
            return False, killed
        killed += processes.freeze_and_kill(me, include_worker=False)
        time.sleep(pause)  # SIGKILLed processes die within microseconds; this is seldom reached twice
        pause = min(pause * 2, 0.05)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # its __str__ is user code, which may raise SystemExit as well as anything
        return f"<unprintable {type(exc).__name__}>"


def _describe(exc: BaseException) -> str:
    """What an exception says; named too when it is not an Exception (``SystemExit: 0``, not ``0``)."""
    return _safe_str(exc) if isinstance(exc, Exception) else f"{type(exc).__name__}: {_safe_str(exc)}"


def _format_exc(exc: BaseException) -> str:
    """``traceback.format_exc()``, which calls the exception's ``__str__`` and lets a SystemExit from it
    through; the frames alone then, under the exception's class name."""
    try:
        return traceback.format_exc()
    except BaseException:
        frames = "".join(traceback.format_tb(exc.__traceback__))
        return f"Traceback (most recent call last):\n{frames}{type(exc).__name__}: <unprintable>\n"
