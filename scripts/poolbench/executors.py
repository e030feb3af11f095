"""``cmworker.Executor`` beside the executors it stands in for: submit round trip and ``map`` throughput.

Every executor has two workers and runs the same importable no-op (``bench_apps.noop_app.echo``), sent by
reference. Each is used through its documented calls: ``submit(fn, *args).result()`` (pebble:
``schedule(fn, args)``), and ``map(fn, *iterables, chunksize=...)`` iterated to the end (pebble's returns a
future whose result is the iterator). Executors are started fresh for every round and the order rotates,
as in ``sections.py``; the numbers are compared within a run.
"""

from __future__ import annotations

import abc
import concurrent.futures
import itertools
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import loky
import pebble
from bench_apps import noop_app

import cmworker
from poolbench.peers import WAIT, WORKERS, BenchError
from poolbench.sections import CostMeter, Series, Sizes, progress

ECHO: Callable[[Any, Any], Any] = noop_app.echo


class Contender(abc.ABC):
    """One executor: made, asked for one call at a time or for a whole ``map``, always closed."""

    name: ClassVar[str]
    executor: Any = None

    @abc.abstractmethod
    def start(self) -> None: ...

    def submit(self, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = self.executor.submit(ECHO, *args)
        return future

    def map(self, n: int, chunksize: int) -> Iterator[Any]:
        results: Iterator[Any] = self.executor.map(ECHO, itertools.repeat(None, n), range(n), chunksize=chunksize)
        return results

    @abc.abstractmethod
    def close(self) -> None: ...


class CmworkerExecutor(Contender):
    name = "cmworker.Executor"

    def start(self) -> None:
        self.executor = cmworker.Executor(WORKERS)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


class ProcessPoolExecutorContender(Contender):
    name = "ProcessPoolExecutor"

    def start(self) -> None:
        self.executor = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


class LokyContender(Contender):
    name = "loky"

    def start(self) -> None:
        self.executor = loky.ProcessPoolExecutor(max_workers=WORKERS)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, kill_workers=True)


class PebbleContender(Contender):
    name = "pebble.ProcessPool"

    def start(self) -> None:
        self.executor = pebble.ProcessPool(max_workers=WORKERS, context=multiprocessing.get_context("fork"))

    def submit(self, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = self.executor.schedule(ECHO, args)
        return future

    def map(self, n: int, chunksize: int) -> Iterator[Any]:
        future = self.executor.map(ECHO, itertools.repeat(None, n), range(n), chunksize=chunksize)
        results: Iterator[Any] = future.result()
        return results

    def close(self) -> None:
        if self.executor is not None:
            self.executor.stop()
            self.executor.join(timeout=WAIT)


CONTENDERS: tuple[type[Contender], ...] = (CmworkerExecutor, ProcessPoolExecutorContender, LokyContender,
                                           PebbleContender)
OURS = CmworkerExecutor.name


@dataclass
class MapSample:
    calls_per_s: float
    parent_cpu: float     # CPU seconds of this process (every thread) per call
    children_cpu: float   # CPU seconds of every descendant per call


@dataclass
class ExecutorResults:
    round_trip: dict[str, Series] = field(default_factory=dict)
    # chunksize -> executor -> one sample per round
    throughput: dict[int, dict[str, list[MapSample]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"round_trip": self.round_trip,
                "throughput": {f"chunksize {c}": by_name for c, by_name in self.throughput.items()}}


def _round_trips(contender: Contender, sizes: Sizes) -> tuple[list[float], Any]:
    for i in range(sizes.warmup):
        contender.submit(None, i).result(timeout=WAIT)
    samples = []
    meter = CostMeter()
    for i in range(sizes.executor_calls):
        start = time.monotonic()
        value = contender.submit(None, i).result(timeout=WAIT)
        samples.append(time.monotonic() - start)
        if value != i:
            raise BenchError(f"{contender.name} returned {value!r} for {i}")
    return samples, meter.per_call(sizes.executor_calls)


def _throughput(contender: Contender, n: int, chunksize: int) -> MapSample:
    deadline = time.monotonic() + 4 * WAIT
    meter = CostMeter()
    start = time.monotonic()
    count = 0
    for count, value in enumerate(contender.map(n, chunksize), 1):
        if time.monotonic() > deadline:
            raise BenchError(f"{contender.name}: map of {n} calls did not finish in {4 * WAIT:g} s")
        if value != count - 1:
            raise BenchError(f"{contender.name}: map gave {value!r} at position {count - 1}")
    elapsed = time.monotonic() - start
    if count != n:
        raise BenchError(f"{contender.name}: map gave {count} results for {n} calls")
    cost = meter.per_call(n)
    return MapSample(n / elapsed, cost.caller + cost.threads, cost.children)


def measure_executors(sizes: Sizes) -> ExecutorResults:
    results = ExecutorResults(round_trip={cls.name: Series() for cls in CONTENDERS},
                              throughput={c: {cls.name: [] for cls in CONTENDERS} for c in (1, sizes.map_chunksize)})
    for r in range(sizes.executor_rounds):
        k = r % len(CONTENDERS)
        for cls in (*CONTENDERS[k:], *CONTENDERS[:k]):
            contender = cls()
            try:
                contender.start()
                samples, cost = _round_trips(contender, sizes)
                results.round_trip[cls.name].rounds.append(samples)
                results.round_trip[cls.name].costs.append(cost)
                for chunksize in results.throughput:
                    n = sizes.map_calls if chunksize == 1 else sizes.chunked_map_calls
                    list(contender.map(sizes.warmup, chunksize))
                    results.throughput[chunksize][cls.name].append(_throughput(contender, n, chunksize))
            finally:
                contender.close()
        progress(f"executors: round {r + 1}/{sizes.executor_rounds} done")
    return results


def median_rate(samples: list[MapSample]) -> float:
    return statistics.median(s.calls_per_s for s in samples)
