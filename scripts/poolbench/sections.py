"""The six measurements. Each returns raw samples (seconds, bytes); ``report.py`` judges and prints them.

Pools are started fresh for every round and closed right after it, so only one pool is alive at a time
and no pool's threads disturb another's timings; rounds rotate the order of the pools.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmworker.limits import JobLimits
from cmworker.pool.processes import tree_rss
from poolbench.peers import PEERS, REFERENCES, WAIT, BenchError, CmworkerPeer, Outcome, Peer, started
from poolbench.probes import (
    ExitWatcher,
    available_placements,
    children_cpu,
    percentile,
    placed,
    until_full,
    until_gone,
)

MiB = 2**20
GiB = 2**30
SCRIPT = Path(__file__).resolve().parents[1] / "bench_pool.py"


@dataclass(frozen=True)
class Sizes:
    rounds: int = 8              # interleaved round-trip rounds, the scheduler placing processes freely
    calls: int = 1500            # timed round trips per pool per round
    placement_rounds: int = 3    # more rounds with every process pinned, per placement
    placement_calls: int = 1000
    warmup: int = 300            # untimed round trips first
    jobs: int = 10000            # throughput jobs per pool per round
    throughput_rounds: int = 3
    window: int = 64             # jobs in flight at once
    crash_trials: int = 20       # per way of dying
    timeout_trials: int = 10     # per misbehaving function
    memory_trials: int = 3       # per allocation
    timeout: float = 0.2
    memory_limit: int = 512 * MiB
    allocation: int = 2 * GiB
    warm_up: int = 1 * GiB       # what the warm-up process allocates and frees before a "warmed" trial
    peer_crash_wait: float = 1.0  # how long to wait for a pool's answer to a dying task
    executor_rounds: int = 5     # executors: interleaved rounds, each a round trip and two maps
    executor_calls: int = 1500   # timed submit -> result round trips per executor per round
    map_calls: int = 20000       # calls in one timed map at chunksize 1
    map_chunksize: int = 100     # the larger chunksize
    chunked_map_calls: int = 200000  # calls in one timed map at that chunksize (2,000 chunks)


QUICK = Sizes(rounds=2, calls=200, placement_rounds=1, placement_calls=100, warmup=50, jobs=1000,
              throughput_rounds=1, crash_trials=3, timeout_trials=2, memory_trials=1, warm_up=256 * MiB,
              peer_crash_wait=0.5, executor_rounds=1, executor_calls=200, map_calls=2000,
              chunked_map_calls=20000)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rotated(items: Sequence[type[Peer]], by: int) -> list[type[Peer]]:
    """The pools in a different order each round, so that none always runs first or last."""
    k = by % len(items)
    return [*items[k:], *items[:k]]


# -- 1. no-op round trip ----------------------------------------------------------------------------


@dataclass
class Series:
    """Per-round samples of one pool (seconds), and what each round cost per call."""

    rounds: list[list[float]] = field(default_factory=list)
    costs: list[CallCost] = field(default_factory=list)

    @property
    def round_medians(self) -> list[float]:
        return [statistics.median(r) for r in self.rounds]

    @property
    def median(self) -> float:
        return statistics.median(self.round_medians)

    @property
    def p99(self) -> float:
        return statistics.median(percentile(r, 99) for r in self.rounds)


@dataclass(frozen=True)
class CallCost:
    """CPU seconds and page faults per timed call, over one round."""

    caller: float     # the calling thread (time.thread_time)
    threads: float    # every other thread of this process: the pool's own threads
    children: float   # every descendant process: workers, template, managers (psutil, 10 ms ticks)
    faults: float     # minor page faults in this process


class CostMeter:
    """Takes the CPU and fault counters before and after a stretch of calls."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float, int]:
        return (time.thread_time(), time.process_time(), children_cpu(),
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    def per_call(self, calls: int) -> CallCost:
        caller, process, children, faults = (b - a for a, b in zip(self.start, self._read(), strict=True))
        return CallCost(caller / calls, (process - caller) / calls, children / calls, faults / calls)


IN_POOL = "cmworker: Job made -> Answer made"
FREE = "free"


def round_trips(peer: Peer, sizes: Sizes, calls: int, placement: str = FREE) -> tuple[list[float], CallCost]:
    """Warm up, then time ``calls`` round trips, the processes pinned as ``placement`` says."""
    for i in range(sizes.warmup):
        peer.call("echo", {"i": i})
    samples = []
    with placed(placement):
        meter = CostMeter()
        for i in range(calls):
            start = time.monotonic()
            peer.call("echo", {"i": i})
            samples.append(time.monotonic() - start)
        cost = meter.per_call(calls)
    return samples, cost


def _round(results: dict[str, Series], sizes: Sizes, r: int, calls: int, placement: str) -> None:
    contenders = (*PEERS, *REFERENCES)
    for cls in rotated(contenders, r):
        with started(cls()) as peer:
            samples, cost = round_trips(peer, sizes, calls, placement)
            results[cls.name].rounds.append(samples)
            results[cls.name].costs.append(cost)
            if isinstance(peer, CmworkerPeer) and placement == FREE:
                results[IN_POOL].rounds.append(peer.in_pool[-calls:])


def measure_round_trip(sizes: Sizes) -> dict[str, dict[str, Series]]:
    """Pools and references, rotated each round; by placement, ``free`` (the scheduler's choice) first.

    On a VM a wake-up costs much less when the woken process runs on the waker's CPU, so a round trip
    depends on where the scheduler happens to put the processes; the pinned placements show both ends.
    cmworker also reports how much of its round trip passed inside the pool (its own ``Answer.queued +
    wall``): the rest is handing the answer over to the caller.
    """
    names = [cls.name for cls in (*PEERS, *REFERENCES)]
    results = {placement: {name: Series() for name in names} for placement in (FREE, *available_placements())}
    results[FREE][IN_POOL] = Series()
    for r in range(sizes.rounds):
        _round(results[FREE], sizes, r, sizes.calls, FREE)
        progress(f"round trip: round {r + 1}/{sizes.rounds} done")
    for r in range(sizes.placement_rounds):
        for placement in available_placements():
            _round(results[placement], sizes, r, sizes.placement_calls, placement)
        progress(f"round trip, pinned: round {r + 1}/{sizes.placement_rounds} done")
    return results


# -- 2. throughput ----------------------------------------------------------------------------------


@dataclass
class ThroughputSample:
    jobs_per_s: float
    cost: CallCost       # per job


def jobs_per_second(peer: Peer, jobs: int, window: int) -> ThroughputSample:
    """Keep ``window`` no-op jobs in flight until ``jobs`` are done."""
    free = threading.Semaphore(window)
    finished = threading.Event()
    counter = itertools.count(1)
    errors: list[str] = []

    def done(outcome: Outcome) -> None:
        if outcome.error is not None:
            errors.append(outcome.error)
        free.release()
        if next(counter) == jobs:
            finished.set()

    meter = CostMeter()
    start = time.monotonic()
    for i in range(jobs):
        if not free.acquire(timeout=WAIT):
            raise BenchError(f"{peer.name}: no job finished within {WAIT:g} s")
        peer.submit("echo", {"i": i}, done)
    if not finished.wait(WAIT):
        raise BenchError(f"{peer.name}: not all {jobs} jobs finished")
    elapsed = time.monotonic() - start
    cost = meter.per_call(jobs)
    if errors:
        raise BenchError(f"{peer.name}: {len(errors)} no-op jobs failed, e.g. {errors[0]}")
    return ThroughputSample(jobs / elapsed, cost)


def measure_throughput(sizes: Sizes) -> dict[str, list[ThroughputSample]]:
    results: dict[str, list[ThroughputSample]] = {cls.name: [] for cls in PEERS}
    for r in range(sizes.throughput_rounds):
        for cls in rotated(PEERS, r):
            with started(cls()) as peer:
                for i in range(sizes.warmup):
                    peer.call("echo", {"i": i})
                results[cls.name].append(jobs_per_second(peer, sizes.jobs, sizes.window))
        progress(f"throughput: round {r + 1}/{sizes.throughput_rounds} done")
    return results


# -- 3a. what each pool does with a dying task ------------------------------------------------------


@dataclass
class CrashBehaviour:
    pool: str
    answer: str              # what came back within the wait, or that nothing did
    latency: float | None    # seconds from the task's death to that answer
    usable: str              # does a no-op job still run afterwards


def _outcome_within(peer: Peer, name: str, event: Any, timeout: float) -> Outcome | None:
    got: list[Outcome] = []
    arrived = threading.Event()

    def done(outcome: Outcome) -> None:
        got.append(outcome)
        arrived.set()

    try:
        peer.submit(name, event, done)
    except Exception as exc:  # a broken pool refuses at submit
        return Outcome(time.monotonic(), f"{type(exc).__name__} at submit")
    arrived.wait(timeout)
    return got[0] if got else None


def crash_behaviour(cls: type[Peer], stamp: Path, wait: float) -> CrashBehaviour:
    with started(cls()) as peer:
        peer.call("echo", {"i": 0})
        outcome = _outcome_within(peer, "die_exit", {"stamp": str(stamp)}, wait)
        died = float(stamp.read_text())
        if outcome is None:
            answer, latency = f"none within {wait:g} s (job lost)", None
        else:
            answer, latency = outcome.error or "a result (?)", outcome.at - died
        after = _outcome_within(peer, "echo", {"i": 1}, 5.0)
    usable = "no (no answer in 5 s)" if after is None else "yes" if after.error is None else f"no ({after.error})"
    return CrashBehaviour(cls.name, answer, latency, usable)


def measure_crash_behaviour(sizes: Sizes, tmp: Path) -> list[CrashBehaviour]:
    rows = [crash_behaviour(cls, tmp / f"crash-{cls.name}", sizes.peer_crash_wait) for cls in PEERS]
    progress("crash behaviour done")
    return rows


# -- 3b, 4. cmworker: death -> answer, and respawn --------------------------------------------------


@dataclass
class DeathSample:
    to_exit: float      # stamp written -> the kernel reports the process gone (pidfd)
    to_answer: float    # stamp written -> on_answer called
    to_ready: float     # stamp written -> pool.available back to full: the replacement is ready


# label -> (function, modules the template imports before forking). The preload row is a diagnostic:
# a worker imports cmworker.pool.worker after the fork unless the template already has.
DEATHS = {
    "os._exit(3)": ("die_exit", ()),
    "SIGSEGV": ("die_segfault", ()),
    "os._exit(3), preload=cmworker.pool.worker": ("die_exit", ("cmworker.pool.worker",)),
}


def one_death(peer: CmworkerPeer, name: str, stamp: Path) -> DeathSample:
    until_full(peer.pool, pause=0.001)
    with ExitWatcher(peer.pool.worker_pids()) as watcher:
        answer, answered = peer.run(name, {"stamp": str(stamp)})
        ready = until_full(peer.pool)
        if answer.kind != "worker_died" or answer.pid is None:
            raise BenchError(f"{name} was answered {answer.kind}, not worker_died: {answer.body[:200]!r}")
        exited = watcher.wait(answer.pid)
    died = float(stamp.read_text())
    return DeathSample(exited - died, answered - died, ready - died)


def measure_deaths(sizes: Sizes, tmp: Path) -> dict[str, list[DeathSample]]:
    results: dict[str, list[DeathSample]] = {}
    for label, (name, preload) in DEATHS.items():
        with started(CmworkerPeer(preload)) as peer:
            assert isinstance(peer, CmworkerPeer)
            peer.call("echo", {"i": 0})
            results[label] = [one_death(peer, name, tmp / f"death-{name}-{i}") for i in range(sizes.crash_trials)]
    progress("deaths done")
    return results


# -- 5. timeout kill lateness -----------------------------------------------------------------------


@dataclass
class KillSample:
    answer_late: float  # deadline -> on_answer called
    gone_late: float    # deadline -> the kernel reports the process gone (pidfd)
    wall: float         # the pool's own dispatch -> answer


HANGS = ("sleep_forever", "busy_ignoring_sigterm")


def one_timeout(peer: CmworkerPeer, name: str, timeout: float) -> KillSample:
    until_full(peer.pool, pause=0.001)
    with ExitWatcher(peer.pool.worker_pids()) as watcher:
        answer, answered = peer.run(name, None, JobLimits(timeout=timeout))
        if answer.kind != "timeout" or answer.pid is None:
            raise BenchError(f"{name} was answered {answer.kind}, not timeout: {answer.body[:200]!r}")
        gone = watcher.wait(answer.pid)
    deadline = answer.job.submitted + answer.queued + timeout  # dispatch + timeout, by the pool's clock
    return KillSample(answered - deadline, gone - deadline, answer.wall)


def measure_timeouts(sizes: Sizes) -> dict[str, list[KillSample]]:
    results: dict[str, list[KillSample]] = {}
    with started(CmworkerPeer()) as peer:
        assert isinstance(peer, CmworkerPeer)
        peer.call("echo", {"i": 0})
        for name in HANGS:
            results[name] = [one_timeout(peer, name, sizes.timeout) for _ in range(sizes.timeout_trials)]
    progress("timeouts done")
    return results


# -- 6. memory overshoot ----------------------------------------------------------------------------


@dataclass
class MemorySample:
    kind: str
    rss_bytes: int       # what the sampler saw when it killed the job (the answer's detail)
    max_rss: int         # Answer.max_rss
    kernel_peak: int     # ru_maxrss of the trial's whole process tree, from wait4: the true peak
    baseline: int        # an idle worker's RSS before the job
    wall: float          # dispatch -> answer

    @property
    def growth(self) -> float:
        """Average growth from dispatch to the sample that killed the job, bytes per second."""
        return (self.rss_bytes - self.baseline) / self.wall if self.wall > 0 else 0.0


# How fast a job's RSS can grow is set by the page-fault rate, and on a VM that depends on whether the
# guest's free memory was touched before (a first touch also faults in the host). So each allocation also
# runs right after a warm-up process has allocated and freed memory the same way, and the growth rate the
# job actually reached is reported beside its peak. The THP row is a diagnostic: memory backed by
# transparent huge pages faults in 2 MiB at a time, about as fast as a job can grow.
_WARM_UP_CODE = ("import sys; from bench_apps import noop_app; "
                 "getattr(noop_app, sys.argv[1])(None, {'bytes': int(sys.argv[2])})")
TARGET_ALLOCATIONS = ("bytes * n", "bytes * n, warmed")
ALLOCATIONS = {
    TARGET_ALLOCATIONS[0]: ("allocate_fast", False),
    TARGET_ALLOCATIONS[1]: ("allocate_fast", True),
    "THP memset, warmed (diagnostic)": ("allocate_hugepages", True),
}


def memory_trial_child(name: str, limit: int, size: int) -> None:
    """Runs in a child process of its own, so that its ``wait4`` rusage holds the killed worker's peak.

    The job is the first of a fresh pool: no worker has held more memory before it.
    """
    with started(CmworkerPeer()) as peer:
        assert isinstance(peer, CmworkerPeer)
        baseline = max(tree_rss(pid) for pid in peer.pool.worker_pids())
        answer, _ = peer.run(name, {"bytes": size}, JobLimits(memory_limit=limit, timeout=WAIT))
        # The pool respawns as soon as it kills; wait until it has also heard that the killed worker was
        # reaped (the slot is gone), so that the worker's rusage is in the template's totals, and the
        # template's in ours once the pool closes.
        if answer.pid is not None:
            until_gone(peer.pool, answer.pid)
        payload = json.loads(answer.body)
    print(json.dumps({"kind": answer.kind, "rss_bytes": payload.get("rss_bytes", 0), "max_rss": answer.max_rss,
                      "baseline": baseline, "wall": answer.wall}))


def memory_trial(name: str, warm_up: int, limit: int, size: int) -> MemorySample:
    if warm_up:  # in a process of its own: its peak must not count in the trial's rusage
        subprocess.run([sys.executable, "-c", _WARM_UP_CODE, name, str(warm_up)], cwd=SCRIPT.parent, check=True,
                       timeout=2 * WAIT)
    child = subprocess.Popen([sys.executable, str(SCRIPT), "--memory-trial", name, str(limit), str(size)],
                             stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(2 * WAIT, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None
        out = child.stdout.read()
        child.stdout.close()
        _, status, usage = os.wait4(child.pid, 0)
    finally:
        watchdog.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, with its rusage, not by Popen
    if child.returncode != 0 or not out.strip():
        raise BenchError(f"the memory trial failed (exit {child.returncode}): {out!r}")
    got = json.loads(out.strip().splitlines()[-1])
    return MemorySample(kernel_peak=usage.ru_maxrss * 1024, **got)


def measure_memory(sizes: Sizes) -> dict[str, list[MemorySample]]:
    results: dict[str, list[MemorySample]] = {label: [] for label in ALLOCATIONS}
    for _ in range(sizes.memory_trials):
        for label, (name, warm) in ALLOCATIONS.items():
            warm_up = sizes.warm_up if warm else 0
            results[label].append(memory_trial(name, warm_up, sizes.memory_limit, sizes.allocation))
    progress("memory done")
    return results
