"""Runs a real Pool in a test and collects its answers, with a hard deadline on every wait."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from cmworker.limits import JobLimits
from cmworker.pool.jobs import Answer, Job, OutputLine, StreamItem
from cmworker.pool.options import PoolOptions
from cmworker.pool.supervisor import Pool
from cmworker.runtime.server import JOB_PATH

if TYPE_CHECKING:
    from cmworker.runtime.embedded import EmbeddedRuntime
    from cmworker.runtime.wire import Exchange

APPS = os.path.join(os.path.dirname(__file__), "apps")
WAIT = 30.0  # no single wait in a test may take longer than this


class Harness:
    def __init__(self, options: PoolOptions) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.items: dict[str, list[bytes]] = {}
        self.output: list[OutputLine] = []
        self.output_before: dict[str, int] = {}  # job id -> len(output) when its answer arrived
        self.cond = threading.Condition()
        self.ids = iter(range(10**9))
        self.started: list[str] = []  # job ids in the order they were sent to a worker
        self.pool = Pool(options, on_answer=self._on_answer, on_stream=self._on_stream, on_output=self._on_output,
                         on_start=self._on_start)

    def _on_start(self, job: Job) -> None:
        with self.cond:
            self.started.append(job.id)
            self.cond.notify_all()

    def wait_sent(self, job_id: str, timeout: float = WAIT) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: job_id in self.started, timeout):
                raise AssertionError(f"{job_id} was not sent to a worker within {timeout}s")

    def _on_answer(self, answer: Answer) -> None:
        with self.cond:
            self.output_before.setdefault(answer.job.id, len(self.output))
            self.answers.setdefault(answer.job.id, []).append(answer)
            self.cond.notify_all()

    def _on_stream(self, item: StreamItem) -> None:
        with self.cond:
            self.items.setdefault(item.job.id, []).append(item.data)

    def _on_output(self, line: OutputLine) -> None:
        with self.cond:
            self.output.append(line)

    def submit(self, function: str, query: Any = None, **limits: Any) -> str:
        job_id = f"job-{next(self.ids)}"
        body = json.dumps({"jobId": job_id, "queryType": function, "query": query}).encode()
        self.pool.submit(Job(job_id, function, body, JobLimits(**limits)))
        return job_id

    def wait(self, job_id: str, timeout: float = WAIT) -> Answer:
        with self.cond:
            if not self.cond.wait_for(lambda: job_id in self.answers, timeout):
                raise AssertionError(f"no answer for {job_id} within {timeout}s")
            return self.answers[job_id][0]

    def run(self, function: str, query: Any = None, **limits: Any) -> Answer:
        return self.wait(self.submit(function, query, **limits))

    def payload(self, answer: Answer) -> Any:
        return json.loads(answer.body)

    def wait_full_strength(self, timeout: float = WAIT) -> None:
        """Every worker alive and idle again."""
        deadline = time.monotonic() + timeout
        workers = self.pool.options.workers
        while time.monotonic() < deadline:
            if self.pool.available == workers and len(self.pool.worker_pids()) == workers:
                return
            time.sleep(0.01)
        raise AssertionError(f"pool not back to {self.pool.options.workers} idle workers: {self.pool.available}")

    def assert_answered_once(self) -> None:
        with self.cond:
            twice = {k: len(v) for k, v in self.answers.items() if len(v) != 1}
        assert not twice, f"jobs answered more than once: {twice}"


def descendants() -> set[int]:
    """Live (non-zombie) descendants of the test process."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def running(pid: int) -> bool:
    """Alive and not a zombie; a process that exits while it is looked at is not running."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: set[int], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if running(p)}
        if alive:
            time.sleep(0.01)
    assert not alive, f"processes left behind: {alive}"


@contextmanager
def running_pool(app: str = "misbehave.py", **kwargs: Any) -> Iterator[Harness]:
    """A started pool over ``tests/apps/<app>``; on exit it is closed and no process may remain.

    ``kwargs`` are ``PoolOptions``. Its workers run at the test's own priority unless ``worker_nice`` says
    otherwise: the tests share the machine, and nice-19 workers would wait behind every other program.
    """
    before = descendants()
    kwargs.setdefault("workers", 2)
    kwargs.setdefault("worker_nice", 0)
    harness = Harness(PoolOptions(app=os.path.join(APPS, app), **kwargs))
    harness.pool.start()
    try:
        yield harness
        harness.assert_answered_once()
    finally:
        harness.pool.close()
        wait_gone(descendants() - before)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = WAIT) -> None:
    """A served ``cmworker run`` (started in its own session): SIGTERM, then SIGKILL to its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def decoded_answer(rt: EmbeddedRuntime, job_id: str, timeout: float = WAIT) -> Any:
    """The JSON of a job's answer, once the runtime has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = rt.record.job(job_id)
        if snap is not None and snap.answer is not None:
            return json.loads(snap.answer)
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} was not answered")


@contextmanager
def cmworker_run(rt: EmbeddedRuntime, tmp: Path, config: str, *, app: str = "misbehave.py", workers: int = 2,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """``cmworker run`` of a test app against ``rt``, with ``config`` as its cmworker.toml and its output in
    ``tmp/run.log``; stopped (and waited for) on the way out."""
    (tmp / "cmworker.toml").write_text(config)
    log = open(tmp / "run.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmworker", "run", os.path.join(APPS, app), "--workers", str(workers),
         "--config", str(tmp / "cmworker.toml"), *args],
        env={**os.environ, **rt.env(0), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc, WAIT)
        log.close()


MakeBody = Callable[[dict[str, Any]], bytes]  # the real envelope (decoded) -> the body to send


class JobBodies:
    """Wraps one replica's real app: the job it hands out is real, the bytes of the GET body are the test's.

    ``bodies[n]`` makes the body of the job whose query has ``{key: n}``, from the real envelope (decoded).
    Everything else (holding the job, accepting exactly one result for it) is the runtime's own code.
    """

    def __init__(self, inner: Any, key: str = "case") -> None:
        self.inner = inner
        self.key = key
        self.bodies: dict[int, MakeBody] = {}

    def body_limit(self, exchange: Exchange) -> int:
        return int(self.inner.body_limit(exchange))

    def handle(self, exchange: Exchange) -> None:
        self.inner.handle(_OwnBody(exchange, self.bodies, self.key))


class _OwnBody:
    """An ``Exchange`` whose 200 answer to GET job carries the test's body instead of the runtime's."""

    def __init__(self, exchange: Exchange, bodies: dict[int, MakeBody], key: str) -> None:
        self._exchange = exchange
        self._bodies = bodies
        self._key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._exchange, name)

    def reply(self, status: int, body: bytes = b"", *args: Any, **kwargs: Any) -> None:
        if status == 200 and self._exchange.path == JOB_PATH:
            envelope = json.loads(body)
            query = envelope["computeModuleJobV1"]["query"]
            make = self._bodies.pop(query.get(self._key, -1), None) if isinstance(query, dict) else None
            if make is not None:
                body = make(envelope)
        self._exchange.reply(status, body, *args, **kwargs)


class ServedBodies:
    """``cmworker run`` of a test app with one worker, whose jobs' GET bodies the test makes (``JobBodies``):
    ``case(make)`` hands out one job with the body ``make(job_id)``, then a probe, and returns the case's
    id once the probe is answered. One worker: the probe is asked for only after the case's job is done,
    so the case is settled (answered, or given up as unanswerable) by then."""

    def __init__(self, rt: EmbeddedRuntime, raw: JobBodies, proc: subprocess.Popen[bytes], log: Path,
                 function: str, key: str, probe: Any) -> None:
        self.rt, self.raw, self.proc, self.log = rt, raw, proc, log
        self._function, self._key, self._probe = function, key, probe
        self._cases = itertools.count()

    def case(self, make: Callable[[str], bytes]) -> str:
        case = next(self._cases)
        self.raw.bodies[case] = lambda envelope: make(envelope["computeModuleJobV1"]["jobId"])
        job_id, probe = self.rt.store.submit([(self._function, {self._key: case}, "served"),
                                              (self._function, self._probe, "served")])
        [snap] = self.rt.store.wait_finished([probe], WAIT)
        assert self.proc.poll() is None, f"cmworker run exited ({self.proc.returncode}):\n{self.tail()}"
        assert snap is not None and snap.status == "done", f"the probe after the case was not answered:\n{self.tail()}"
        return job_id

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


S = TypeVar("S", bound=ServedBodies)


@contextmanager
def served_bodies(tmp: Path, app: str, function: str, key: str, probe: Any, cls: type[S]) -> Iterator[S]:
    """A ``cls`` (a ``ServedBodies``) serving ``app`` against its own runtime, with the cap off: a job
    refused as unanswerable stays held by the runtime, and must not block the next ones."""
    from cmworker.runtime.embedded import EmbeddedRuntime

    (tmp / "cmworker.toml").write_text('[limits]\ntimeout = "20s"\n')
    with EmbeddedRuntime(long_poll=0.5, cap=False) as rt, open(tmp / "run.log", "wb") as log:
        listener = rt.module_listener(0)
        raw = listener.app = JobBodies(listener.app, key=key)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cmworker", "run", os.path.join(APPS, app), "--workers", "1",
             "--config", str(tmp / "cmworker.toml")],
            env={**os.environ, **rt.env(0)}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield cls(rt, raw, proc, tmp / "run.log", function, key, probe)
        finally:
            stop_process(proc, WAIT)
