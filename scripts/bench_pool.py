#!/usr/bin/env python3
"""Measure cmworker's worker pool beside multiprocessing.Pool, ProcessPoolExecutor, pebble and loky.

One run measures, every pool at two workers, side by side:

1. no-op round trip (submit one job, wait for its answer, repeat): interleaved rounds, pools rotated,
   with two floor references (a bare socketpair ping-pong to a forked child, with and without a reader
   thread) to show how much of a round trip is the OS and how much the pool; the CPU each side spends
   per call; and the same again with every process pinned to one CPU, and split over two, because on a
   VM where the scheduler puts the processes changes a round trip several-fold;
2. no-op throughput with a bounded in-flight window, and the CPU each pool spends per job;
3. what each pool does with a task that dies, and cmworker's death -> answer latency: the dying job
   writes ``time.monotonic()`` just before it dies (CLOCK_MONOTONIC is system-wide) and the answer's
   arrival is measured from that;
4. respawn: from that death until ``pool.available`` is back to full;
5. hard-timeout lateness (``JobLimits(timeout=0.2)``, a sleeping job and a busy one ignoring SIGTERM):
   deadline -> answer and deadline -> process exit (seen on a pidfd);
6. memory overshoot (``JobLimits(memory_limit=512 MiB)``, a 2 GiB allocation): the RSS the pool sampled
   and the kernel's own peak (``ru_maxrss`` of a per-trial process tree, read with ``wait4``);
7. ``cmworker.Executor`` beside ProcessPoolExecutor, loky and pebble as executors: ``submit`` -> ``result``
   round trip, one call at a time, and ``map`` throughput at chunksize 1 and a larger chunksize.

The machine is usually a shared VM: compare pools inside one run, as ratios.

    .venv/bin/python scripts/bench_pool.py [--quick] [--json FILE] [--strict] [--only roundtrip,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from poolbench.executors import ExecutorResults, measure_executors
from poolbench.peers import WORKERS
from poolbench.probes import leftover_processes
from poolbench.report import evaluate, render
from poolbench.sections import (
    QUICK,
    Series,
    Sizes,
    measure_crash_behaviour,
    measure_deaths,
    measure_memory,
    measure_round_trip,
    measure_throughput,
    measure_timeouts,
    memory_trial_child,
    progress,
)

import cmworker

SECTIONS = ("roundtrip", "throughput", "crash", "death", "timeout", "memory", "executor")
TUNABLE = ("rounds", "calls", "placement_rounds", "placement_calls", "warmup", "jobs", "throughput_rounds", "window",
           "crash_trials", "timeout_trials", "memory_trials", "executor_rounds", "executor_calls", "map_calls",
           "map_chunksize", "chunked_map_calls")


def measure(sections: Sequence[str], sizes: Sizes, tmp: Path) -> dict[str, Any]:
    steps: dict[str, Callable[[], Any]] = {
        "roundtrip": lambda: measure_round_trip(sizes),
        "throughput": lambda: measure_throughput(sizes),
        "crash": lambda: measure_crash_behaviour(sizes, tmp),
        "death": lambda: measure_deaths(sizes, tmp),
        "timeout": lambda: measure_timeouts(sizes),
        "memory": lambda: measure_memory(sizes),
        "executor": lambda: measure_executors(sizes),
    }
    return {name: steps[name]() for name in SECTIONS if name in sections}


def reap_leftovers() -> None:
    """Every pool is closed by now; anything of ours still alive is a leak: say so, then kill it by pid."""
    deadline = time.monotonic() + 5
    while (left := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in left:
        progress(f"warning: process {proc.pid} ({' '.join(proc.cmdline())[:80]}) outlived its pool; killing it")
        with contextlib.suppress(Exception):
            proc.kill()


def to_json(value: Any) -> Any:
    if isinstance(value, ExecutorResults):
        return to_json(value.to_json())
    if isinstance(value, Series):
        return {"rounds": value.rounds, "costs": [asdict(c) for c in value.costs], "median": value.median,
                "p99": value.p99}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return (f"{os.cpu_count()} CPUs {model}, Linux {platform.release()}, Python {platform.python_version()}, "
            f"cmworker {cmworker.__version__} from {Path(cmworker.__file__).parent}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Sizes()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in well under 30 s")
    parser.add_argument("--json", metavar="FILE", help="also write every raw number to FILE")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"a comma-separated subset of {','.join(SECTIONS)}")
    for name in TUNABLE:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, metavar="N",
                            help=f"default {getattr(defaults, name)}, {getattr(QUICK, name)} with --quick")
    parser.add_argument("--memory-trial", nargs=3, help=argparse.SUPPRESS)  # internal: one memory trial
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else Sizes()
    return replace(base, **{name: getattr(args, name) for name in TUNABLE if getattr(args, name) is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_trial:
        name, limit, size = args.memory_trial
        memory_trial_child(name, int(limit), int(size))
        return 0
    sizes = sizes_from(args)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
            results = measure(args.only.split(","), sizes, Path(tmp))
    finally:
        reap_leftovers()
    targets = evaluate(results, sizes)
    print(f"cmworker pool benchmark, {started_at}; {machine()}; {WORKERS} workers per pool; "
          f"{'--quick' if args.quick else 'full'} sizes\n")
    print(render(results, sizes, targets))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"started": started_at, "machine": machine(), "sizes": asdict(sizes),
                       "results": to_json(results), "targets": [asdict(t) for t in targets]}, f, indent=1)
    return 1 if args.strict and not all(t.ok for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
