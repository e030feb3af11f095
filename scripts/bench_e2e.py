#!/usr/bin/env python3
"""cmworker against the official SDK on the same embedded runtime, in one run, rounds interleaved.

Both clients serve the same six functions (scripts/bench_apps/e2e_cmworker.py and e2e_sdk.py, whose
work lives in e2e_work.py) as real subprocesses, ``W`` workers each (``cmworker run APP --workers W`` /
the SDK app with ``MAX_CONCURRENT_TASKS=W``), each session against a fresh ``EmbeddedRuntime`` running
in this process (``max_concurrent_tasks=W``). Jobs are queued in-process (``runtime.store.submit``) and
their answers awaited on the runtime's own event (``store.wait_finished``), so no caller HTTP stack is
inside any measured time: what is timed is queue -> client -> answer recorded by the runtime.

Measured per session, and rounds alternate the order of the clients (each group of rows can be run alone:
``--only noop,cpu,stream,logging,transport,payload,waiting,pin``):
  1. no-op burst: jobs/s and client CPU per job. Client CPU is user + system time of the client's whole
     process tree: every process in the tree is sampled before and after the burst, each sample being
     its own time plus its reaped children's (``children_user/system``); the CPU of the burst is
     sum(after) - sum(before). A process that starts during the burst counts in full, one that exits is
     reaped by a tree member whose ``children_*`` then carry its time, so nothing is lost or counted twice.
     psutil reads /proc in clock ticks (10 ms per process), so a 2,000-job burst is accurate to ~1 %.
     The emulator's own CPU (this process minus the waiting main thread) is reported beside it.
  2. idle latency: one no-op at a time, queued -> answer recorded, median;
  3. CPU-bound efficiency: batches of N jobs of ~50 ms of pure-Python work, each client batch next to a
     batch of the same work on a bare ``multiprocessing.Pool(W)`` (forkserver) that lives in this process
     for the whole run, in the order bare, client, client, bare, ... Efficiency is the bare pool's wall
     time over the client's, summed over one session's batches. (Measured seconds apart, as one bare run
     per round once was, the ratio swung by ±15 % with the speed of this shared VM: it drifts by a
     quarter within a minute.) Batches are short (20 jobs, ~0.5 s) and many (12 + 12 per session) so
     that each pair sees nearly the same machine; the start and end of a batch, which a longer batch
     would dilute, count against the client as much as against the bare pool. Each job answers when it
     started and ended and which pid ran it (``e2e_work.spin_timed``), so the time a worker sat idle
     between two jobs is measured directly, apart from the jobs' own length (which follows the VM's speed).
  4. streaming: a paced stream (3 items, 50 ms apart) and a 1,000-item stream. The generator writes
     ``time.monotonic()`` at its start, just before yielding item 0 and after its last item; the runtime
     records when the first chunk of the chunked POST arrived (``ResultPost.first_chunk_at``), and this
     process notes when the whole answer was recorded. CLOCK_MONOTONIC is system-wide, so the three
     processes' clocks agree.
And once per round:
  - a logging session: what INFO logs cost against WARN (``logging_cost``);
  - a payload session (``payload_session``): the thin reference client (scripts/bench_apps/e2e_thin.py:
    one loop, one keep-alive ``http.client`` connection, no pool: GET job, run it, POST result), the
    SDK and cmworker, alive at once on a runtime each, take turns job by job: a 20 MB query echoed and a
    20 MB result from a small query, timed against the thin client (the wire-speed floor), with the CPU
    of each client's parent process per MB moved apart from its other processes'; before that, the
    cmworker parent's RSS before and after three 50 MB echoes;
  - a waiting session per worker count (2, 8 and 32; ``--waiting-workers``) and client
    (``waiting_session``): jobs that sleep 20 ms, batches alternated with a bare ``multiprocessing.Pool``
    of the same size as the CPU-bound ones are; efficiency, and the hand-off (a worker's idle time
    between two consecutive jobs, from the [start, end, pid] each job answers) as median and p90;
  - a pinned session per client (``pinned_session``, or ``--pin`` alone): the CPU-bound batches with 1
    worker while every thread of this process (the runtime) runs on CPU 1 and the client's process tree
    and a bare pool's worker on CPU 0 (``os.sched_setaffinity``), as in Foundry, where the runtime is
    another container.
Once, after the rounds: CPU per GET job + POST result cycle (keep-alive, TLS) with requests, urllib3,
http.client and cmworker's own Service, in this process against a fresh emulator: the calling thread's CPU
(``time.thread_time``: the client alone) and the process's (``time.process_time``: client + emulator).

    .venv/bin/python scripts/bench_e2e.py [--quick] [--rounds N] [--workers W] [--json FILE] [--strict]
        [--only GROUP,...] [--pin] [--waiting-workers 2,8,32] [--report [DIR]]

Exits 0 whether or not the targets are met (``--strict``: 1 on a miss); non-zero when the benchmark
itself fails. Client subprocesses are always stopped: SIGTERM, then SIGKILL for whatever is left.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import io
import itertools
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
import urllib3

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "scripts" / "bench_apps"
sys.path.insert(0, str(APPS))

import e2e_work  # noqa: E402

from cmworker.replica.service import Service, discover, ssl_context  # noqa: E402
from cmworker.runtime.client import decode_answer  # noqa: E402
from cmworker.runtime.embedded import DEFAULT_USER_ID, EmbeddedRuntime  # noqa: E402

CLIENTS = {"sdk": "official SDK 0.34.0", "cmworker": "cmworker", "cmworker_warn": "cmworker, WARN logs",
           "cmworker_nice0": "cmworker, worker_nice = 0", "thin": "thin client (one loop, http.client)"}
# Row groups, each selectable alone with --only; the default runs them all.
GROUPS = {
    "noop": "no-op burst and idle latency (cmworker and the SDK)",
    "cpu": "CPU-bound batches, co-located, against a bare pool (and cmworker with worker_nice = 0)",
    "stream": "streaming: a paced stream and a 1,000-item stream",
    "logging": "cmworker at INFO against WARN, paired",
    "transport": "CPU per GET + POST cycle of five HTTP stacks, in this process",
    "payload": "large query echoed and large result, against the thin client; parent CPU per MB; parent RSS",
    "waiting": "jobs that sleep, 2/8/32 workers, against bare pools of the same size; the hand-off",
    "pin": "CPU-bound, 1 worker, the runtime on CPU 1 and the client (and a bare pool) on CPU 0",
}
STOP_GRACE = 15.0
# The runtimes' long poll. cmworker leaves on SIGTERM once its parked GET has come back, so the end of every
# session waits up to this long (5 s, the emulator's default, cost 5 s per session). No measured job waits
# for a poll to expire: a burst or batch is queued at once, and a client idle between two of them for longer
# than this only sends one more GET, which answers 204.
LONG_POLL = 1.0
STARTED: list[tuple[int, float]] = []  # (pid, create time) of every client process seen: --json lists them
WAIT = 600.0


@dataclass(frozen=True)
class Sizes:
    rounds: int
    burst: int            # no-op jobs in one burst
    latency_calls: int    # one-at-a-time no-op calls
    cpu_jobs: int         # CPU-bound jobs of ~job_ms each, per batch
    cpu_pairs: int        # bare-pool and client batches per session, each
    job_ms: float
    payload_mb: int
    payload_reps: int
    stream_items: int
    stream_reps: int      # 1,000-item streams per session
    paced_reps: int       # paced streams per session (first item on the wire)
    transport_cycles: int  # GET+POST cycles per stack and round
    log_pairs: int        # no-op bursts at INFO and at WARN in the logging session, each (0: no such session)
    log_burst: int        # no-op jobs in one of those bursts
    nice0_session: bool   # an extra cmworker CPU-bound run with worker_nice = 0
    rss_mb: int           # the size of each large echo after which the cmworker parent's RSS is read
    rss_jobs: int         # how many of them
    wait_ms: float        # what each job of the waiting row sleeps
    wait_per_worker: int  # jobs per worker in one waiting batch
    wait_pairs: int       # bare-pool and client waiting batches per session, each
    pin_pairs: int        # bare-pool and client CPU-bound batches per pinned session, each


FULL = Sizes(rounds=3, burst=2000, latency_calls=200, cpu_jobs=20, cpu_pairs=12, job_ms=50, payload_mb=20,
             payload_reps=3, stream_items=1000, stream_reps=5, paced_reps=10, transport_cycles=1000,
             log_pairs=8, log_burst=500, nice0_session=True, rss_mb=50, rss_jobs=3, wait_ms=20, wait_per_worker=10,
             wait_pairs=6, pin_pairs=6)
QUICK = Sizes(rounds=1, burst=200, latency_calls=30, cpu_jobs=6, cpu_pairs=1, job_ms=50, payload_mb=2,
              payload_reps=1, stream_items=1000, stream_reps=2, paced_reps=3, transport_cycles=150,
              log_pairs=2, log_burst=200, nice0_session=False, rss_mb=5, rss_jobs=3, wait_ms=20, wait_per_worker=3,
              wait_pairs=1, pin_pairs=1)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the client under test: a subprocess tree -------------------------------------------------------


class Tree:
    """CPU accounting for a client's process tree (see the module docstring for why this is exact)."""

    def __init__(self, root: psutil.Process, kind: str) -> None:
        self.root = root
        self.kind = kind

    def role(self, depth: int) -> str:
        if depth == 0:
            return "parent"
        return "template" if self.kind.startswith("cmworker") and depth == 1 else "workers"

    def sample(self) -> dict[tuple[int, float], tuple[str, float]]:
        out: dict[tuple[int, float], tuple[str, float]] = {}
        todo = [(self.root, 0)]
        while todo:
            proc, depth = todo.pop()
            try:
                key = (proc.pid, proc.create_time())
                t = proc.cpu_times()
                out[key] = (self.role(depth), t.user + t.system + t.children_user + t.children_system)
                todo.extend((child, depth + 1) for child in proc.children())
            except psutil.Error:
                continue
        return out

    @staticmethod
    def used(before: dict[tuple[int, float], tuple[str, float]],
             after: dict[tuple[int, float], tuple[str, float]]) -> dict[str, float]:
        by_role: dict[str, float] = defaultdict(float)
        for role, cpu in after.values():
            by_role[role] += cpu
        for role, cpu in before.values():
            by_role[role] -= cpu
        by_role["total"] = sum(by_role.values())
        return dict(by_role)


class Meter:
    """Wall time, client tree CPU and the emulator's CPU (this process, minus the waiting main thread)."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree

    def __enter__(self) -> Meter:
        self._before = self.tree.sample()
        self._proc, self._thread = time.process_time(), time.thread_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.runtime_cpu = (time.process_time() - self._proc) - (time.thread_time() - self._thread)
        self.cpu = Tree.used(self._before, self.tree.sample())


@contextlib.contextmanager
def serving(kind: str, rt: EmbeddedRuntime, workers: int, workdir: Path, tag: str,
            launcher: tuple[str, ...] = (sys.executable, "-m", "cmworker"), cpus: set[int] | None = None,
            extra_env: dict[str, str] | None = None) -> Iterator[Tree]:
    """The client ``kind`` serving ``rt`` until the block ends; cmworker is started as ``launcher run APP``.
    ``cpus``: the whole client tree runs on these CPUs only (set before the client's interpreter starts,
    so every process it forks inherits it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMWORKER_")}
    env.update(rt.env(0))
    env["MAX_CONCURRENT_TASKS"] = str(workers)
    if kind == "cmworker_nice0":  # the workers at the parent's CPU priority: what worker_nice buys
        env["CMWORKER_WORKER_NICE"] = "0"
    env.update(extra_env or {})
    if kind == "sdk":
        cmd = [sys.executable, str(APPS / "e2e_sdk.py")]
    elif kind == "thin":
        cmd = [sys.executable, str(APPS / "e2e_thin.py")]
        env["THIN_LOOPS"] = str(workers)  # one loop per worker the others have: the waiting row's floor
    else:
        cmd = [*launcher, "run", str(APPS / "e2e_cmworker.py"), "--workers", str(workers),
               "--log-level", "WARN" if kind == "cmworker_warn" else "INFO"]
    if cpus is not None:  # an interpreter that pins itself and execs the client: no preexec_fn in a threaded process
        pin = ("import os, sys; os.sched_setaffinity(0, map(int, sys.argv[1].split(','))); "
               "os.execv(sys.argv[2], sys.argv[2:])")
        cmd = [sys.executable, "-c", pin, ",".join(map(str, sorted(cpus))), *cmd]
    log_path = workdir / f"{tag}.log"
    with open(log_path, "wb") as log:
        # Its own session: the SDK's pool workers outlive a parent killed by SIGTERM unless signalled too.
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            ready = rt.submit("noop", None)
            deadline = time.monotonic() + 120
            while rt.store.wait_finished([ready], 0.2)[0].status != "done":  # type: ignore[union-attr]
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{kind} did not come up (exit {proc.poll()}); its output ends:\n{tail}")
            yield Tree(psutil.Process(proc.pid), kind)
        finally:
            stop(proc, kind)


def stop(proc: subprocess.Popen[bytes], kind: str) -> None:
    """SIGTERM (cmworker: its parent, as the platform does; the SDK: its process group), then SIGKILL
    for every process of the tree still there after the grace. Only processes this run started."""
    try:
        parent = psutil.Process(proc.pid)
        members = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        members = []
    for member in members:
        with contextlib.suppress(psutil.Error):
            STARTED.append((member.pid, member.create_time()))
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if kind == "sdk":
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE)
    if proc.poll() is None:  # not reaped yet, so its process group id is still ours
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, alive = psutil.wait_procs(members, timeout=5)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            member.kill()  # psutil refuses a pid that was reused by another process
    if alive:
        progress(f"warning: {len(alive)} process(es) of {kind} outlived SIGTERM and were killed")


# -- measurements inside one client session ---------------------------------------------------------


def run_jobs(rt: EmbeddedRuntime, calls: list[tuple[str, Any]]) -> list[bytes]:
    """Queue the calls at once and wait until the runtime has every answer; each must be a success."""
    ids = rt.store.submit([(function, query, DEFAULT_USER_ID) for function, query in calls])
    snaps = rt.store.wait_finished(ids, WAIT)
    answers = []
    for snap in snaps:
        if snap is None or snap.status != "done" or snap.answer is None:
            status = None if snap is None else (snap.status, (snap.answer or b"")[:300])
            raise RuntimeError(f"a {calls[0][0]} job did not succeed: {status}")
        answers.append(snap.answer)
    return answers


class SlotLog:
    """When the emulator hands each job out and when its answer is recorded (wraps the store's methods in
    this process; the client is untouched). From it: how long each job held its slot, and how long a
    slot stayed empty between an answer and the next hand-out while work was queued."""

    def __init__(self, rt: EmbeddedRuntime) -> None:
        self.taken: dict[str, float] = {}
        self.posted: dict[str, float] = {}
        store = rt.store
        take, post_result = store.take, store.post_result

        def timed_take(*args: Any, **kwargs: Any) -> Any:
            job = take(*args, **kwargs)
            if job is not None:
                self.taken[job.id] = time.monotonic()
            return job

        def timed_post(replica: int, job_id: str, *args: Any, **kwargs: Any) -> tuple[int, str]:
            result = post_result(replica, job_id, *args, **kwargs)
            if result[0] == 204:
                self.posted[job_id] = time.monotonic()
            return result

        store.take = timed_take  # type: ignore[method-assign]
        store.post_result = timed_post  # type: ignore[method-assign]

    def clear(self) -> None:
        self.taken.clear()
        self.posted.clear()

    def summary(self) -> dict[str, float]:
        takes = sorted(self.taken.values())
        held = [self.posted[j] - t for j, t in self.taken.items() if j in self.posted]
        gaps = []
        for posted in sorted(self.posted.values()):
            later = [t for t in takes if t >= posted]
            if later:
                gaps.append(later[0] - posted)
        return {"held_ms": statistics.median(held) * 1e3 if held else float("nan"),
                "turnaround_ms": statistics.median(gaps) * 1e3 if gaps else float("nan")}


def session(kind: str, sizes: Sizes, workers: int, spin_n: int, workdir: Path, tag: str, bare: BarePool,
            groups: set[str]) -> dict[str, Any]:
    """The selected groups' measurements for the SDK and cmworker (no-op, CPU-bound, streaming); only the
    CPU-bound batches for cmworker_nice0; for "logging", the INFO and WARN bursts (``logging_cost``)."""
    if kind == "logging":
        return logging_cost(sizes, workers, workdir, tag)
    out: dict[str, Any] = {}
    with EmbeddedRuntime(long_poll=LONG_POLL, max_concurrent_tasks=workers, max_result_size=64 * 2**20) as rt, \
            serving(kind, rt, workers, workdir, tag) as tree:
        slots = SlotLog(rt)
        run_jobs(rt, [("noop", None)] * 50 + [("spin", 1000)] * 4 + [("echo", "warm")] * 4
                 + [("stream", {"n": 10})] * 2)
        time.sleep(0.2)
        if kind == "cmworker_nice0":
            out["cpu_bound"] = cpu_bound(kind, rt, tree, slots, sizes, spin_n, bare, sizes.cpu_pairs)
            return out
        if "noop" in groups:
            out.update(noop_rows(kind, rt, tree, sizes))
        if "cpu" in groups:
            out["cpu_bound"] = cpu_bound(kind, rt, tree, slots, sizes, spin_n, bare, sizes.cpu_pairs)
        if "stream" in groups:
            out["paced"] = [stream_once(rt, workdir, n=3, gap=0.05) for _ in range(sizes.paced_reps)]
            out["flood"] = [stream_once(rt, workdir, n=sizes.stream_items) for _ in range(sizes.stream_reps)]
    return out


def noop_rows(kind: str, rt: EmbeddedRuntime, tree: Tree, sizes: Sizes) -> dict[str, Any]:
    """A burst of no-op jobs (throughput, client CPU per job), then no-op jobs one at a time (latency)."""
    out: dict[str, Any] = {}
    with Meter(tree) as m:
        answers = run_jobs(rt, [("noop", None)] * sizes.burst)
    if any(a != b"null" for a in answers):
        raise RuntimeError(f"{kind}: a no-op answered something else than null")
    out["burst"] = {"wall_s": m.wall, "jobs_per_s": sizes.burst / m.wall,
                    "cpu_us_per_job": {k: v / sizes.burst * 1e6 for k, v in m.cpu.items()},
                    "runtime_cpu_us_per_job": m.runtime_cpu / sizes.burst * 1e6}

    latencies = []
    for _ in range(sizes.latency_calls):
        time.sleep(0.005)  # every thread of the client back to waiting
        t = time.perf_counter()
        run_jobs(rt, [("noop", None)])
        latencies.append(time.perf_counter() - t)
    out["latency_ms"] = [x * 1e3 for x in latencies]
    return out


def logging_cost(sizes: Sizes, workers: int, workdir: Path, tag: str) -> dict[str, Any]:
    """What INFO logs cost: two cmworker clients alive at once, one at INFO and one at WARN, each on its
    own runtime, take turns with no-op bursts (INFO, WARN, WARN, INFO, ...); the one whose turn it is
    not waits in its long poll, which costs nothing. Bursts seconds apart see nearly the same machine,
    as the CPU-bound batches do; separate sessions, as once measured, differed by up to 35 % from drift."""
    out = {level: {"wall_s": 0.0, "jobs": 0, "cpu_s": defaultdict(float)} for level in ("info", "warn")}
    with EmbeddedRuntime(long_poll=LONG_POLL, max_concurrent_tasks=workers) as rt_info, \
            EmbeddedRuntime(long_poll=LONG_POLL, max_concurrent_tasks=workers) as rt_warn, \
            serving("cmworker", rt_info, workers, workdir, f"{tag}-info") as tree_info, \
            serving("cmworker_warn", rt_warn, workers, workdir, f"{tag}-warn") as tree_warn:
        clients = {"info": (rt_info, tree_info), "warn": (rt_warn, tree_warn)}
        for rt, _ in clients.values():
            run_jobs(rt, [("noop", None)] * 100)
        for i in range(2 * sizes.log_pairs):
            level = ("info", "warn", "warn", "info")[i % 4]
            rt, tree = clients[level]
            with Meter(tree) as m:
                answers = run_jobs(rt, [("noop", None)] * sizes.log_burst)
            if any(a != b"null" for a in answers):
                raise RuntimeError(f"logging session, {level}: a no-op answered something else than null")
            out[level]["wall_s"] += m.wall
            out[level]["jobs"] += sizes.log_burst
            for role, cpu in m.cpu.items():
                out[level]["cpu_s"][role] += cpu
    return {level: {"jobs_per_s": o["jobs"] / o["wall_s"],
                    "cpu_us_per_job": {role: cpu / o["jobs"] * 1e6 for role, cpu in o["cpu_s"].items()}}
            for level, o in out.items()}


def cpu_bound(kind: str, rt: EmbeddedRuntime, tree: Tree, slots: SlotLog, sizes: Sizes, spin_n: int,
              bare: BarePool, pairs: int) -> dict[str, Any]:
    """The client's CPU-bound batches, alternated with the bare pool's: bare, client, client, bare, ..."""
    slots.clear()
    out: dict[str, Any] = {"wall_s": 0.0, "bare_wall_s": 0.0, "bare_workers_cpu_s": 0.0,
                           "client_cpu_s": defaultdict(float), "runtime_cpu_s": 0.0, "batches": []}
    jobs: dict[str, list[list[float]]] = {"client": [], "bare": []}  # one list of [start, end, pid] per batch
    for i in range(2 * pairs):
        if i % 4 in (0, 3):
            wall, workers_cpu, records = bare.run(e2e_work.spin_timed, spin_n, sizes.cpu_jobs)
            out["bare_wall_s"] += wall
            out["bare_workers_cpu_s"] += workers_cpu
            out["batches"].append(("bare", wall))
            jobs["bare"].append(records)
            continue
        with Meter(tree) as m:
            answers = run_jobs(rt, [("spin", spin_n)] * sizes.cpu_jobs)
        out["wall_s"] += m.wall
        out["runtime_cpu_s"] += m.runtime_cpu
        for role, cpu in m.cpu.items():
            out["client_cpu_s"][role] += cpu
        out["batches"].append((kind, m.wall))
        jobs["client"].append([json.loads(a) for a in answers])
    for who, batches in jobs.items():
        prefix = "bare_" if who == "bare" else ""
        out[prefix + "job_ms"], out[prefix + "idle_ms"] = job_times(batches)
    return {**out, "client_cpu_s": dict(out["client_cpu_s"]), **slots.summary()}


def job_times(batches: list[list[list[float]]]) -> tuple[float, float]:
    """From each job's [start, end, pid]: the median job's own length, and the mean time a worker sat idle
    between the end of one job and the start of its next in the same batch, both in ms."""
    lengths = [(end - start) for records in batches for start, end, _pid in records]
    idle = idle_gaps(batches)
    return statistics.median(lengths) * 1e3, (statistics.fmean(idle) if idle else float("nan"))


def idle_gaps(batches: list[list[list[float]]]) -> list[float]:
    """Every time, in ms, a worker sat idle between the end of one job and the start of its next job in the
    same batch, from each job's [start, end, pid] (``time.monotonic()``, one clock for every process)."""
    idle = []
    for records in batches:
        by_worker: dict[float, list[tuple[float, float]]] = defaultdict(list)
        for start, end, pid in records:
            by_worker[pid].append((start, end))
        for runs in by_worker.values():
            runs.sort()
            idle += [(later[0] - earlier[1]) * 1e3 for earlier, later in itertools.pairwise(runs)]
    return idle


def stream_once(rt: EmbeddedRuntime, workdir: Path, n: int, gap: float = 0.0) -> dict[str, float]:
    stamp = workdir / "stream.stamp"
    stamp.unlink(missing_ok=True)
    job_id = rt.store.submit([("stream", {"n": n, "gap": gap, "stamp": str(stamp)}, DEFAULT_USER_ID)])[0]
    snap = rt.store.wait_finished([job_id], WAIT)[0]
    done = time.monotonic()
    if snap is None or snap.status != "done" or snap.answer is None:
        raise RuntimeError(f"a stream of {n} items did not succeed: {snap}")
    if decode_answer(snap.answer) != [{"i": i} for i in range(n)]:
        raise RuntimeError(f"a stream of {n} items came back wrong: {snap.answer[:200]!r}")
    posts = [p for p in rt.record.result_posts(job_id) if p.status == 204]
    if not posts or not posts[-1].chunked or posts[-1].first_chunk_at is None:
        raise RuntimeError(f"the stream of {n} items was not posted as a chunked body: {posts}")
    at = json.loads(stamp.read_text())
    return {"first_on_wire_ms": (posts[-1].first_chunk_at - at["first"]) * 1e3,
            "generator_ms": (at["end"] - at["start"]) * 1e3,  # inside the client, as it pulled the items
            "total_ms": (done - at["start"]) * 1e3,           # generator start -> runtime has the answer
            "tail_ms": (done - at["end"]) * 1e3}


# -- the payload rows: cmworker, the SDK and the thin client alive at once, taking turns ---------


def payload_session(sizes: Sizes, workers: int, payload: str, workdir: Path, tag: str) -> dict[str, Any]:
    """Large payloads against the wire-speed floor: the thin client (scripts/bench_apps/e2e_thin.py), the
    SDK and cmworker are alive for the whole session, each on its own runtime, and take turns, one job at
    a time, in an order that rotates every repetition (the ones whose turn it is not wait in their long
    poll, which costs nothing), so each row's jobs see nearly the same machine.

    First, the cmworker parent's RSS before and after ``rss_jobs`` echoes of ``rss_mb`` MB (and again at
    the end of the session); then per repetition, each client in turn: the ``payload_mb`` query echoed,
    and a ``payload_mb`` result from a small query. Per job: its wall time (queued -> answer recorded)
    and the CPU of each role of the client's tree, so the parent's CPU per MB moved is apart from its
    workers'."""
    kinds = ("thin", "sdk", "cmworker")
    # Room for a 50 MB echo: the runtime's and cmworker's result bounds above it (the SDK has none).
    bound = max(sizes.payload_mb, sizes.rss_mb) * 2 * 10**6
    rows = {"echo": ("echo", payload, json.dumps(payload).encode()),
            "result": ("blob", sizes.payload_mb * 10**6, json.dumps(e2e_work.blob(sizes.payload_mb * 10**6)).encode())}
    out: dict[str, Any] = {row: {kind: {"wall_s": [], "cpu_s": [], "mb": []} for kind in kinds} for row in rows}
    with contextlib.ExitStack() as stack:
        served: dict[str, tuple[EmbeddedRuntime, Tree]] = {}
        for kind in kinds:
            rt = stack.enter_context(EmbeddedRuntime(long_poll=LONG_POLL, max_concurrent_tasks=workers,
                                                     max_result_size=bound))
            tree = stack.enter_context(serving(kind, rt, workers, workdir, f"{tag}-{kind}",
                                               extra_env={"CMWORKER_MAX_RESULT_SIZE": str(bound)}))
            served[kind] = (rt, tree)
            run_jobs(rt, [("noop", None)] * 4 + [("echo", "warm")] * 4 + [("blob", 1000)] * 4)
        out["rss"] = parent_rss(sizes, *served["cmworker"])
        for rep in range(sizes.payload_reps):
            order = kinds[rep % 3:] + kinds[:rep % 3]
            for row, (function, query, expected) in rows.items():
                for kind in order:
                    rt, tree = served[kind]
                    with Meter(tree) as m:
                        answer = run_jobs(rt, [(function, query)])[0]
                    if answer != expected:
                        raise RuntimeError(f"{kind}: the {row} row's answer came back changed")
                    sent = len(json.dumps(query)) if function == "echo" else 0
                    out[row][kind]["wall_s"].append(m.wall)
                    out[row][kind]["cpu_s"].append(m.cpu)
                    out[row][kind]["mb"].append((sent + len(answer)) / 1e6)
        out["rss"]["end_mb"] = psutil.Process(served["cmworker"][1].root.pid).memory_info().rss / 1e6
    return out


def parent_rss(sizes: Sizes, rt: EmbeddedRuntime, tree: Tree) -> dict[str, Any]:
    """The cmworker parent's RSS, MB (10**6 bytes), before and 0.5 s after ``rss_jobs`` echoes of ``rss_mb`` MB."""
    big = "y" * (sizes.rss_mb * 10**6)
    expected = json.dumps(big).encode()

    def rss() -> float:
        time.sleep(0.5)  # whatever the parent frees once an answer is posted is freed by now
        return float(tree.root.memory_info().rss / 1e6)

    before = rss()
    walls = []
    for _ in range(sizes.rss_jobs):
        t = time.perf_counter()
        if run_jobs(rt, [("echo", big)])[0] != expected:
            raise RuntimeError(f"cmworker: a {sizes.rss_mb} MB echo came back changed")
        walls.append(time.perf_counter() - t)
    return {"before_mb": before, "after_mb": rss(), "wall_s": walls}


# -- the waiting row: jobs that sleep, against a bare pool of the same size ------------------------


def waiting_session(kind: str, sizes: Sizes, workers: int, workdir: Path, tag: str,
                    bare: BarePool) -> dict[str, Any]:
    """Jobs that sleep ``wait_ms`` (a function waiting on an outside service): ``wait_per_worker`` jobs per
    worker in one batch, the client's batches alternated with a bare ``multiprocessing.Pool`` of the same
    size (bare, client, client, bare, ...), as the CPU-bound row does. The runtime caps the replica at
    ``workers`` jobs (``max_concurrent_tasks``), as the client is told. A sleeping job leaves the CPUs to
    the hand-off, so what the client adds per job shows plainly; each job answers [start, end, pid], from
    which every idle time of a worker between two of its jobs is taken (``idle_gaps``)."""
    jobs = sizes.wait_per_worker * workers
    out: dict[str, Any] = {"wall_s": 0.0, "bare_wall_s": 0.0}
    records: dict[str, list[list[list[float]]]] = {"client": [], "bare": []}
    with EmbeddedRuntime(long_poll=LONG_POLL, max_concurrent_tasks=workers) as rt, \
            serving(kind, rt, workers, workdir, tag):
        run_jobs(rt, [("nap", 1)] * (2 * workers))
        time.sleep(0.2)
        for i in range(2 * sizes.wait_pairs):
            if i % 4 in (0, 3):
                wall, _cpu, batch = bare.run(e2e_work.nap_timed, sizes.wait_ms, jobs)
                out["bare_wall_s"] += wall
                records["bare"].append(batch)
                continue
            t = time.perf_counter()
            answers = run_jobs(rt, [("nap", sizes.wait_ms)] * jobs)
            out["wall_s"] += time.perf_counter() - t
            records["client"].append([json.loads(a) for a in answers])
    out["handoff_ms"] = idle_gaps(records["client"])
    out["bare_handoff_ms"] = idle_gaps(records["bare"])
    return out


# -- the pinned CPU-bound row: the runtime on one CPU, the client on the other ---------------------


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """Every thread of this process (the runtime's included: threads started meanwhile inherit it) on
    ``cpus`` until the block ends; then every thread back on the CPUs this process had."""
    allowed = os.sched_getaffinity(0)

    def pin_all(to: set[int]) -> None:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(tid), to)

    pin_all(cpus)
    try:
        yield
    finally:
        pin_all(allowed)


def pinned_session(kind: str, sizes: Sizes, spin_n: int, workdir: Path, tag: str, bare: BarePool) -> dict[str, Any]:
    """The CPU-bound batches with 1 worker, the runtime (this process) on CPU 1 and the client's whole tree
    on CPU 0, against a bare pool of 1 whose worker is on CPU 0 too: the closest this machine comes to
    Foundry, where the runtime is another container. (The bare pool's own threads are in this process, on
    CPU 1, as the runtime is: only its worker shares CPU 0 with nothing.)"""
    with pinned({1}), EmbeddedRuntime(long_poll=LONG_POLL, max_concurrent_tasks=1) as rt, \
            serving(kind, rt, 1, workdir, tag, cpus={0}) as tree:
        slots = SlotLog(rt)
        run_jobs(rt, [("noop", None)] * 20 + [("spin", 1000)] * 4)
        time.sleep(0.2)
        elsewhere = [p.pid for p in [tree.root, *tree.root.children(recursive=True)] if p.cpu_affinity() != [0]]
        if elsewhere or os.sched_getaffinity(0) != {1}:
            raise RuntimeError(f"pinning did not hold: {kind} processes {elsewhere} not on CPU 0 alone, or this "
                               f"process on {sorted(os.sched_getaffinity(0))}")
        return cpu_bound(kind, rt, tree, slots, sizes, spin_n, bare, sizes.pin_pairs)


def can_pin() -> bool:
    return {0, 1} <= os.sched_getaffinity(0)


class BarePools:
    """The bare pools of a run, one per size (and CPU set), each alive for the whole run; all closed at its end."""

    def __init__(self) -> None:
        self.pools: dict[tuple[int, frozenset[int] | None], BarePool] = {}

    def get(self, workers: int, cpus: set[int] | None = None) -> BarePool:
        key = (workers, None if cpus is None else frozenset(cpus))
        if key not in self.pools:
            self.pools[key] = BarePool(workers, cpus)
        return self.pools[key]

    def __enter__(self) -> BarePools:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in self.pools.values():
            pool.close()


class BarePool:
    """The reference: a ``multiprocessing.Pool`` of the clients' size, alive for the whole run.

    forkserver, not fork: this process runs the emulator's threads, and a child forked while one of them
    held a lock hangs on it for good (seen once in 8 rounds). Start-up is not timed.
    """

    def __init__(self, workers: int, cpus: set[int] | None = None) -> None:
        # cpus: every worker runs on these CPUs only (set in each worker as it starts, respawns included)
        self.pool = multiprocessing.get_context("forkserver").Pool(
            workers, initializer=None if cpus is None else os.sched_setaffinity, initargs=(0, cpus))
        self.pool.map(e2e_work.spin_timed, [1000] * (2 * workers), chunksize=1)
        self.tree = Tree(psutil.Process(), "bare")

    def run(self, work: Callable[[Any], list[float]], arg: Any, jobs: int) -> tuple[float, float, list[list[float]]]:
        """One batch of ``jobs`` calls of ``work(arg)``: its wall time and the CPU its workers used, in seconds,
        and each job's [start, end, pid]."""
        with Meter(self.tree) as m:
            records = self.pool.map(work, [arg] * jobs, chunksize=1)
        return m.wall, m.cpu.get("workers", 0.0), records

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def generator_own_ms(n: int) -> float:
    """The generator's own time: the same items drained in this process, with no transport at all."""
    times = []
    for _ in range(21):
        t = time.perf_counter()
        for _item in e2e_work.items(n):
            pass
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def calibrate(job_ms: float) -> int:
    """Loop iterations for a job of ``job_ms`` at this machine's fastest: the quickest of 11 tries (the
    speed of a shared VM drifts; a slow spell here would otherwise make every job shorter)."""
    times = []
    for _ in range(11):
        t = time.perf_counter()
        e2e_work.spin(200_000)
        times.append(time.perf_counter() - t)
    return int(200_000 * job_ms / 1e3 / min(times))


# -- the transport microbenchmark -------------------------------------------------------------------


def transport(cycles: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """CPU per keep-alive GET job (200, a job) + POST result (204), four HTTP stacks, this process."""
    with EmbeddedRuntime(long_poll=0.0, max_concurrent_tasks=1) as rt:
        ep = discover(rt.env(0))
        ca = ep.ca_files[0]
        context = ssl_context(ep.ca_files)
        base = f"https://{ep.host}:{ep.port}"
        get_headers = {"Module-Auth-Token": ep.token}
        post_headers = {**get_headers, "Content-Type": "application/octet-stream"}

        def job_id(body: bytes) -> str:
            return str(json.loads(body)["computeModuleJobV1"]["jobId"])

        session = requests.Session()  # as the SDK uses it: a default Session, verify= the CA on every call

        def with_requests() -> None:
            with session.request("GET", base + ep.job_path, headers=get_headers, verify=ca) as r:
                assert r.status_code == 200, r.status_code
                jid = job_id(r.content)
            with session.request("POST", base + ep.result_url(jid), headers=post_headers, data=b"null",
                                 verify=ca) as r:
                assert r.status_code == 204, r.status_code

        pool = urllib3.HTTPSConnectionPool(ep.host, ep.port, ssl_context=context, maxsize=1, retries=False)

        def with_urllib3() -> None:
            r = pool.request("GET", ep.job_path, headers=get_headers)
            assert r.status == 200, r.status
            r = pool.request("POST", ep.result_url(job_id(r.data)), body=b"null", headers=post_headers)
            assert r.status == 204, r.status

        conn = http.client.HTTPSConnection(ep.host, ep.port, context=context)

        def with_http_client() -> None:
            conn.request("GET", ep.job_path, headers=get_headers)
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, r.status
            conn.request("POST", ep.result_url(job_id(body)), body=b"null", headers=post_headers)
            r = conn.getresponse()
            r.read()
            assert r.status == 204, r.status

        service = Service(ep)
        service_conn = service.connection()

        def with_service() -> None:
            reply = service.get_job(service_conn)
            assert reply.status == 200, reply.status
            reply = service.post_result(service_conn, job_id(reply.body), b"null")
            assert reply.status == 204, reply.status

        def with_new_connection() -> None:
            fresh = http.client.HTTPSConnection(ep.host, ep.port, context=context)
            fresh.request("GET", ep.job_path, headers=get_headers)
            r = fresh.getresponse()
            body = r.read()
            assert r.status == 200, r.status
            fresh.request("POST", ep.result_url(job_id(body)), body=b"null", headers=post_headers)
            r = fresh.getresponse()
            r.read()
            assert r.status == 204, r.status
            fresh.close()

        stacks: dict[str, Callable[[], None]] = {
            "requests.Session (as the SDK calls it)": with_requests,
            "urllib3.HTTPSConnectionPool": with_urllib3,
            "http.client.HTTPSConnection": with_http_client,
            "cmworker.replica.transport.Connection": with_service,
            "http.client, a new TLS connection per cycle": with_new_connection,
        }
        out: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in stacks}
        names = list(stacks)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                call = stacks[name]
                rt.store.submit([("noop", None, DEFAULT_USER_ID)] * (cycles + 30))
                for _ in range(30):
                    call()
                thread, proc, wall = time.thread_time(), time.process_time(), time.perf_counter()
                for _ in range(cycles):
                    call()
                out[name]["client_cpu_us"].append((time.thread_time() - thread) / cycles * 1e6)
                out[name]["process_cpu_us"].append((time.process_time() - proc) / cycles * 1e6)
                out[name]["wall_us"].append((time.perf_counter() - wall) / cycles * 1e6)
        session.close()
        pool.close()
        conn.close()
        service_conn.close()
        return {name: dict(values) for name, values in out.items()}


# -- the report -------------------------------------------------------------------------------------


def efficiency(client_session: dict[str, Any]) -> float:
    """The bare pool's time over the client's for the same CPU-bound work, in one session."""
    cpu_bound = client_session["cpu_bound"]
    return float(cpu_bound["bare_wall_s"] / cpu_bound["wall_s"])


def idle_efficiency(cpu_bound: dict[str, Any]) -> float:
    """The bare pool's job length plus its workers' idle time between jobs, over the same job length plus
    the client's workers' idle time."""
    job = cpu_bound["bare_job_ms"]
    return float((job + cpu_bound["bare_idle_ms"]) / (job + cpu_bound["idle_ms"]))


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """The median, and the range over rounds when there is more than one."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}\u2013{fmt.format(max(values))})"


Check = tuple[str, bool, str]


def report(raw: dict[str, Any], sizes: Sizes, workers: int) -> list[Check]:
    """Print every table the run has data for; return the target checks, in the order printed."""
    rounds = raw["rounds"]
    checks: list[Check] = []
    if any("burst" in r.get("cmworker", {}) for r in rounds):
        checks += report_noop(rounds, sizes, workers)
    if any("logging" in r for r in rounds):
        checks += report_logging(rounds, sizes)
    if any("cpu_bound" in r.get("cmworker", {}) for r in rounds):
        checks += report_cpu(raw, sizes, workers)
    if any("pinned" in r for r in rounds):
        checks += report_pinned(raw, sizes)
    if any("waiting" in r for r in rounds):
        checks += report_waiting(rounds, sizes)
    if any("payload" in r for r in rounds):
        checks += report_payload(rounds, sizes)
    if any("flood" in r.get("cmworker", {}) for r in rounds):
        checks += report_stream(raw, sizes)
    if "transport" in raw:
        report_transport(raw, sizes)
    return checks


def report_noop(rounds: list[dict[str, Any]], sizes: Sizes, workers: int) -> list[Check]:
    def series(kind: str, get: Callable[[dict[str, Any]], float]) -> list[float]:
        return [get(r[kind]) for r in rounds if kind in r]

    kinds = [k for k in CLIENTS if any("burst" in r.get(k, {}) for r in rounds)]  # the sessions with a burst
    print(f"\n### No-op burst: {sizes.burst:,} jobs, {workers} workers, median (range) of {len(rounds)} "
          "interleaved round(s)\n")
    print("| client | jobs/s | client CPU µs/job | parent | template | workers | emulator CPU µs/job |")
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        cpu = [r[kind]["burst"]["cpu_us_per_job"] for r in rounds if kind in r]
        roles = [spread([c.get(role, 0.0) for c in cpu]) if kind.startswith("cmworker") or role != "template"
                 else "—" for role in ("parent", "template", "workers")]
        print(f"| {CLIENTS[kind]} | {spread(series(kind, lambda s: s['burst']['jobs_per_s']))} | "
              f"{spread([c['total'] for c in cpu])} | {' | '.join(roles)} | "
              f"{spread(series(kind, lambda s: s['burst']['runtime_cpu_us_per_job']))} |")
    sdk_t = med(series("sdk", lambda s: s["burst"]["jobs_per_s"]))
    cm_t = med(series("cmworker", lambda s: s["burst"]["jobs_per_s"]))
    sdk_c = med(series("sdk", lambda s: s["burst"]["cpu_us_per_job"]["total"]))
    cm_c = med(series("cmworker", lambda s: s["burst"]["cpu_us_per_job"]["total"]))
    per_round_t = [r["cmworker"]["burst"]["jobs_per_s"] / r["sdk"]["burst"]["jobs_per_s"] for r in rounds]
    per_round_c = [r["cmworker"]["burst"]["cpu_us_per_job"]["total"] / r["sdk"]["burst"]["cpu_us_per_job"]["total"]
                   for r in rounds]
    print(f"\ncmworker / SDK: throughput {cm_t / sdk_t:.2f}x (per round {', '.join(f'{x:.2f}' for x in per_round_t)}),"
          f" client CPU per job {cm_c / sdk_c:.2f}x (per round {', '.join(f'{x:.2f}' for x in per_round_c)})")

    print(f"\n### Idle latency: one no-op at a time, queued -> answer recorded, {sizes.latency_calls} calls per "
          "round\n")
    print("| client | median ms | p90 ms |\n|---|---|---|")
    latency = {}
    for kind in ("sdk", "cmworker"):
        lat = [r[kind]["latency_ms"] for r in rounds]
        latency[kind] = med([med(x) for x in lat])
        print(f"| {CLIENTS[kind]} | {spread([med(x) for x in lat], '{:.2f}')} | "
              f"{spread([statistics.quantiles(x, n=10)[-1] for x in lat], '{:.2f}')} |")
    return [
        ("no-op throughput >= 2.5x the SDK", cm_t / sdk_t >= 2.5, f"{cm_t / sdk_t:.2f}x"),
        ("client CPU per no-op job <= 0.25x the SDK", cm_c / sdk_c <= 0.25, f"{cm_c / sdk_c:.2f}x"),
        ("idle latency (median) <= the SDK's", latency["cmworker"] <= latency["sdk"],
         f"{latency['cmworker']:.2f} ms against {latency['sdk']:.2f} ms"),
    ]


def report_logging(rounds: list[dict[str, Any]], sizes: Sizes) -> list[Check]:
    paired = [r["logging"] for r in rounds if "logging" in r]
    burst = f"{sizes.log_pairs} + {sizes.log_pairs} bursts of {sizes.log_burst:,}"
    print(f"\n### Logging: cmworker at INFO (one `job_finished` line per job) against WARN, {burst} no-ops\n")
    print("Both clients are alive for the whole session, each on its own runtime, and take turns (INFO, WARN, "
          "WARN, INFO, ...).\n")
    print("| log level | jobs/s | client CPU µs/job | parent |\n|---|---|---|---|")
    for level in ("info", "warn"):
        print(f"| {level.upper()} | {spread([p[level]['jobs_per_s'] for p in paired])} | "
              f"{spread([p[level]['cpu_us_per_job']['total'] for p in paired])} | "
              f"{spread([p[level]['cpu_us_per_job'].get('parent', 0.0) for p in paired])} |")
    slower = [p["warn"]["jobs_per_s"] / p["info"]["jobs_per_s"] - 1 for p in paired]
    dearer = [p["info"]["cpu_us_per_job"]["total"] / p["warn"]["cpu_us_per_job"]["total"] - 1 for p in paired]
    log_cost = med(slower)
    print(f"\nAt INFO against WARN, per session: throughput {log_cost * 100:+.1f} % lower (per session "
          f"{', '.join(f'{x * 100:+.1f}' for x in slower)}), client CPU per job {med(dearer) * 100:+.1f} % "
          f"higher (per session {', '.join(f'{x * 100:+.1f}' for x in dearer)}).")
    return [("INFO logs cost < 10 % of no-op throughput against WARN", log_cost < 0.10, f"{log_cost * 100:+.1f} %")]


def cpu_tables(by_kind: dict[str, list[dict[str, Any]]], sizes: Sizes, workers: int,
               pairs: int) -> dict[str, list[float]]:
    """The CPU-bound tables for one setting (co-located or pinned), from each kind's ``cpu_bound`` per round;
    return each kind's efficiency per round."""
    print("| client | its wall s | bare pool's wall s, same session | efficiency (bare / it) | "
          "time added per job and worker, ms | workers' CPU s | rest of the client's CPU s | emulator CPU s | "
          "job holds its slot, ms | slot empty between answer and next job, ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    per_worker = pairs * sizes.cpu_jobs / workers  # jobs each worker ran in a session's batches
    eff: dict[str, list[float]] = {}
    for kind, runs in by_kind.items():
        eff[kind] = [c["bare_wall_s"] / c["wall_s"] for c in runs]
        cpu = [c["client_cpu_s"] for c in runs]
        print(f"| {CLIENTS[kind]} through the runtime | {spread([c['wall_s'] for c in runs], '{:.3f}')} | "
              f"{spread([c['bare_wall_s'] for c in runs], '{:.3f}')} | "
              f"{spread(eff[kind], '{:.3f}')} | "
              f"{spread([(c['wall_s'] - c['bare_wall_s']) / per_worker * 1e3 for c in runs], '{:.1f}')} | "
              f"{spread([c.get('workers', 0.0) for c in cpu], '{:.2f}')} | "
              f"{spread([c['total'] - c.get('workers', 0.0) for c in cpu], '{:.2f}')} | "
              f"{spread([c['runtime_cpu_s'] for c in runs], '{:.2f}')} | "
              f"{spread([c['held_ms'] for c in runs], '{:.1f}')} | "
              f"{spread([c['turnaround_ms'] for c in runs], '{:.2f}')} |")
    print("\n#### Between two jobs of a worker\n\nFrom the times each job reports (start, end, pid): a worker's "
          "idle time between the end of one job and the start of its next, mean over a session's batches; the jobs' "
          "own length, median. The last column is the efficiency the idle times alone give, at the bare pool's job "
          "length: what the client's hand-off costs, apart from how fast the machine ran its jobs.\n")
    print("| client | its workers idle between jobs, ms | the bare pool's, ms | job's own length, ms | "
          "the bare pool's, ms | efficiency from idle time alone |")
    print("|---|---|---|---|---|---|")
    for kind, runs in by_kind.items():
        print(f"| {CLIENTS[kind]} | {spread([c['idle_ms'] for c in runs], '{:.2f}')} | "
              f"{spread([c['bare_idle_ms'] for c in runs], '{:.2f}')} | "
              f"{spread([c['job_ms'] for c in runs], '{:.1f}')} | "
              f"{spread([c['bare_job_ms'] for c in runs], '{:.1f}')} | "
              f"{spread([idle_efficiency(c) for c in runs], '{:.3f}')} |")
    return eff


def report_cpu(raw: dict[str, Any], sizes: Sizes, workers: int) -> list[Check]:
    rounds = raw["rounds"]
    batches = sizes.cpu_pairs
    print(f"\n### CPU-bound: {sizes.cpu_jobs} jobs of ~{sizes.job_ms:.0f} ms pure-Python work, {workers} workers, "
          "co-located\n")
    print(f"Each session runs {batches} batches of the client and {batches} of a bare "
          f"`multiprocessing.Pool({workers})` in the bench process, alternating (bare, client, client, bare, ...); "
          "times are the sums over a session's batches. The runtime, the client and the bare pool share every "
          "CPU.\n")
    by_kind = {kind: [r[kind]["cpu_bound"] for r in rounds if kind in r]
               for kind in ("cmworker", "cmworker_nice0", "sdk") if any(kind in r for r in rounds)}
    eff = cpu_tables(by_kind, sizes, workers, batches)
    if "cmworker_nice0" in eff:
        gain = [a / b for a, b in zip(eff["cmworker"], eff["cmworker_nice0"], strict=True)]
        print(f"\nworker_nice = 19 (the default) against 0, same round: efficiency x{med(gain):.3f} "
              f"(per round {', '.join(f'{x:.3f}' for x in gain)}).")
    over_sdk = [a / b for a, b in zip(eff["cmworker"], eff["sdk"], strict=True)]
    print(f"\ncmworker's efficiency over the SDK's, same round: x{med(over_sdk):.3f} "
          f"(per round {', '.join(f'{x:.3f}' for x in over_sdk)}).")
    print(f"\nOne job's work alone: {raw['spin_job_s'] * 1e3:.1f} ms (median of 5 in this process); "
          f"{sizes.cpu_jobs} jobs on {workers} workers: {raw['spin_job_s'] * sizes.cpu_jobs / workers:.3f} s at best.")
    eff_cm = med(eff["cmworker"])
    return [("CPU-bound efficiency >= 0.95 of a bare pool", eff_cm >= 0.95, f"{eff_cm:.3f}"),
            (f"CPU-bound, co-located, {workers} workers: efficiency >= 1.05x the SDK's", med(over_sdk) >= 1.05,
             f"{med(over_sdk):.3f}x")]


def report_pinned(raw: dict[str, Any], sizes: Sizes) -> list[Check]:
    rounds = [r["pinned"] for r in raw["rounds"] if "pinned" in r]
    print(f"\n### CPU-bound, pinned: {sizes.cpu_jobs} jobs of ~{sizes.job_ms:.0f} ms, 1 worker, the runtime on "
          "CPU 1, the client and the bare pool's worker on CPU 0\n")
    print(f"The runtime (this process, every thread) runs on CPU 1; the client's whole process tree and the worker "
          f"of a bare `multiprocessing.Pool(1)` run on CPU 0. Each session runs {sizes.pin_pairs} batches of the "
          "client and as many of the bare pool, alternating.\n")
    by_kind = {kind: [r[kind] for r in rounds if kind in r] for kind in ("cmworker", "sdk")}
    eff = cpu_tables(by_kind, sizes, 1, sizes.pin_pairs)
    eff_cm = med(eff["cmworker"])
    return [("CPU-bound, pinned apart, 1 worker: efficiency >= 0.97 of a bare pool pinned alike", eff_cm >= 0.97,
             f"{eff_cm:.3f} (the SDK {med(eff['sdk']):.3f})")]


def report_waiting(rounds: list[dict[str, Any]], sizes: Sizes) -> list[Check]:
    waits = [r["waiting"] for r in rounds if "waiting" in r]
    counts = sorted({int(w) for session in waits for w in session})
    print(f"\n### Jobs that wait: {sizes.wait_ms:.0f} ms sleeps, {sizes.wait_per_worker} jobs per worker in a batch\n")
    print(f"Each session (one client, W workers, the runtime's `max_concurrent_tasks` = W, as each client is "
          f"told) runs {sizes.wait_pairs} batches of the client and as many of a bare `multiprocessing.Pool(W)` in "
          "the bench process, alternating; efficiency is the bare pool's wall time over the client's, summed. "
          "The hand-off is a worker's idle time between the end of one job and the start of its next (each job "
          "answers its start, end and pid, on the system-wide monotonic clock), over every pair of consecutive "
          "jobs of a worker in the session's batches.\n")
    print("| workers | client | efficiency (bare / it) | its wall s | bare pool's wall s | hand-off median ms | "
          "p90 ms | the bare pool's hand-off median ms | p90 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    checks: list[Check] = []
    for count in counts:
        for kind in ("cmworker", "sdk", "thin"):
            runs = [session[str(count)][kind] for session in waits if kind in session[str(count)]]
            if not runs:
                continue
            eff = [s["bare_wall_s"] / s["wall_s"] for s in runs]
            mine = [x for s in runs for x in s["handoff_ms"]]
            bare = [x for s in runs for x in s["bare_handoff_ms"]]
            label = f"thin client ({count} loops, one connection each)" if kind == "thin" else CLIENTS[kind]
            print(f"| {count} | {label} | {spread(eff, '{:.3f}')} | "
                  f"{spread([s['wall_s'] for s in runs], '{:.3f}')} | "
                  f"{spread([s['bare_wall_s'] for s in runs], '{:.3f}')} | {quantile(mine, 50):.2f} | "
                  f"{quantile(mine, 90):.2f} | {quantile(bare, 50):.2f} | {quantile(bare, 90):.2f} |")
            if kind != "cmworker":
                continue
            if count == 8:
                checks.append(("jobs that wait, 8 workers: efficiency >= 0.97 of a bare pool of 8", med(eff) >= 0.97,
                               f"{med(eff):.3f}"))
            handoff = quantile(mine, 50)
            checks.append((f"jobs that wait, {count} workers: hand-off <= 1 ms median", handoff <= 1.0,
                           f"{handoff:.2f} ms"))
    return checks


def report_payload(rounds: list[dict[str, Any]], sizes: Sizes) -> list[Check]:
    sessions = [r["payload"] for r in rounds if "payload" in r]
    kinds = ("thin", "sdk", "cmworker")
    print(f"\n### Large payloads: a {sizes.payload_mb} MB query echoed, a {sizes.payload_mb} MB result from a small "
          f"query, {sizes.payload_reps} job(s) of each per client and round\n")
    print("The thin client (`scripts/bench_apps/e2e_thin.py`: one loop on one keep-alive connection, GET, run "
          "the function, POST, no pool) is the wire-speed floor. The three clients are alive at once, each on "
          "its own runtime, and take turns job by job. Time: queued -> answer recorded. CPU per MB moved "
          "(query in + result out): the client's parent process alone, and its other processes (workers and, "
          "for cmworker, the template) apart.\n")
    print("| row | client | ms per job | x the thin client | parent CPU ms per MB | workers' CPU ms per MB |")
    print("|---|---|---|---|---|---|")
    checks: list[Check] = []
    for row, label in (("echo", f"{sizes.payload_mb} MB query echoed"), ("result", f"{sizes.payload_mb} MB result")):
        walls = {kind: med([x for s in sessions for x in s[row][kind]["wall_s"]]) for kind in kinds}
        for kind in kinds:
            jobs = [(cpu, mb) for s in sessions for cpu, mb in zip(s[row][kind]["cpu_s"], s[row][kind]["mb"],
                                                                  strict=True)]
            moved = sum(mb for _, mb in jobs)
            parent = sum(cpu.get("parent", 0.0) for cpu, _ in jobs) / moved * 1e3
            rest = sum(cpu["total"] - cpu.get("parent", 0.0) for cpu, _ in jobs) / moved * 1e3
            print(f"| {label} | {CLIENTS[kind]} | {walls[kind] * 1e3:,.0f} | {walls[kind] / walls['thin']:.2f} | "
                  f"{parent:.2f} | {'—' if kind == 'thin' else f'{round(rest, 2) + 0.0:.2f}'} |")
        ratio = walls["cmworker"] / walls["thin"]
        checks.append((f"{label}: <= 1.2x the thin client's time", ratio <= 1.2,
                       f"{ratio:.2f}x (the SDK {walls['sdk'] / walls['thin']:.2f}x)"))
    rss = [s["rss"] for s in sessions]
    grown = [x["after_mb"] - x["before_mb"] for x in rss]
    print(f"\nThe cmworker parent's RSS, MB: {spread([x['before_mb'] for x in rss], '{:.1f}')} before "
          f"{sizes.rss_jobs} echoes of {sizes.rss_mb} MB, {spread([x['after_mb'] for x in rss], '{:.1f}')} 0.5 s after "
          f"them ({spread(grown, '{:+.1f}')}), {spread([x['end_mb'] for x in rss], '{:.1f}')} at the end of the "
          f"session; each echo took {spread([med(x['wall_s']) * 1e3 for x in rss])} ms.")
    worst = f"{max(grown):+.1f} MB" + (" (the most of any round)" if len(grown) > 1 else "")
    checks.append((f"the cmworker parent's RSS within 10 MB of its start after {sizes.rss_jobs} {sizes.rss_mb} MB "
                   "jobs", max(grown) <= 10, worst))
    return checks


def report_stream(raw: dict[str, Any], sizes: Sizes) -> list[Check]:
    rounds = raw["rounds"]
    own = raw["generator_own_ms"]
    print(f"\n### Streaming (generator's own time for {sizes.stream_items:,} items, drained in-process: "
          f"{own:.2f} ms)\n")
    print("| client | first item yielded -> its chunk at the runtime, paced stream, ms | same, inside the "
          f"{sizes.stream_items:,}-item stream, ms | {sizes.stream_items:,} items: generator start -> answer "
          "recorded, ms | of which the generator inside the client, ms | added over the generator's own "
          "time, ms |")
    print("|---|---|---|---|---|---|")
    stream_stats: dict[str, dict[str, float]] = {}
    for kind in ("sdk", "cmworker"):
        paced = [s["first_on_wire_ms"] for r in rounds for s in r[kind]["paced"]]
        flood = [s for r in rounds for s in r[kind]["flood"]]
        total = med([s["total_ms"] for s in flood])
        stream_stats[kind] = {"first": med(paced), "added": total - own}
        print(f"| {CLIENTS[kind]} | {med(paced):.2f} (max {max(paced):.2f}) | "
              f"{med([s['first_on_wire_ms'] for s in flood]):.2f} | {total:.1f} | "
              f"{med([s['generator_ms'] for s in flood]):.1f} | {total - own:.1f} |")
    return [
        ("first streamed item on the wire <= 5 ms after it is yielded", stream_stats["cmworker"]["first"] <= 5,
         f"{stream_stats['cmworker']['first']:.2f} ms"),
        (f"{sizes.stream_items:,} streamed items add <= 100 ms to the generator's own time",
         stream_stats["cmworker"]["added"] <= 100, f"{stream_stats['cmworker']['added']:.1f} ms"),
    ]


def report_transport(raw: dict[str, Any], sizes: Sizes) -> None:
    wire = raw["transport"]
    print(f"\n### Transport: one keep-alive GET job (200) + POST result (204) over TLS, {sizes.transport_cycles:,} "
          f"cycles x {len(next(iter(wire.values()))['client_cpu_us'])} round(s) per stack, median µs\n")
    print("| stack | client CPU (calling thread) | process CPU (client + emulator) | wall |\n|---|---|---|---|")
    for name, v in wire.items():
        print(f"| {name} | {med(v['client_cpu_us']):,.0f} | {med(v['process_cpu_us']):,.0f} | "
              f"{med(v['wall_us']):,.0f} |")


def quantile(values: list[float], percent: int) -> float:
    """The ``percent`` percentile (inclusive method); nan for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]



# -- the published report --------------------------------------------------------------------------

REPORT_BEGIN = "<!-- bench_e2e.py --report: begin -->"
REPORT_END = "<!-- bench_e2e.py --report: end -->"
CHART = "e2e-comparison.png"


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)


@contextlib.contextmanager
def _teed() -> Iterator[io.StringIO]:
    """Print as usual, and keep a copy of what was printed."""
    copy = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, copy)):
        yield copy


def write_report(docs: Path, raw: dict[str, Any], tables: str, command: str) -> None:
    """Replace the generated part of docs/benchmarks.md with this run's tables, and draw the chart."""
    page = docs / "benchmarks.md"
    text = page.read_text() if page.exists() else ""
    if REPORT_BEGIN not in text or REPORT_END not in text:
        text = text.rstrip("\n") + f"\n\n{REPORT_BEGIN}\n{REPORT_END}\n"
    head, rest = text.split(REPORT_BEGIN, 1)
    tail = rest.split(REPORT_END, 1)[1]
    machine = raw["machine"]
    body = (f"Generated by `.venv/bin/python {command}` on {raw['when']} ({machine['cpus']} CPUs, "
            f"Python {machine['python']}, {machine['platform']}); {raw['elapsed_s']:.0f} s. Every figure is "
            f"a median over {len(raw['rounds'])} interleaved round(s), with the range in brackets.\n\n"
            f"![cmworker against the official SDK]({CHART})\n{tables}")
    page.write_text(f"{head}{REPORT_BEGIN}\n{body.rstrip()}\n{REPORT_END}{tail}")
    draw_chart(raw, docs / CHART)
    progress(f"wrote {page} and {docs / CHART}")


def draw_chart(raw: dict[str, Any], path: Path) -> None:
    """One panel per measure, the SDK's bar beside cmworker's, each labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = raw["rounds"]

    def per_kind(get: Callable[[dict[str, Any]], float]) -> list[float]:
        return [med([get(r[kind]) for r in rounds]) for kind in ("sdk", "cmworker")]

    panels = [
        ("no-op throughput, jobs/s (higher is better)", per_kind(lambda s: s["burst"]["jobs_per_s"]), "{:,.0f}"),
        ("client CPU per no-op job, µs (lower is better)",
         per_kind(lambda s: s["burst"]["cpu_us_per_job"]["total"]), "{:,.0f}"),
        ("idle latency, ms (lower is better)", per_kind(lambda s: med(s["latency_ms"])), "{:.2f}"),
        ("CPU-bound efficiency, bare pool = 1 (higher is better)",
         [med([efficiency(r[kind]) for r in rounds]) for kind in ("sdk", "cmworker")],
         "{:.3f}"),
        (f"{raw['sizes']['payload_mb']} MB echoed, ms per job (lower is better)",
         [med([x for r in rounds for x in r["payload"]["echo"][kind]["wall_s"]]) * 1e3 for kind in ("sdk", "cmworker")],
         "{:,.0f}"),
        (f"{raw['sizes']['stream_items']:,}-item stream, start to answer, ms (lower is better)",
         per_kind(lambda s: med([x["total_ms"] for x in s["flood"]])), "{:,.1f}"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (title, values, fmt) in zip(axes.flat, panels, strict=True):
        bars = ax.bar(["official SDK", "cmworker"], values, color=["#9aa5b1", "#2f6db5"])
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=2)
        ax.set_title(title, fontsize=9.5)
        ax.set_ylim(0, max(values) * 1.2 or 1)
        ax.spines[["top", "right"]].set_visible(False)
    machine = raw["machine"]
    fig.suptitle(f"cmworker vs the official SDK on the same embedded runtime, {raw['workers']} workers each — "
                 f"{raw['when'][:10]}, {machine['cpus']} CPUs, Python {machine['python']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def row_groups(text: str) -> set[str]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(GROUPS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown group(s) {sorted(unknown)}; the groups are {', '.join(GROUPS)}")
    return names


def worker_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"want worker counts such as 2,8,32, got {text!r}")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run (< 60 s)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--workers", type=int, default=2, help="workers per client (default 2)")
    parser.add_argument("--json", metavar="FILE", help="write every raw number to FILE")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--only", metavar="GROUPS", type=row_groups,
                        help="run only these row groups, comma-separated: " + "; ".join(
                            f"{name}: {what}" for name, what in GROUPS.items()))
    parser.add_argument("--pin", action="store_true", help="the pinned CPU-bound row alone (as --only pin)")
    parser.add_argument("--waiting-workers", metavar="W,W,...", type=worker_counts, default=(2, 8, 32),
                        help="worker counts of the waiting row (default 2,8,32)")
    parser.add_argument("--report", nargs="?", const=str(ROOT / "docs"), metavar="DIR",
                        help=f"write the tables into DIR/benchmarks.md (between the {REPORT_BEGIN!r} and "
                             f"{REPORT_END!r} lines) and the chart to DIR/{CHART} (needs the bench extra: "
                             "matplotlib); DIR defaults to docs/")
    args = parser.parse_args()
    groups: set[str] = set(args.only or GROUPS) | ({"pin"} if args.pin else set())
    if args.pin and not args.only:
        groups = {"pin"}
    if args.report and groups != set(GROUPS):
        parser.error("--report writes every table: it cannot be combined with --only or --pin")
    if "pin" in groups and not can_pin():
        if args.only or args.pin:
            parser.error(f"the pinned row needs CPUs 0 and 1; this process may use {sorted(os.sched_getaffinity(0))}")
        groups.discard("pin")
        progress(f"the pinned row is left out: it needs CPUs 0 and 1, this process may use "
                 f"{sorted(os.sched_getaffinity(0))}")
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**asdict(sizes), "rounds": args.rounds})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run every finally: stop the clients
    started = time.monotonic()
    spin_n = calibrate(sizes.job_ms)
    payload = base64.b64encode(os.urandom(sizes.payload_mb * 10**6 * 3 // 4)).decode()
    raw: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "workers": args.workers, "groups": sorted(groups), "waiting_workers": list(args.waiting_workers),
        "sizes": asdict(sizes), "spin_n": spin_n, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="cmworker-bench-e2e-") as tmp, BarePools() as bare:
        # Every bare pool up front, before anything is pinned: the forkserver they share keeps the CPUs it
        # was started with, and so would every worker forked from it.
        if groups & {"cpu", "noop", "stream", "logging"}:  # the sessions that are handed it
            bare.get(args.workers)
        for count in args.waiting_workers if "waiting" in groups else ():
            bare.get(count)
        if "pin" in groups:
            bare.get(1, cpus={0})
        workdir = Path(tmp)
        for r in range(sizes.rounds):
            pair = ["sdk", "cmworker"] if r % 2 == 0 else ["cmworker", "sdk"]
            order = list(pair) if groups & {"noop", "cpu", "stream"} else []
            if sizes.log_pairs and "logging" in groups:  # the logging session, before or after the clients in turn
                order.insert(0 if r % 2 else len(order), "logging")
            if sizes.nice0_session and "cpu" in groups:  # likewise beside the default cmworker session
                order.insert(order.index("cmworker") + (r // 2) % 2, "cmworker_nice0")
            results: dict[str, Any] = {"order": order}
            for kind in order:
                progress(f"round {r + 1}/{sizes.rounds}: {kind}")
                results[kind] = session(kind, sizes, args.workers, spin_n, workdir, f"r{r + 1}-{kind}",
                                        bare.get(args.workers), groups)
            if "payload" in groups:
                progress(f"round {r + 1}/{sizes.rounds}: payload (thin client, SDK, cmworker)")
                results["payload"] = payload_session(sizes, args.workers, payload, workdir, f"r{r + 1}-payload")
            if "waiting" in groups:
                results["waiting"] = {}
                for count in args.waiting_workers:
                    results["waiting"][str(count)] = {}
                    for kind in (*pair, "thin"):
                        progress(f"round {r + 1}/{sizes.rounds}: waiting, {count} workers, {kind}")
                        results["waiting"][str(count)][kind] = waiting_session(
                            kind, sizes, count, workdir, f"r{r + 1}-wait{count}-{kind}", bare.get(count))
            if "pin" in groups:
                results["pinned"] = {}
                for kind in pair:
                    progress(f"round {r + 1}/{sizes.rounds}: pinned, 1 worker, {kind}")
                    results["pinned"][kind] = pinned_session(kind, sizes, spin_n, workdir, f"r{r + 1}-pin-{kind}",
                                                             bare.get(1, cpus={0}))
            raw["rounds"].append(results)
        if "transport" in groups:
            progress("transport microbenchmark")
            raw["transport"] = transport(sizes.transport_cycles, sizes.rounds)
    raw["generator_own_ms"] = generator_own_ms(sizes.stream_items)
    spins = []
    for _ in range(5):
        t = time.perf_counter()
        e2e_work.spin(spin_n)
        spins.append(time.perf_counter() - t)
    raw["spin_job_s"] = statistics.median(spins)
    with _teed() as tables:
        checks = report(raw, sizes, args.workers)
        print("\n### Targets\n\n| | target | measured |\n|---|---|---|")
        for name, ok, measured in checks:
            print(f"| {'PASS' if ok else 'FAIL'} | {name} | {measured} |")
    raw["targets"] = [{"target": name, "pass": ok, "measured": measured} for name, ok, measured in checks]
    raw["elapsed_s"] = time.monotonic() - started
    raw["client_processes"] = STARTED
    print(f"\n{raw['when']}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{raw['elapsed_s']:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    if args.report:
        write_report(Path(args.report), raw, tables.getvalue(), " ".join(["scripts/bench_e2e.py", *sys.argv[1:]]))
    return 1 if args.strict and not all(ok for _, ok, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
