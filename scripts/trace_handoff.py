#!/usr/bin/env python3
"""Where the time between two jobs of a cmworker worker goes, step by step.

``cmworker run`` serves scripts/bench_apps/e2e_cmworker.py against an ``EmbeddedRuntime`` in this process,
with timestamps added to its parent (``--serve TRACE``: this script, run as the client, serves with an
observer of the ``Poller``'s steps, and writes the timestamps to TRACE as it exits; it is started and
stopped by bench_e2e's ``serving``). CPU-bound jobs (``e2e_work.spin_timed``) report when they started
and ended inside the worker. Joined on the job id and the worker's pid, each hand-off from one job of a worker
to its next reads:

    job ends (in the worker) -> the parent has its answer -> GET job sent -> GET answered
    -> job handed to the worker -> job starts (in the worker)

and, beside the GET, the earlier job's answer: POST result sent -> POST answered (timed from the parent
having the answer; it no longer stands between two jobs of a worker).

All times are ``time.monotonic()`` (CLOCK_MONOTONIC, system-wide); recording one is a list append. A
diagnostic, not a benchmark: the VM's speed drifts, so compare steps within one run.

    .venv/bin/python scripts/trace_handoff.py [--batches N] [--jobs J] [--job-ms MS] [--workers W] [--nap]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "scripts" / "bench_apps"
STEPS = ("the parent has the answer", "GET job sent", "GET answered", "job handed to the worker", "job starts")
BESIDE = ("POST result sent", "POST answered")
# The Poller's steps (its observer's) of the earlier job of a hand-off, and of the later one.
EARLIER = ("answer",)
LATER = ("get_start", "get_end", "submit")
POSTING = ("post_start", "post_end")


def serve(trace: str, argv: list[str]) -> int:
    """The traced client: ``cmworker run`` with a timestamp on each step of the parent's hand-off."""
    from cmworker import cli
    from cmworker.commands import run

    marks: list[tuple[float, str, str, int]] = []

    def observe(step: str, job_id: str) -> None:
        # A GET's job is known only once the same poll thread submits it: the thread joins the two.
        marks.append((time.monotonic(), step, job_id, threading.get_ident()))

    try:
        return run.run_run(cli.build_parser("run").parse_args(argv), observer=observe)
    finally:
        Path(trace).write_text(json.dumps(marks))


def hand_offs(marks: list[list[Any]], jobs: dict[str, list[float]]) -> tuple[list[list[float]], int]:
    """Each hand-off's step times, in ms from the end of the earlier job (one list per hand-off: the
    times of ``STEPS``, then those of ``BESIDE``), and how many hand-offs were left out because their
    GET was sent before the earlier job's answer was in (it was asked for by another worker's turn). A GET
    belongs to the job its poll thread submitted next."""
    by_job: dict[str, dict[str, float]] = defaultdict(dict)
    last_get: dict[int, dict[str, float]] = defaultdict(dict)  # by poll thread
    for at, name, job_id, thread in marks:
        if name in ("get_start", "get_end"):
            last_get[thread][name] = at
        elif name == "submit":
            by_job[job_id].update(last_get[thread], submit=at)
        else:
            by_job[job_id][name] = at
    by_worker: dict[tuple[float, float], list[tuple[float, float, str]]] = defaultdict(list)
    for job_id, (start, end, pid, batch) in jobs.items():
        by_worker[pid, batch].append((start, end, job_id))  # between batches a worker waits for work
    out, interleaved = [], 0
    for runs in by_worker.values():
        runs.sort()
        for (_, end, earlier), (start, _, later) in itertools.pairwise(runs):
            a, b = by_job.get(earlier, {}), by_job.get(later, {})
            if not set(EARLIER + POSTING) <= a.keys() or not set(LATER) <= b.keys():
                continue  # the first job of a batch, or a step that was not traced
            times = [end, *(a[step] for step in EARLIER), *(b[step] for step in LATER), start]
            if times != sorted(times):
                interleaved += 1
                continue
            out.append([(t - end) * 1e3 for t in times[1:]] + [(a[step] - end) * 1e3 for step in POSTING])
    return out, interleaved


def report(rows: list[list[float]], interleaved: int) -> None:
    print(f"{len(rows)} hand-offs ({interleaved} more whose GET went out before the earlier answer was in "
          "are left out); each step's time from the step before, ms\n")
    print("| step | median | mean | p90 | max |\n|---|---|---|---|---|")

    def line(step: str, took: list[float]) -> None:
        took = sorted(took)
        print(f"| {step} | {statistics.median(took):.3f} | {statistics.fmean(took):.3f} | "
              f"{took[int(len(took) * 0.9)]:.3f} | {took[-1]:.3f} |")

    if not rows:
        print("| (no hand-off traced) | | | | |")
        return
    previous = [0.0] * len(rows)
    for i, step in enumerate(STEPS):
        line(step, [row[i] - before for row, before in zip(rows, previous, strict=True)])
        previous = [row[i] for row in rows]
    line("**job end to next job start**", [row[len(STEPS) - 1] for row in rows])
    answered = [row[0] for row in rows]
    for j, step in enumerate(BESIDE):  # beside the GET: from the answer being in, then from the step before
        times = [row[len(STEPS) + j] for row in rows]
        line(f"beside it: {step}", [t - before for t, before in zip(times, answered, strict=True)])
        answered = times


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        return serve(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=10, help="batches of jobs (default 10)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs per batch (default 20)")
    parser.add_argument("--job-ms", type=float, default=50.0, help="a job's length at the machine's fastest")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--nap", action="store_true",
                        help="jobs that sleep --job-ms (waiting on an outside service) instead of computing")
    args = parser.parse_args()
    sys.path.insert(0, str(APPS))
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_e2e import calibrate, run_jobs, serving

    from cmworker.runtime.embedded import DEFAULT_USER_ID, EmbeddedRuntime

    call = ("nap", args.job_ms) if args.nap else ("spin", calibrate(args.job_ms))
    jobs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cmworker-trace-") as tmp, \
            EmbeddedRuntime(long_poll=5.0, max_concurrent_tasks=args.workers) as rt:
        trace = Path(tmp) / "trace.json"
        # Stopped with SIGTERM as the block ends: cmworker drains and exits, and the trace is written.
        with serving("cmworker", rt, args.workers, Path(tmp), "trace",
                     launcher=(sys.executable, __file__, "--serve", str(trace))):
            run_jobs(rt, [("spin", 1000)] * (4 * args.workers))  # every worker warm
            for batch in range(args.batches):
                ids = rt.store.submit([(*call, DEFAULT_USER_ID)] * args.jobs)
                for job_id, snap in zip(ids, rt.store.wait_finished(ids, 600.0), strict=True):
                    if snap is None or snap.answer is None:
                        raise RuntimeError(f"job {job_id} was not answered: {snap}")
                    jobs[job_id] = [*json.loads(snap.answer), batch]  # start, end, pid, batch
        marks = json.loads(trace.read_text())
    print(f"{args.batches} batches of {args.jobs} jobs of ~{args.job_ms:.0f} ms, {args.workers} workers, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    report(*hand_offs(marks, jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
