"""``cmworker.Executor``: a ``concurrent.futures.Executor`` that runs local Python code in cmworker's pool.

The engine is the compute-module path's own ``supervisor.Pool``, started with no app: the same template,
the same one-select supervisor, the same deadlines, memory sampling and death classification. This
module only turns calls into ``MODE_PICKLE`` jobs and answers into futures::

    submit(fn, *args) ─► pickled.dump_call ─► Job ─► Pool.submit ─► worker: pickled.load_call, fn(*args)
                                                                                        │
    Future ◄── set_result / set_exception ◄── _Calls.on_answer (pool thread) ◄── Answer ┘

A failure fails its own future only, with the ``cmworker.errors`` tree: ``JobTimeout``,
``MemoryLimitExceeded``, ``WorkerDied`` (signal or exit code, last output lines) — never the executor
(CPython's ``BrokenProcessPool`` is the policy this replaces). An exception the function raised comes
back with its own type and the worker's traceback as ``__cause__`` (as CPython's process pool does), or
as a ``RemoteException`` when it cannot be pickled. ``SystemExit``, ``KeyboardInterrupt`` and other
``BaseException``s that are not ``Exception``s always come back as a ``RemoteException``: re-raised by
``future.result()`` they would end the caller, which is what isolation is for.

A call that cannot be pickled (a lock or a generator among its arguments, say) is never sent: its future
fails at once with ``pickle.PicklingError`` naming the function, as ``ProcessPoolExecutor``'s does, so
code that handles errors at ``result()`` handles this one too.

The executor's lifetime follows ``concurrent.futures``: ``shutdown(wait=True)`` runs everything already
submitted, stops the pool and returns once every worker process has exited; ``shutdown(wait=False)``
returns at once and the pool stops when the last job is answered; at interpreter exit every executor
still open is shut down with ``wait=True`` (jobs are still bound by their timeouts). Whatever way the
parent ends — even SIGKILL — no worker outlives it: the template kills every worker's process group when
its control socket closes.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import itertools
import os
import pickle
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, ParamSpec, TypeVar

from cmworker.errors import PoolUnhealthy, RemoteException, ResultNotSerializable
from cmworker.limits import JobLimits
from cmworker.pool import pickled
from cmworker.pool.jobs import Answer, Job
from cmworker.pool.messages import MODE_PICKLE
from cmworker.pool.options import PoolOptions
from cmworker.pool.supervisor import Pool
from cmworker.units import format_duration, format_size, parse_duration, parse_size

__all__ = ["Executor"]

T = TypeVar("T")
N = TypeVar("N", int, float)
P = ParamSpec("P")


class _Unset:
    """The default of ``submit_with``'s limits: "the executor's setting" (``None`` means "no limit")."""

    def __repr__(self) -> str:
        return "<the executor's setting>"


_UNSET: Final = _Unset()
_NAME_MAX = 200  # a job's function name travels in every Run message; a huge repr has no place there
_EXIT_WAIT = 5.0  # shutdown's wait for SIGKILLed workers to be gone: the kernel needs milliseconds


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` of a re-raised exception (as CPython does)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class _Future(concurrent.futures.Future[T]):
    """A future whose ``cancel`` withdraws its job from the pool's queue, and fails once it runs.

    It turns running when its job is sent to a worker (``_Calls.on_start``), which may be before the
    worker starts it: a job sent ahead to a busy worker waits there for the current one to finish.
    """

    def __init__(self, calls: _Calls, job_id: str) -> None:
        super().__init__()
        self._calls = calls
        self._job_id = job_id

    def cancel(self) -> bool:
        # A job once sent to a worker stays running, also when it is queued again after that worker
        # died before starting it: only a job that never left the queue can be withdrawn.
        if not self.done() and not self.running() and self._calls.withdraw(self._job_id):
            # The job never reached a worker and never will: no answer comes. Cancel, then tell the
            # waiters of concurrent.futures.wait()/as_completed() at once, as an executor does when
            # it would have started the job.
            super().cancel()
            self.set_running_or_notify_cancel()
            return True
        return self.cancelled()  # running (a worker has it) or finished: it cannot be cancelled


# Calls being delivered on this thread: a done-callback that shuts its own executor down with
# wait=True would otherwise wait for answers that only this thread can deliver.
_delivering = threading.local()


class _Calls:
    """Futures by job id, and the pool's callbacks. Holds no reference to the ``Executor``, so that an
    executor dropped without ``shutdown`` can be finalised (its pool then stops once it is idle)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.futures: dict[str, _Future[Any]] = {}
        self.ids = itertools.count()
        self.accepting = True
        self.draining = False  # shutdown(wait=False): stop the pool when the last job is answered
        self.pool: Pool | None = None

    # -- caller side --------------------------------------------------------------------------

    def submit(self, name: str, body: bytes, limits: JobLimits) -> _Future[Any]:
        pool = self.pool
        assert pool is not None
        if pool.unhealthy is not None:
            raise PoolUnhealthy(str(pool.unhealthy))
        with self.lock:
            if not self.accepting:
                raise RuntimeError("cannot schedule new futures after shutdown")
            job_id = str(next(self.ids))
            future: _Future[Any] = _Future(self, job_id)
            self.futures[job_id] = future
        # Outside the lock: a closed pool answers ShuttingDown from within submit, on this thread.
        pool.submit(Job(job_id, name, body, limits, MODE_PICKLE))
        return future

    def check_open(self) -> None:
        """Raise what ``submit`` raises on a pool that takes no more calls."""
        assert self.pool is not None
        if self.pool.unhealthy is not None:
            raise PoolUnhealthy(str(self.pool.unhealthy))
        if not self.accepting:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def withdraw(self, job_id: str) -> bool:
        """Take a queued job back from the pool; False once a worker has it (or it was answered)."""
        assert self.pool is not None
        if not self.pool.cancel(job_id):
            return False
        with self.lock:
            self.futures.pop(job_id, None)
        self._stop_if_drained()
        return True

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        assert self.pool is not None
        with self.lock:
            self.accepting = False
            outstanding = list(self.futures.values())
        if cancel_futures:
            for future in outstanding:
                future.cancel()  # queued jobs are withdrawn; running ones finish
        if wait and getattr(_delivering, "calls", None) is not self:
            concurrent.futures.wait(outstanding)
            # The template SIGKILLs its workers and exits without waiting for them; watch them from
            # here, so that "shutdown returned" means "no worker process is left".
            workers = _pidfds(self.pool.worker_pids())
            self.pool.close()
            _wait_exited(workers, _EXIT_WAIT)
            _open.discard(self)
        else:
            with self.lock:
                self.draining = True
            self._stop_if_drained()

    def release(self) -> None:
        """The executor was garbage-collected without shutdown: finish what was submitted, then stop."""
        if self.pool is not None and not self.pool.closed:
            self.shutdown(wait=False, cancel_futures=False)

    def _stop_if_drained(self) -> None:
        if not self.draining:  # once per answer: skip the lock while no shutdown(wait=False) is pending
            return
        with self.lock:
            drained = self.draining and not self.futures
        if drained and self.pool is not None:
            self.pool.close(wait=False)

    # -- pool thread ----------------------------------------------------------------------------

    def on_start(self, job: Job) -> None:
        """The job was sent to a worker (to run now, or next after its current call): it is running.

        The pool sends a job again when it was sent ahead to a worker that died before starting it: the
        future is running since the first send and is not marked again (``concurrent.futures`` logs a
        CRITICAL "unexpected state" for that). A future found here is never done: the pool reports a
        job sent before it can answer it, and every other way to settle a future takes it out first.
        """
        future = self.futures.get(job.id)  # one dict read: atomic, no lock needed
        if future is not None and not future.running():
            future.set_running_or_notify_cancel()

    def on_answer(self, answer: Answer) -> None:
        with self.lock:
            future = self.futures.pop(answer.job.id, None)
        if future is not None:
            _delivering.calls = self
            try:
                _settle(future, answer)
            finally:
                _delivering.calls = None
        self._stop_if_drained()

    def on_state_change(self) -> None:
        pool = self.pool
        if pool is None:
            return
        if pool.unhealthy is not None:
            # The pool stopped respawning workers: what is still queued would wait forever.
            with self.lock:
                queued = list(self.futures)
            for job_id in queued:
                if pool.cancel(job_id):
                    with self.lock:
                        future = self.futures.pop(job_id, None)
                    if future is not None:
                        with contextlib.suppress(concurrent.futures.InvalidStateError):
                            future.set_exception(PoolUnhealthy(str(pool.unhealthy)))
        if pool.closed:
            _open.discard(self)


def _pidfds(pids: list[int]) -> list[int]:
    """A pidfd per live process; none where it is gone already or the platform has no pidfds."""
    fds = []
    for pid in pids:
        with contextlib.suppress(AttributeError, OSError):
            fds.append(os.pidfd_open(pid))
    return fds


def _wait_exited(fds: list[int], timeout: float) -> None:
    """Until every process behind ``fds`` has exited (a pidfd turns readable then), or ``timeout``; closes them."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    waiting, end = set(fds), time.monotonic() + timeout
    try:
        while waiting and (left := end - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                waiting.discard(fd)
    finally:
        for fd in fds:
            os.close(fd)


def _settle(future: _Future[Any], answer: Answer) -> None:
    """Give the future its answer: the unpickled result, or the exception that ended the job."""
    try:
        if answer.kind == "ok":
            try:
                value = pickle.loads(answer.body)
            except BaseException as exc:
                future.set_exception(_unreadable(answer, "result", exc))
                return
            future.set_result(value)
        else:
            future.set_exception(_error(answer))
    except concurrent.futures.InvalidStateError:
        pass  # cancelled meanwhile


def _error(answer: Answer) -> BaseException:
    if answer.error is not None:  # made by the parent: timeout, memory_limit, worker_died, shutdown
        return answer.error
    try:
        exc: BaseException
        tb: str
        exc, tb = pickle.loads(answer.body)
    except BaseException as load_error:
        return _unreadable(answer, "exception", load_error)
    if not isinstance(exc, Exception):
        exc = RemoteException.from_exception(exc, tb)
    if tb:
        exc.__cause__ = _RemoteTraceback(tb)
    return exc


def _unreadable(answer: Answer, what: str, cause: BaseException) -> BaseException:
    """The worker sent something this process cannot unpickle (a class it cannot import, say)."""
    message = f"the {what} of {answer.job.function} cannot be unpickled in the calling process: {cause!r}"
    error: BaseException = ResultNotSerializable(message) if what == "result" else RemoteException(message)
    error.__cause__ = cause
    return error


# Executors whose pool is open; at interpreter exit each is shut down (with wait=True, as
# concurrent.futures does). An entry goes when its pool closes, so the set does not grow.
_open: set[_Calls] = set()


@atexit.register
def _shutdown_open_executors() -> None:
    for calls in list(_open):
        with contextlib.suppress(Exception):
            calls.shutdown(wait=True, cancel_futures=False)


class Executor(concurrent.futures.Executor):
    """Runs callables in crash-isolated, pre-forked worker processes; see the module docstring.

    ``max_workers`` defaults to the CPUs this process may use. ``timeout`` (hard: the worker's process
    group is killed), ``soft_timeout`` (``cmworker.JobTimeout`` is raised inside the call first) and
    ``memory_limit`` (RSS of the call's whole process tree) apply to every call unless ``submit_with``
    says otherwise, and so do ``soft_memory_limit`` (``cmworker.MemoryLimitExceeded`` raised inside the
    call first) and ``max_worker_memory`` (a worker left above it after a call is replaced); durations
    and sizes are seconds/bytes or strings such as ``"5m"`` and ``"2GiB"``.
    ``max_jobs_per_worker`` recycles a worker after that many calls. ``preload`` names modules the
    worker template imports once, so that every worker starts with them imported.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        timeout: float | str | None = None,
        soft_timeout: float | str | None = None,
        memory_limit: int | str | None = None,
        soft_memory_limit: int | str | None = None,
        max_worker_memory: int | str | None = None,
        max_jobs_per_worker: int | None = None,
        preload: Sequence[str] | str = (),
    ) -> None:
        workers = _positive_int("max_workers", max_workers) if max_workers is not None else _cpu_count()
        recycle = 0 if max_jobs_per_worker is None else _positive_int("max_jobs_per_worker", max_jobs_per_worker)
        self._limits = _limits(timeout, soft_timeout, memory_limit, soft_memory_limit, max_worker_memory)
        modules = [preload] if isinstance(preload, str) else list(preload)
        self._calls = calls = _Calls()
        # worker_nice=0: they run the caller's own computation; lowered, they would yield to every other program.
        options = PoolOptions(workers, preload=modules, max_jobs_per_worker=recycle, worker_nice=0, prefetch=True)
        pool = Pool(options, on_answer=calls.on_answer, on_state_change=calls.on_state_change, on_start=calls.on_start)
        calls.pool = pool
        pool.start()  # raises AppLoadError when a preload module cannot be imported
        self._max_workers = workers
        _open.add(calls)
        weakref.finalize(self, calls.release).atexit = False  # exit is _shutdown_open_executors' job

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker with the executor's limits."""
        return self._submit(fn, args, kwargs, self._limits)

    def submit_with(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        timeout: float | str | _Unset | None = _UNSET,
        soft_timeout: float | str | _Unset | None = _UNSET,
        memory_limit: int | str | _Unset | None = _UNSET,
        soft_memory_limit: int | str | _Unset | None = _UNSET,
        max_worker_memory: int | str | _Unset | None = _UNSET,
        **kwargs: Any,
    ) -> concurrent.futures.Future[T]:
        """``submit`` with limits for this call only; an omitted limit is the executor's, ``None`` is none.

        The limits' names are taken by this method: to pass arguments of those names to ``fn``, wrap it
        in ``functools.partial``.
        """
        base = self._limits
        limits = _limits(base.timeout if isinstance(timeout, _Unset) else timeout,
                         base.soft_timeout if isinstance(soft_timeout, _Unset) else soft_timeout,
                         base.memory_limit if isinstance(memory_limit, _Unset) else memory_limit,
                         base.soft_memory_limit if isinstance(soft_memory_limit, _Unset) else soft_memory_limit,
                         base.max_worker_memory if isinstance(max_worker_memory, _Unset) else max_worker_memory)
        return self._submit(fn, args, kwargs, limits)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``concurrent.futures.Executor.map``: every call is submitted now, results come in order.

        ``timeout`` bounds the wait for results, counted from this call; it raises
        ``concurrent.futures.TimeoutError`` (the builtin ``TimeoutError`` from Python 3.11 on, as in the
        standard executors) from the iterator and cancels what has not started, but does not stop calls already running
        (the executor's ``timeout`` does). With ``chunksize`` > 1 the calls travel in chunks of that
        many: each chunk is one job, so the executor's limits apply to the chunk as a whole, and the
        first exception of a chunk is the one ``map`` raises.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive int, not {chunksize!r}")
        end = None if timeout is None else time.monotonic() + timeout
        calls = list(zip(*iterables, strict=False))
        futures: list[concurrent.futures.Future[Any]] = []
        try:
            if chunksize == 1:
                send = self._sender(fn)  # the function is looked up and named once, not per call
                for args in calls:
                    futures.append(send(args, {}, self._limits))
            else:
                name = f"{_name(fn)} [map chunk of up to {chunksize}]"
                for start in range(0, len(calls), chunksize):
                    try:
                        body = pickled.dump_chunk(fn, calls[start:start + chunksize])
                    except Exception as exc:
                        futures.append(self._unsent(name, exc))
                        continue
                    futures.append(self._calls.submit(name, body, self._limits))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return _results(futures, end, chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls. ``wait``: return once everything submitted has been answered and every
        worker is gone. ``cancel_futures``: cancel what is still queued (running calls finish)."""
        self._calls.shutdown(wait, cancel_futures)

    @property
    def available(self) -> int:
        """Idle workers minus calls waiting in the queue: negative while calls wait for a worker."""
        pool = self._calls.pool
        return 0 if pool is None else pool.available

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes alive now."""
        pool = self._calls.pool
        return [] if pool is None else pool.worker_pids()

    @property
    def template_pid(self) -> int | None:
        """The pid of the process the workers are forked from (the executor's child)."""
        pool = self._calls.pool
        return None if pool is None else pool.template_pid

    def __repr__(self) -> str:
        pool = self._calls.pool
        state = "closed" if pool is None or pool.closed else "open" if self._calls.accepting else "shutting down"
        return f"<cmworker.Executor max_workers={self._max_workers} {state}>"

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any],
                limits: JobLimits) -> concurrent.futures.Future[T]:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        try:
            body = pickled.dump_call(fn, args, kwargs)
        except Exception as exc:
            return self._unsent(_name(fn), exc)
        return self._calls.submit(_name(fn), body, limits)

    def _sender(self, fn: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any], JobLimits],
                                                          concurrent.futures.Future[Any]]:
        """What submits many calls of ``fn`` (``map``): pickles each on the caller's thread, then hands it
        to the pool; the function is looked up and named once."""
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        name = _name(fn)
        try:
            writer = pickled.CallWriter(fn)
        except Exception as exc:  # the function itself cannot be pickled (a closure over a lock, say)
            error = exc
            return lambda args, kwargs, limits: self._unsent(name, error)
        dump, submit = writer.dump, self._calls.submit

        def send(args: tuple[Any, ...], kwargs: dict[str, Any], limits: JobLimits) -> concurrent.futures.Future[Any]:
            try:
                body = dump(args, kwargs)
            except Exception as exc:
                return self._unsent(name, exc)
            return submit(name, body, limits)

        return send

    def _unsent(self, name: str, cause: Exception) -> concurrent.futures.Future[Any]:
        """The future of a call that cannot be pickled: failed at once, nothing sent to a worker."""
        self._calls.check_open()
        error = pickle.PicklingError(f"cannot send a call of {name} to a worker: the function or its arguments "
                                     f"cannot be pickled: {type(cause).__name__}: {cause}")
        error.__cause__ = cause
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_exception(error)
        return future


def _results(futures: list[concurrent.futures.Future[Any]], end: float | None, chunked: bool) -> Iterator[Any]:
    # A generator apart from map(), so that map() submits everything before its caller iterates.
    futures.reverse()  # pop() from the end: a future is dropped as soon as its result is taken
    try:
        while futures:
            future = futures.pop()
            value = future.result() if end is None else future.result(end - time.monotonic())
            if chunked:
                yield from value
            else:
                yield value
    finally:
        for future in futures:
            future.cancel()


def _name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, for error messages; the type's name for other callables."""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    name = f"{module}.{qualname}" if module else str(qualname)
    return name if len(name) <= _NAME_MAX else name[:_NAME_MAX - 3] + "..."


def _limits(timeout: float | str | None, soft_timeout: float | str | None, memory_limit: int | str | None,
            soft_memory_limit: int | str | None = None, max_worker_memory: int | str | None = None) -> JobLimits:
    hard, soft = _duration("timeout", timeout), _duration("soft_timeout", soft_timeout)
    if hard is not None and soft is not None and soft >= hard:
        # The hard kill would come first and the soft timeout could never fire (the configuration file
        # rejects the same pair).
        raise ValueError(f"soft_timeout ({format_duration(soft)}) must be less than timeout "
                         f"({format_duration(hard)}): JobTimeout is raised inside the call before the kill")
    # max_result_size=0: no cap of the executor's own, as concurrent.futures has none (the compute-module
    # path's 32 MiB default is a runtime constraint, not a local one); only the pool's frame limit
    # applies (pool.messages.MAX_BODY, 1 GiB less a little).
    memory, soft_memory = _size("memory_limit", memory_limit), _size("soft_memory_limit", soft_memory_limit)
    if memory is not None and soft_memory is not None and soft_memory >= memory:
        raise ValueError(f"soft_memory_limit ({format_size(soft_memory)}) must be less than memory_limit "
                         f"({format_size(memory)}): MemoryLimitExceeded is raised inside the call before the kill")
    return JobLimits(timeout=hard, soft_timeout=soft, memory_limit=memory, max_result_size=0,
                     soft_memory_limit=soft_memory, max_worker_memory=_size("max_worker_memory", max_worker_memory))


def _duration(name: str, value: float | str | None) -> float | None:
    return _limit(name, value, parse_duration, "seconds")


def _size(name: str, value: int | str | None) -> int | None:
    return _limit(name, value, parse_size, "bytes")


def _limit(name: str, value: object, parse: Callable[[Any], N], unit: str) -> N | None:
    """``value`` parsed (a number, or a string such as "5m" or "2GiB"); ``None`` means no limit."""
    if value is None:
        return None
    try:
        parsed = parse(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if parsed <= 0:
        raise ValueError(f"{name}: {value!r} is not a limit: use more than 0 {unit}, or None for no limit")
    return parsed


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # "Booleans are ints!"
        raise ValueError(f"{name} must be a positive int, not {value!r}")
    return value


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
