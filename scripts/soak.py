#!/usr/bin/env python3
"""Soak: many jobs through a real ``cmworker run`` while the runtime misbehaves; every job answered once?

Setup: an ``EmbeddedRuntime`` in this process (real HTTPS on loopback) and ``cmworker run
scripts/bench_apps/soak_app.py --workers W`` as a subprocess, with its environment, logging at INFO to a
file. The jobs follow a fixed mix (``MIX``, shuffled with a seed): no-ops, CPU jobs of a few ms, short
streams, and 2 % segfaults, 1 % hangs past a 1 s timeout, 1 % memory hogs past a 64 MiB limit, 1 %
exceptions. While they run, the runtime injects ``FAULTS`` at fixed points of progress: 5xx bursts on
GET job and on POST result, a result POST cut halfway, a GET held past the client's poll timeout, a
restart of every module endpoint, and connections refused for a second.

Phases:
  1. warm-up: the first 10 % of the jobs (at least 50 per worker), all answered; then, idle, the
     *before* sample of the ``cmworker run`` process: RSS, open fds, descendants, zombies;
  2. the rest of the jobs, queued at once; faults fire as the answered count passes their points;
     answered count and parent RSS are sampled every ``--interval`` seconds (throughput over time);
  3. all answered (or no progress for ``--stall`` seconds): idle again, the *after* sample; then
     SIGTERM, its exit code, and whether any process it ever had is still alive.

Checks, from the runtime's own record: every job has exactly one accepted result POST (``accepted ==
1``), its answer is the expected one (the echoed event, the right sum, every stream item in order, or an
error of the expected kind), no job was dropped, and every armed fault was consumed. Targets: 100 %
answered exactly once, parent RSS growth (after - before) < 5 MB, no leaked fd, no leftover process,
no zombie.

    .venv/bin/python scripts/soak.py [--jobs 20000] [--workers 4] [--interval 10] [--seed 1] [--pad 0]
                                     [--report docs/soak.md] [--json FILE] [--keep-log FILE] [--strict]
                                     [--note TEXT] [--from-json FILE]

Exits 0 whether or not the targets are met (``--strict``: 1 on a miss); non-zero when the soak itself
fails. The ``cmworker run`` process group is always stopped: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import itertools
import json
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "scripts" / "bench_apps" / "soak_app.py"
sys.path.insert(0, str(ROOT))

from cmworker.runtime.embedded import EmbeddedRuntime  # noqa: E402

# Per 100 jobs. The failing kinds are the issue's: 2 % segfaults, 1 % timeouts, 1 % memory kills, 1 % exceptions.
MIX: tuple[tuple[str, int], ...] = (("noop", 70), ("cpu", 20), ("stream", 5), ("segfault", 2), ("hang", 1),
                                    ("hog", 1), ("fail", 1))
CPU_N = 50_000          # ~4 ms of pure Python
STREAM_ITEMS = 5
RSS_TARGET = 5 * 10**6  # bytes
# Everything else is cmworker's default (timeout 1h); the functions that need less declare it (soak_app.py).
CONFIG = 'poll_timeout = "3s"  # the injected hung GET is abandoned after this\n'

# (fraction of jobs answered, description, action). Each fires once, when the answered count passes it.
FAULTS: tuple[tuple[float, str, Callable[[EmbeddedRuntime], None]], ...] = (
    (0.15, "5 GET job requests answered 503", lambda rt: rt.fail_next_gets(5, 503)),
    (0.30, "5 result POSTs answered 502", lambda rt: rt.fail_next_results(5, 502)),
    (0.40, "a result POST cut halfway through its body", lambda rt: rt.drop_next_result()),
    (0.50, "a GET job held 10 s (past the 3 s poll timeout)", lambda rt: rt.hang_next_get(10.0)),
    (0.60, "restart of the module endpoints (open connections cut)", lambda rt: rt.restart()),
    (0.75, "connections refused for 1 s", lambda rt: rt.refuse_connections(1.0)),
    (0.90, "3 GET job requests answered 500 and 3 result POSTs answered 503",
     lambda rt: (rt.fail_next_gets(3, 500), rt.fail_next_results(3, 503))),
)


@dataclass(frozen=True)
class Spec:
    function: str
    event: dict[str, Any]


def plan(jobs: int, seed: int, pad: int = 0) -> list[Spec]:
    """``jobs`` jobs in the proportions of ``MIX`` (rounded; no-ops fill the rest), shuffled by ``seed``.

    ``pad``: a string of this many bytes in every no-op's event (and so in its answer).
    """
    counts = {name: jobs * share // 100 for name, share in MIX}
    counts["noop"] += jobs - sum(counts.values())
    names = [name for name, count in counts.items() for _ in range(count)]
    random.Random(seed).shuffle(names)
    specs = []
    for i, name in enumerate(names):
        event: dict[str, Any] = {"i": i}
        if name == "cpu":
            event["n"] = CPU_N
        elif name == "stream":
            event["items"] = STREAM_ITEMS
        elif name == "noop" and pad:
            event["pad"] = "x" * pad
        specs.append(Spec(name, event))
    return specs


def check_answer(spec: Spec, status: str, body: bytes) -> str | None:
    """``None`` when ``body`` is the answer ``spec`` must get; else what is wrong with it."""
    expected_kind = {"segfault": "worker_died", "hang": "timeout", "hog": "memory_limit", "fail": "exception"}
    if spec.function == "stream":
        want = b"".join(json.dumps({"i": spec.event["i"], "k": k}).encode() for k in range(STREAM_ITEMS))
        return None if body == want and status == "done" else f"stream answer {body[:200]!r} ({status})"
    try:
        payload = json.loads(body)
    except ValueError:
        return f"answer is not JSON: {body[:200]!r}"
    if spec.function in expected_kind:
        kind = payload.get("kind") if isinstance(payload, dict) else None
        if status != "failed" or kind != expected_kind[spec.function]:
            return f"expected {expected_kind[spec.function]}, got {status} {body[:300]!r}"
        return None
    if spec.function == "cpu":
        want_value: Any = {"n": CPU_N, "sum": sum(i * i for i in range(CPU_N))}
    else:
        want_value = spec.event
    return None if payload == want_value and status == "done" else f"expected {want_value}, got {body[:300]!r}"


# -- the cmworker run process ------------------------------------------------------------------


@dataclass
class Sample:
    """The ``cmworker run`` process at one instant."""

    t: float
    rss: int
    fds: int
    fd_targets: list[str]
    threads: int
    descendants: int
    zombies: list[int]
    cpu_s: float


class Parent:
    """The ``cmworker run`` subprocess, and every descendant it has been seen with."""

    def __init__(self, proc: subprocess.Popen[bytes], start: float) -> None:
        self.proc = proc
        self.process = psutil.Process(proc.pid)
        self.start = start
        self.seen: dict[int, float] = {}  # pid -> create_time of every descendant ever sampled

    def descendants(self) -> list[psutil.Process]:
        children = self.process.children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(child.pid, child.create_time())
        return children

    def sample(self) -> Sample:
        children = self.descendants()
        zombies = []
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() == psutil.STATUS_ZOMBIE:
                    zombies.append(child.pid)
        fd_dir = f"/proc/{self.proc.pid}/fd"
        targets = []
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                targets.append(_fd_kind(os.readlink(f"{fd_dir}/{fd}")))
        times = self.process.cpu_times()
        return Sample(round(time.monotonic() - self.start, 3), self.process.memory_info().rss, len(targets),
                      sorted(targets), self.process.num_threads(), len(children), zombies,
                      round(times.user + times.system, 3))

    def leftovers(self) -> list[str]:
        """Descendants ever seen that are still alive (the same process: pid and create time)."""
        alive = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                process = psutil.Process(pid)
                if process.create_time() == created:
                    alive.append(f"{pid} {process.status()} ppid={process.ppid()} {' '.join(process.cmdline())[:120]}")
        return alive


def _fd_kind(target: str) -> str:
    """``socket:[123]`` -> ``socket``; files keep their path: the diff of two samples shows what leaked."""
    return target.split(":", 1)[0] if target.startswith(("socket:", "pipe:", "anon_inode:")) else target


def _settle(parent: Parent, workers: int, seconds: float = 10.0) -> Sample:
    """Sample once the pool is idle and whole again (template + every worker, no zombie), or after ``seconds``."""
    deadline = time.monotonic() + seconds
    time.sleep(1.0)  # the last answers' POST threads and stream connections close
    while True:
        sample = parent.sample()
        if (sample.descendants == workers + 1 and not sample.zombies) or time.monotonic() > deadline:
            return sample
        time.sleep(0.2)


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Progress:
    ids: list[str] = field(default_factory=list)
    answered: int = 0
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t, answered, parent rss)
    faults: list[dict[str, Any]] = field(default_factory=list)


def run_soak(jobs: int = 20_000, *, workers: int = 4, interval: float = 10.0, seed: int = 1, pad: int = 0,
             stall: float = 120.0, log_path: Path | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the soak; return every number and check as a JSON-ready dict (``targets`` says pass/fail)."""
    specs = plan(jobs, seed, pad)
    warm = min(jobs, max(workers * 50, jobs // 10))
    tmp = Path(tempfile.mkdtemp(prefix="cmworker-soak-"))
    log_file = log_path or tmp / "cmworker-run.log"
    (tmp / "cmworker.toml").write_text(CONFIG)
    started = time.monotonic()
    result: dict[str, Any] = {"jobs": jobs, "workers": workers, "seed": seed, "interval_s": interval,
                              "mix": dict(MIX), "warmup_jobs": warm, "pad_bytes": pad}
    try:
        with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=workers) as rt, \
                open(log_file, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cmworker", "run", str(APP), "--workers", str(workers),
                 "--config", str(tmp / "cmworker.toml"), "--log-level", "INFO"],
                env={**os.environ, **rt.env(0)}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=tmp)
            parent = Parent(proc, started)
            try:
                progress = Progress()
                echo(f"soak: {jobs} jobs, {workers} workers; warm-up {warm} jobs")
                _submit(rt, specs[:warm], progress)
                _wait_all(rt, parent, progress, interval, stall, faults=False, echo=echo)
                before = _settle(parent, workers)
                echo(f"soak: warm-up done at {before.t:.1f}s; parent RSS {before.rss / 2**20:.1f} MiB, "
                     f"{before.fds} fds, {before.descendants} descendants")
                _submit(rt, specs[warm:], progress)
                main_start = time.monotonic()
                _wait_all(rt, parent, progress, interval, stall, faults=True, echo=echo)
                main_wall = time.monotonic() - main_start
                after = _settle(parent, workers)
                result.update(_verify(rt, specs, progress))
                result["pending_faults"] = [asdict(f) for f in rt.pending_faults()]  # all consumed?
            finally:
                exit_code = _stop(proc)
            result.update(
                before=asdict(before), after=asdict(after), exit_code=exit_code, leftover_processes=parent.leftovers(),
                descendants_seen=len(parent.seen), faults=progress.faults, timeline=progress.timeline,
                wall_s=round(time.monotonic() - started, 1), main_phase_wall_s=round(main_wall, 1),
                main_phase_jobs=jobs - warm, log_levels=_log_levels(log_file))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["targets"] = targets(result)
    return result


def _submit(rt: EmbeddedRuntime, specs: list[Spec], progress: Progress) -> None:
    progress.ids.extend(rt.store.submit([(s.function, s.event, "soak") for s in specs]))


def _wait_all(rt: EmbeddedRuntime, parent: Parent, progress: Progress, interval: float, stall: float, *,
              faults: bool, echo: Callable[[str], None]) -> None:
    """Until every submitted job is finished: fire due faults, sample progress every ``interval``."""
    pending = set(progress.ids)
    due = list(FAULTS) if faults else []
    total = len(progress.ids)
    first = progress.answered
    last_progress = next_sample = time.monotonic()
    while pending:
        if parent.proc.poll() is not None:
            raise RuntimeError(f"cmworker run exited with {parent.proc.returncode} with {len(pending)} jobs "
                               "unanswered")
        finished = [snap.id for snap in rt.store.snapshots(pending) if snap is not None and snap.finished]
        pending.difference_update(finished)
        if finished:
            last_progress = time.monotonic()
        progress.answered = total - len(pending)
        while due and progress.answered - first >= due[0][0] * (total - first):
            _at, what, action = due.pop(0)
            action(rt)
            progress.faults.append({"at_answered": progress.answered, "t": round(time.monotonic() - parent.start, 2),
                                    "fault": what})
        now = time.monotonic()
        if now >= next_sample or not pending:
            rss = parent.process.memory_info().rss
            progress.timeline.append((round(now - parent.start, 2), progress.answered, rss))
            next_sample = now + interval
            parent.descendants()  # remember every pid, for the leftover check at exit
            echo(f"  {now - parent.start:7.1f}s  answered {progress.answered:6d}/{total}  "
                 f"parent RSS {rss / 2**20:6.1f} MiB")
        if now - last_progress > stall:
            raise RuntimeError(f"no job answered for {stall:.0f}s; {len(pending)} unanswered, e.g. "
                               f"{sorted(pending)[:5]}")
        time.sleep(0.1)


def _verify(rt: EmbeddedRuntime, specs: list[Spec], progress: Progress) -> dict[str, Any]:
    """Exactly one accepted POST per job and the expected answer, from the runtime's record."""
    accepted = collections.Counter[int]()
    post_statuses = collections.Counter[str]()
    wrong: list[str] = []
    kinds = collections.Counter[str]()
    for spec, job_id in zip(specs, progress.ids, strict=True):
        posts = rt.record.result_posts(job_id)
        for post in posts:
            post_statuses[str(post.status)] += 1
        accepted[sum(post.status == 204 for post in posts)] += 1
        snap = rt.record.job(job_id)
        if snap is None or snap.answer is None:
            wrong.append(f"{job_id} ({spec.function}): no answer, status {snap and snap.status}")
            continue
        problem = check_answer(spec, snap.status, snap.answer)
        kinds[f"{spec.function}: {snap.status}"] += 1
        if problem:
            wrong.append(f"{job_id} ({spec.function}): {problem}")
    ours = set(progress.ids)
    unknown_posts = sum(1 for s in rt.record.jobs() if s.id not in ours)
    return {
        "answered_exactly_once": accepted.get(1, 0),
        "accepted_posts_per_job": {str(k): v for k, v in sorted(accepted.items())},
        "wrong_answers": len(wrong), "wrong_examples": wrong[:20],
        "answers_by_function": dict(sorted(kinds.items())),
        "result_post_statuses": dict(sorted(post_statuses.items())),
        "restart_notifications": rt.record.restart_notifications(0),
        "max_held": rt.record.max_held(0), "unexpected_jobs": unknown_posts,
    }


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
    return proc.returncode


def _log_levels(path: Path) -> dict[str, int]:
    levels = collections.Counter[str]()
    with open(path, "rb") as f:
        for line in f:
            try:
                levels[json.loads(line).get("level", "?")] += 1
            except (ValueError, AttributeError):
                levels["(not SLS)"] += 1
    return dict(levels)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    before, after = result["before"], result["after"]
    growth = after["rss"] - before["rss"]
    leaked_fds = after["fds"] - before["fds"]
    once = result["answered_exactly_once"]
    return [
        {"target": "every job answered exactly once, with the expected answer", "want": "100 %",
         "got": f"{once}/{result['jobs']} once, {result['wrong_answers']} wrong",
         "ok": once == result["jobs"] and result["wrong_answers"] == 0},
        {"target": "parent RSS growth, idle after warm-up -> idle at the end", "want": "< 5 MB",
         "got": f"{growth / 10**6:+.2f} MB", "ok": growth < RSS_TARGET},
        {"target": "open fds of the parent, leaked", "want": "0", "got": f"{leaked_fds:+d}",
         "ok": leaked_fds <= 0},
        {"target": "zombies (after) and processes left after exit", "want": "0",
         "got": f"{len(after['zombies'])} zombies, {len(result['leftover_processes'])} left",
         "ok": not after["zombies"] and not result["leftover_processes"]},
        {"target": "every injected fault consumed; clean exit on SIGTERM", "want": "yes, exit 0",
         "got": f"{len(result['pending_faults'])} pending, exit {result['exit_code']}",
         "ok": not result["pending_faults"] and result["exit_code"] == 0},
    ]


# -- the report --------------------------------------------------------------------------------


def throughput(timeline: list[tuple[float, int, int]]) -> list[tuple[float, float, int, float]]:
    """(start s, end s, jobs answered, jobs/s) per sampling interval."""
    rows = []
    for (t0, n0, _), (t1, n1, _) in itertools.pairwise(timeline):
        if t1 > t0:
            rows.append((t0, t1, n1 - n0, (n1 - n0) / (t1 - t0)))
    return rows


def markdown(result: dict[str, Any], command: str) -> str:
    before, after = result["before"], result["after"]
    rows = throughput(result["timeline"])
    rates = sorted(r[3] for r in rows if r[2])
    lines = [
        "# Soak test",
        "",
        f"`{command}` — {result['date']}, {result['machine']}.",
        "",
        f"{result['jobs']:,} jobs through `cmworker run` ({result['workers']} workers) against the embedded "
        "runtime over loopback HTTPS, while the runtime injects faults. Mix per 100 jobs: "
        + ", ".join(f"{share} {name}" for name, share in result["mix"].items())
        + f" (`scripts/bench_apps/soak_app.py`: `cpu` ~4 ms of Python, `stream` {STREAM_ITEMS} items, `segfault` "
        "SIGSEGV, `hang` sleeps past its 1 s timeout, `hog` allocates past its 64 MiB limit, `fail` raises). "
        f"Warm-up: the first {result['warmup_jobs']:,} jobs; the *before* sample is taken idle after them, "
        "the *after* sample idle after the last job. Every check reads the runtime's own record.",
        "",
        "## Targets",
        "",
        "| | target | want | got |",
        "|---|---|---|---|",
        *[f"| {'PASS' if t['ok'] else 'FAIL'} | {t['target']} | {t['want']} | {t['got']} |" for t in result["targets"]],
        "",
        "## Numbers",
        "",
        "| | value |",
        "|---|---|",
        f"| wall time, whole run (start, warm-up, main phase, stop) | {result['wall_s']:.1f} s |",
        f"| main phase: {result['main_phase_jobs']:,} jobs | {result['main_phase_wall_s']:.1f} s, "
        f"{result['main_phase_jobs'] / result['main_phase_wall_s']:.0f} jobs/s |",
        f"| throughput per {result['interval_s']:g} s interval (min / median / max) | "
        + (f"{rates[0]:.0f} / {rates[len(rates) // 2]:.0f} / {rates[-1]:.0f} jobs/s |" if rates else "- |"),
        f"| parent RSS before → after (peak sampled) | {before['rss'] / 2**20:.1f} MiB → "
        f"{after['rss'] / 2**20:.1f} MiB ({max(r for _, _, r in result['timeline']) / 2**20:.1f} MiB) |",
        f"| parent open fds before → after | {before['fds']} → {after['fds']} |",
        f"| parent threads before → after | {before['threads']} → {after['threads']} |",
        f"| descendants before → after (template + workers) | {before['descendants']} → {after['descendants']} |",
        f"| zombies after; processes alive after exit | {len(after['zombies'])}; "
        f"{len(result['leftover_processes'])} (of {result['descendants_seen']} ever seen) |",
        f"| parent CPU, whole run | {after['cpu_s']:.1f} s |",
        f"| exit code after SIGTERM | {result['exit_code']} |",
        f"| accepted result POSTs per job | {_counts(result['accepted_posts_per_job'])} |",
        f"| result POSTs by runtime answer | {_counts(result['result_post_statuses'])} |",
        f"| most jobs held at once (cap {result['workers']}) | {result['max_held']} |",
        f"| log lines by level | {_counts(result['log_levels'])} |",
        "",
        "Answers by function (runtime status):",
        "",
        "| function: status | jobs |",
        "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in result["answers_by_function"].items()],
        "",
        "## Faults injected",
        "",
        "| at answered | t (s) | fault |",
        "|---|---|---|",
        *[f"| {f['at_answered']:,} | {f['t']:.1f} | {f['fault']} |" for f in result["faults"]],
        "",
        "Result POSTs answered `0` are the cut ones, `5xx` the injected refusals, `409` a retry of an answer "
        "that had already reached the runtime before the reply was lost (the restart cuts connections): the "
        "runtime counts it once.",
        "",
        "## Throughput over time",
        "",
        "| interval (s) | jobs answered | jobs/s | parent RSS at end (MiB) |",
        "|---|---|---|---|",
        *[f"| {t0:.0f}-{t1:.0f} | {n:,} | {rate:.0f} | {rss / 2**20:.1f} |"
          for (t0, t1, n, rate), (_, _, rss) in zip(rows, result["timeline"][1:], strict=True)],
    ]
    if result.get("note"):
        lines += ["", "## Notes", "", result["note"]]
    if result["wrong_examples"]:
        lines += ["", "## Wrong or missing answers (first 20)", "", *[f"- {w}" for w in result["wrong_examples"]]]
    return "\n".join(lines) + "\n"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in counts.items()) or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pad", type=int, default=0, help="bytes of padding in every no-op's event (default 0)")
    parser.add_argument("--stall", type=float, default=120.0, help="give up after this long without an answer")
    parser.add_argument("--report", type=Path, help="write the markdown report here (e.g. docs/soak.md)")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--keep-log", type=Path, help="keep cmworker run's log here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--note", help="a paragraph for the report's Notes section (e.g. why a target was missed)")
    parser.add_argument("--from-json", type=Path, help="do not run: render the report of an earlier --json file")
    args = parser.parse_args(argv)
    if args.jobs < 100:
        parser.error("--jobs must be at least 100")
    # SIGTERM unwinds like Ctrl-C, so the `cmworker run` process group is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    command = "scripts/soak.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        result = run_soak(args.jobs, workers=args.workers, interval=args.interval, seed=args.seed, pad=args.pad,
                          stall=args.stall, log_path=args.keep_log)
        result["command"] = command.strip()
        result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        result["machine"] = (f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} "
                             f"{platform.release()}")
    if args.note:
        result["note"] = args.note
    report = markdown(result, result["command"])
    print(report)
    if args.report:
        args.report.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 1 if args.strict and not all(t["ok"] for t in result["targets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
