"""The pools under test behind one small interface, and two references that show the floor under them.

Every pool runs two workers and the same functions (``bench_apps/noop_app.py``): cmworker loads that
file as its app and receives JSON jobs; the peers import it as a module and get ``fn(context, event)``
pickled by reference. Each peer is used the way its documentation shows for a blocking call and for a
submission with a completion callback.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import itertools
import json
import multiprocessing
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import loky
import pebble
from bench_apps import noop_app

from cmworker.limits import JobLimits
from cmworker.pool.jobs import Answer, Job, OutputLine
from cmworker.pool.options import PoolOptions
from cmworker.pool.supervisor import Pool

APP = Path(noop_app.__file__).resolve()
WORKERS = 2
WAIT = 30.0  # no single wait may take longer; a hang fails the run instead of wedging it
# What cmworker's worker hands a function as ``context``; the peers pass the same dict.
CONTEXT = {"jobId": None, "tempCredsAuthToken": "", "authHeader": "", "userId": ""}


class BenchError(RuntimeError):
    """A pool did not do what the benchmark needs (no answer in time, a wrong answer)."""


@dataclass(frozen=True)
class Outcome:
    """How a pool ended one submitted task: when it told us, and the error if it was one."""

    at: float                  # time.monotonic() when the pool delivered it
    error: str | None = None   # answer kind (cmworker) or exception type (peers); None for a result


Done = Callable[[Outcome], None]


def function(name: str) -> Callable[..., Any]:
    fn: Callable[..., Any] = getattr(noop_app, name)
    return fn


class Peer(abc.ABC):
    """One pool: started, used for blocking calls or windowed submissions, always closed."""

    name: ClassVar[str]

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def call(self, name: str, event: Any) -> Any:
        """Run one job and wait for its result."""

    @abc.abstractmethod
    def submit(self, name: str, event: Any, done: Done) -> None:
        """Start one job; ``done`` is called (on any thread) when the pool ends it."""

    @abc.abstractmethod
    def close(self) -> None: ...


@contextlib.contextmanager
def started(peer: Peer) -> Iterator[Peer]:
    """A started peer, closed on the way out even when starting or the measurement failed."""
    try:
        peer.start()
        yield peer
    finally:
        peer.close()


class CmworkerPeer(Peer):
    name = "cmworker.Pool"

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        self.preload = preload
        self.ids = itertools.count()
        self.answers: queue.SimpleQueue[tuple[Answer, float]] = queue.SimpleQueue()
        self.waiting: dict[str, Done] = {}
        self.output: list[OutputLine] = []
        self.in_pool: list[float] = []  # per call(): Job created -> Answer made, by the pool's own clock
        self._pool: Pool | None = None

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "start() first"
        return self._pool

    def start(self) -> None:
        # worker_nice=0: measured beside pools whose workers run at the caller's priority.
        options = PoolOptions(WORKERS, str(APP), preload=self.preload, worker_nice=0)
        self._pool = Pool(options, on_answer=self._on_answer, on_output=self.output.append)
        self._pool.start()

    def _on_answer(self, answer: Answer) -> None:
        now = time.monotonic()
        done = self.waiting.pop(answer.job.id, None)
        if done is None:
            self.answers.put((answer, now))
        else:
            done(Outcome(now, None if answer.kind == "ok" else answer.kind))

    def job(self, name: str, event: Any, limits: JobLimits | None = None) -> Job:
        job_id = f"b{next(self.ids)}"
        body = json.dumps({"jobId": job_id, "queryType": name, "query": event}).encode()
        return Job(job_id, name, body, limits or JobLimits())

    def run(self, name: str, event: Any, limits: JobLimits | None = None) -> tuple[Answer, float]:
        """Submit one job; its answer, and the moment ``on_answer`` received it."""
        self.pool.submit(self.job(name, event, limits))
        try:
            return self.answers.get(timeout=WAIT)
        except queue.Empty:
            raise BenchError(f"cmworker gave no answer to {name} within {WAIT:g} s") from None

    def call(self, name: str, event: Any) -> Any:
        answer, _ = self.run(name, event)
        self.in_pool.append(answer.queued + answer.wall)
        if answer.kind != "ok":
            raise BenchError(f"cmworker answered {answer.kind}: {answer.body[:200]!r}")
        return answer.body

    def submit(self, name: str, event: Any, done: Done) -> None:
        job = self.job(name, event)
        self.waiting[job.id] = done
        self.pool.submit(job)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


class MpPoolPeer(Peer):
    name = "multiprocessing.Pool"
    pool: Any = None

    def start(self) -> None:
        self.pool = multiprocessing.get_context("fork").Pool(WORKERS)

    def call(self, name: str, event: Any) -> Any:
        return self.pool.apply(function(name), (CONTEXT, event))

    def submit(self, name: str, event: Any, done: Done) -> None:
        self.pool.apply_async(function(name), (CONTEXT, event),
                              callback=lambda _: done(Outcome(time.monotonic())),
                              error_callback=lambda exc: done(Outcome(time.monotonic(), type(exc).__name__)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _future_outcome(future: concurrent.futures.Future[Any]) -> Outcome:
    now = time.monotonic()
    exc = future.exception()
    return Outcome(now, None if exc is None else type(exc).__name__)


class FuturesPeer(Peer):
    """An executor that hands out ``concurrent.futures.Future``s; subclasses make and close it."""

    executor: Any = None

    @abc.abstractmethod
    def make(self) -> Any: ...

    def start(self) -> None:
        self.executor = self.make()

    def schedule(self, name: str, event: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = self.executor.submit(function(name), CONTEXT, event)
        return future

    def call(self, name: str, event: Any) -> Any:
        return self.schedule(name, event).result(timeout=WAIT)

    def submit(self, name: str, event: Any, done: Done) -> None:
        self.schedule(name, event).add_done_callback(lambda future: done(_future_outcome(future)))


class ProcessPoolExecutorPeer(FuturesPeer):
    name = "ProcessPoolExecutor"

    def make(self) -> Any:
        return concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


class PebblePeer(FuturesPeer):
    name = "pebble.ProcessPool"

    def make(self) -> Any:
        return pebble.ProcessPool(max_workers=WORKERS, context=multiprocessing.get_context("fork"))

    def schedule(self, name: str, event: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = self.executor.schedule(function(name), (CONTEXT, event))
        return future

    def close(self) -> None:
        if self.executor is not None:
            self.executor.stop()
            self.executor.join(timeout=WAIT)


class LokyPeer(FuturesPeer):
    name = "loky"

    def make(self) -> Any:
        return loky.ProcessPoolExecutor(max_workers=WORKERS)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, kill_workers=True)


PEERS: tuple[type[Peer], ...] = (CmworkerPeer, MpPoolPeer, ProcessPoolExecutorPeer, PebblePeer, LokyPeer)


# -- references: not pools, the floor under any of them ---------------------------------------------


def _echo_bytes(mine: socket.socket, theirs: socket.socket) -> None:
    """The reference child: send back whatever arrives, until the parent closes its end."""
    theirs.close()  # else our copy of the parent's end keeps the pair open and EOF never comes
    while data := mine.recv(65536):
        mine.sendall(data)


class PingPongReference(Peer):
    """The job's JSON over a socketpair to a forked child that sends the bytes straight back: two process
    wake-ups per call, no protocol, no bookkeeping."""

    name = "floor: socketpair ping-pong"

    def start(self) -> None:
        self.sock, child_end = socket.socketpair()
        self.child = multiprocessing.get_context("fork").Process(target=_echo_bytes, args=(child_end, self.sock))
        self.child.start()
        child_end.close()

    def call(self, name: str, event: Any) -> Any:
        self.sock.sendall(json.dumps({"queryType": name, "query": event}).encode())
        return self.receive()

    def receive(self) -> bytes:
        return self.sock.recv(65536)

    def submit(self, name: str, event: Any, done: Done) -> None:
        raise NotImplementedError("a reference only does round trips")

    def close(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv; close alone would not
            self.sock.close()
        with contextlib.suppress(AttributeError):
            self.child.join(WAIT)
            if self.child.is_alive():
                self.child.kill()
                self.child.join()


class RelayReference(PingPongReference):
    """The same, in cmworker's shape: a reader thread receives the reply and hands it to the caller
    through a queue — three wake-ups per call (child, reader thread, caller)."""

    name = "floor: ping-pong + reader thread"

    def start(self) -> None:
        super().start()
        self.replies: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._read, name="relay-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.sock.recv(65536):
                self.replies.put(data)

    def receive(self) -> bytes:
        return self.replies.get(timeout=WAIT)

    def close(self) -> None:
        super().close()
        with contextlib.suppress(AttributeError):
            self.reader.join(WAIT)


REFERENCES: tuple[type[Peer], ...] = (PingPongReference, RelayReference)
