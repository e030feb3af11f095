"""Verdicts against the targets, and the tables (Markdown, readable as they are in a terminal).

Latency targets (round trip, death -> answer, respawn) are judged on the median; bounds (how late a
kill may be, how high RSS may get) on the worst trial.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from poolbench import executors
from poolbench.executors import ExecutorResults, MapSample
from poolbench.peers import PEERS, CmworkerPeer
from poolbench.probes import percentile
from poolbench.sections import (
    FREE,
    TARGET_ALLOCATIONS,
    CrashBehaviour,
    DeathSample,
    GiB,
    KillSample,
    MemorySample,
    MiB,
    Series,
    Sizes,
    ThroughputSample,
)

OURS = CmworkerPeer.name


@dataclass(frozen=True)
class Target:
    what: str
    measured: str
    limit: str
    ok: bool


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.3f}" if abs(seconds) < 0.01 else f"{seconds * 1000:.1f}"


def us(seconds: float) -> str:
    return f"{max(0.0, seconds) * 1e6:.0f}"  # CPU deltas from tick counters can come out a hair below 0


def mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _spread(values: Sequence[float]) -> list[str]:
    return [ms(statistics.median(values)), ms(percentile(values, 90)), ms(max(values))]


# -- targets ----------------------------------------------------------------------------------------


def _round_trip_targets(rt: dict[str, Series]) -> list[Target]:
    ours = rt[OURS].median
    best, name = min((rt[cls.name].median, cls.name) for cls in PEERS if cls is not CmworkerPeer)
    won = sum(o < min(rt[cls.name].round_medians[i] for cls in PEERS if cls is not CmworkerPeer)
              for i, o in enumerate(rt[OURS].round_medians))
    return [
        Target("no-op round trip, median", f"{ms(ours)} ms", "<= 0.250 ms", ours <= 0.00025),
        Target("no-op round trip below every peer", f"fastest peer {name} {ms(best)} ms = {best / ours:.2f}x "
               f"cmworker; cmworker fastest in {won}/{len(rt[OURS].rounds)} rounds", "> 1.00x", ours < best),
    ]


def _death_targets(deaths: dict[str, list[DeathSample]]) -> list[Target]:
    targets = []
    for label in ("os._exit(3)", "SIGSEGV"):
        answer = statistics.median(s.to_answer for s in deaths[label])
        ready = statistics.median(s.to_ready for s in deaths[label])
        targets.append(Target(f"death -> answer, {label}, median", f"{ms(answer)} ms", "<= 50 ms", answer <= 0.05))
        targets.append(Target(f"respawn (death -> replacement ready), {label}, median", f"{ms(ready)} ms",
                              "<= 20 ms", ready <= 0.02))
    return targets


def _kill_targets(kills: dict[str, list[KillSample]]) -> list[Target]:
    targets = []
    for name, samples in kills.items():
        worst = max(max(s.answer_late, s.gone_late) for s in samples)
        targets.append(Target(f"kill past the deadline, {name}, worst of answer and exit", f"{ms(worst)} ms",
                              "<= 100 ms", worst <= 0.1))
    return targets


def _memory_targets(memory: dict[str, list[MemorySample]], sizes: Sizes) -> list[Target]:
    samples = [s for label in TARGET_ALLOCATIONS for s in memory[label]]
    bound = sizes.memory_limit * 1.1 + 64 * MiB
    sampled = max(max(s.rss_bytes, s.max_rss) for s in samples)
    kernel = max(s.kernel_peak for s in samples)
    job = "b'\\x01' * 2**31"
    return [
        Target(f"peak RSS of {job}, as the pool sampled it, worst", mib(sampled), f"<= {mib(bound)}", sampled <= bound),
        Target(f"peak RSS of {job}, per the kernel (ru_maxrss), worst", mib(kernel), f"<= {mib(bound)}",
               kernel <= bound),
    ]


def _executor_targets(results: ExecutorResults) -> list[Target]:
    rt = results.round_trip
    ours = rt[executors.OURS].median
    best, name = min((s.median, n) for n, s in rt.items() if n != executors.OURS)
    targets = [Target("Executor.submit round trip at least as fast as the fastest peer executor",
                      f"{ms(ours)} ms; fastest peer {name} {ms(best)} ms = {best / ours:.2f}x cmworker", ">= 1.00x",
                      ours <= best)]
    for chunksize, by_name in results.throughput.items():
        ours_rate = executors.median_rate(by_name[executors.OURS])
        best_rate, name = max((executors.median_rate(v), n) for n, v in by_name.items() if n != executors.OURS)
        targets.append(Target(f"Executor.map throughput, chunksize {chunksize}, within 10 % of the fastest peer",
                              f"{ours_rate:,.0f}/s; fastest peer {name} {best_rate:,.0f}/s = "
                              f"{ours_rate / best_rate:.2f}x", ">= 0.90x", ours_rate >= 0.9 * best_rate))
    return targets


def evaluate(results: dict[str, Any], sizes: Sizes) -> list[Target]:
    targets: list[Target] = []
    if "roundtrip" in results:
        targets += _round_trip_targets(results["roundtrip"][FREE])
    if "death" in results:
        targets += _death_targets(results["death"])
    if "timeout" in results:
        targets += _kill_targets(results["timeout"])
    if "memory" in results:
        targets += _memory_targets(results["memory"], sizes)
    if "executor" in results:
        targets += _executor_targets(results["executor"])
    return targets


# -- tables -----------------------------------------------------------------------------------------


def _faster_rounds(ours: Series, theirs: Series) -> str:
    won = sum(o < t for o, t in zip(ours.round_medians, theirs.round_medians, strict=True))
    return f"{won}/{len(ours.rounds)}"


def round_trip_table(by_placement: dict[str, dict[str, Series]], sizes: Sizes) -> str:
    results = by_placement[FREE]
    ours = results[OURS]
    peers = {cls.name for cls in PEERS} - {OURS}
    rows = [[name, ms(s.median), ms(s.p99), f"{ms(min(s.round_medians))} - {ms(max(s.round_medians))}",
             f"{s.median / ours.median:.2f}x", _faster_rounds(ours, s) if name in peers else ""]
            for name, s in results.items()]
    return (f"### No-op round trip\n\n{sizes.rounds} interleaved rounds x {sizes.calls} calls after {sizes.warmup} "
            "warm-up calls, processes placed by the scheduler; median = median of the round medians, p99 = median "
            "of the round p99s.\n\n"
            + table(["pool", "median ms", "p99 ms", "round medians ms", "vs cmworker", "rounds cmworker faster"],
                    rows)
            + "\n\n" + cost_table(results) + "\n\n" + placement_table(by_placement, sizes))


def placement_table(by_placement: dict[str, dict[str, Series]], sizes: Sizes) -> str:
    placements = list(by_placement)
    rows = []
    for name in by_placement[FREE]:
        cells = [name]
        for placement in placements:
            series = by_placement[placement].get(name)
            if series is None or not series.rounds:
                cells.append("")
                continue
            cells.append(f"{ms(series.median)} ({series.median / by_placement[placement][OURS].median:.2f}x)")
        rows.append(cells)
    return (f"The same, pinned ({sizes.placement_rounds} rounds x {sizes.placement_calls} calls each): one CPU = "
            "this process and every child on CPU 0; split = this process on CPU 0, every child on CPU 1. "
            "Median ms (vs cmworker):\n\n"
            + table(["pool", *placements], rows))


def cost_table(results: dict[str, Series]) -> str:
    rows = []
    for name, series in results.items():
        if not series.costs:
            continue
        caller, threads, children, faults = (statistics.median(getattr(c, f) for c in series.costs)
                                             for f in ("caller", "threads", "children", "faults"))
        rows.append([name, ms(series.median), us(caller), us(threads), us(children),
                     us(caller + threads + children), f"{faults:.2f}"])
    return ("Where a round trip's CPU goes (per call, median over rounds; child CPU has 10 ms tick resolution):\n\n"
            + table(["pool", "wall median ms", "caller thread us", "pool threads us", "child processes us",
                     "CPU sum us", "page faults here"], rows))


def throughput_table(results: dict[str, list[ThroughputSample]], sizes: Sizes) -> str:
    ours = statistics.median(t.jobs_per_s for t in results[OURS])
    rows = []
    for name, samples in results.items():
        rates = [t.jobs_per_s for t in samples]
        rows.append([name, f"{statistics.median(rates):,.0f}", f"{min(rates):,.0f} - {max(rates):,.0f}",
                     f"{statistics.median(rates) / ours:.2f}x",
                     f"{statistics.median(t.cost.caller + t.cost.threads for t in samples) * 1e6:.0f}",
                     f"{statistics.median(t.cost.children for t in samples) * 1e6:.0f}",
                     f"{statistics.median(t.cost.faults for t in samples):.2f}"])
    return (f"### Throughput\n\n{sizes.throughput_rounds} rounds x {sizes.jobs:,} no-op jobs, {sizes.window} in "
            "flight, through each pool's own submit and completion callback.\n\n"
            + table(["pool", "jobs/s (median)", "range", "vs cmworker", "CPU here us/job",
                     "CPU in children us/job", "page faults here/job"], rows))


def crash_table(rows: list[CrashBehaviour]) -> str:
    return ("### A task that calls os._exit(3): what each pool does\n\n"
            + table(["pool", "answer", "death -> answer ms", "pool usable afterwards"],
                    [[r.pool, r.answer, ms(r.latency), r.usable] for r in rows]))


def death_table(results: dict[str, list[DeathSample]]) -> str:
    rows = []
    for label, samples in results.items():
        stages = (("death -> process gone", [s.to_exit for s in samples]),
                  ("death -> answer", [s.to_answer for s in samples]),
                  ("answer -> replacement ready", [s.to_ready - s.to_answer for s in samples]),
                  ("death -> replacement ready (respawn)", [s.to_ready for s in samples]))
        rows += [[label, stage, *_spread(values)] for stage, values in stages]
    n = len(next(iter(results.values()), []))
    return (f"### cmworker: a job that dies\n\n{n} trials each. Death = the time.monotonic() the job wrote just "
            "before dying; process gone = its pidfd became readable; ready = pool.available back to 2.\n\n"
            + table(["death", "stage", "median ms", "p90 ms", "max ms"], rows))


def timeout_table(results: dict[str, list[KillSample]], sizes: Sizes) -> str:
    rows = []
    for name, samples in results.items():
        rows.append([name, "deadline -> answer", *_spread([s.answer_late for s in samples])])
        rows.append([name, "deadline -> process gone", *_spread([s.gone_late for s in samples])])
    n = len(next(iter(results.values()), []))
    return (f"### cmworker: hard timeout {sizes.timeout:g} s\n\n{n} trials each; deadline = dispatch + "
            f"{sizes.timeout:g} s (Answer.queued tells the dispatch time).\n\n"
            + table(["job", "stage", "median ms", "p90 ms", "max ms"], rows))


def memory_table(results: dict[str, list[MemorySample]], sizes: Sizes) -> str:
    rows = [[label, s.kind, mib(s.baseline), mib(s.rss_bytes), mib(s.max_rss), mib(s.kernel_peak),
             f"{s.growth / GiB:.2f}", ms(s.wall)] for label, samples in results.items() for s in samples]
    return (f"### cmworker: memory limit {mib(sizes.memory_limit)}, a job allocating {sizes.allocation / GiB:g} "
            f"GiB at once\n\nOne process per trial; bound = limit x 1.1 + 64 MiB = "
            f"{mib(sizes.memory_limit * 1.1 + 64 * MiB)}. Growth = (rss_bytes - idle RSS) / (dispatch -> answer). "
            "bytes * n is the job doing b'\\x01' * 2**31; THP memset maps 2 GiB with MADV_HUGEPAGE and memsets it. "
            "Each is the first job of a fresh pool; warmed: right after another process allocated and freed "
            f"{mib(sizes.warm_up)} the same way.\n\n"
            + table(["allocation", "answer", "idle worker RSS", "rss_bytes (answer)", "Answer.max_rss",
                     "kernel peak (ru_maxrss)", "growth GiB/s", "dispatch -> answer ms"], rows))


def _cpu_us(samples: Sequence[MapSample], attr: str) -> str:
    return f"{statistics.median(getattr(s, attr) for s in samples) * 1e6:.1f}"


def executor_table(results: ExecutorResults, sizes: Sizes) -> str:
    rt = results.round_trip
    ours = rt[executors.OURS]
    rows = [[name, ms(s.median), ms(s.p99), f"{ms(min(s.round_medians))} - {ms(max(s.round_medians))}",
             f"{s.median / ours.median:.2f}x", "" if name == executors.OURS else _faster_rounds(ours, s),
             us(statistics.median(c.caller + c.threads for c in s.costs)),
             us(statistics.median(c.children for c in s.costs))]
            for name, s in rt.items()]
    text = (f"### Executors: submit -> result round trip\n\n{sizes.executor_rounds} interleaved rounds x "
            f"{sizes.executor_calls} calls after {sizes.warmup} warm-up calls, {executors.WORKERS} workers each; "
            "`submit(echo, None, i).result()` one at a time (pebble: `schedule`); median = median of the round "
            "medians.\n\n"
            + table(["executor", "median ms", "p99 ms", "round medians ms", "vs cmworker", "rounds cmworker faster",
                     "CPU here us/call", "CPU in children us/call"], rows))
    for chunksize, by_name in results.throughput.items():
        ours_rate = executors.median_rate(by_name[executors.OURS])
        rows = []
        for name, samples in by_name.items():
            rates = [s.calls_per_s for s in samples]
            rows.append([name, f"{statistics.median(rates):,.0f}", f"{min(rates):,.0f} - {max(rates):,.0f}",
                         f"{statistics.median(rates) / ours_rate:.2f}x", _cpu_us(samples, "parent_cpu"),
                         _cpu_us(samples, "children_cpu")])
        text += (f"\n\n### Executors: map throughput, chunksize {chunksize}\n\n`list(map(echo, [None] * n, range(n), "
                 f"chunksize={chunksize}))`, n = {sizes.map_calls if chunksize == 1 else sizes.chunked_map_calls:,}, "
                 "one map per executor per round (the same rounds).\n\n"
                 + table(["executor", "calls/s (median)", "range", "vs cmworker", "CPU here us/call",
                          "CPU in children us/call"], rows))
    return text


def targets_table(targets: list[Target]) -> str:
    return "### Targets\n\n" + table(["", "target", "measured", "limit"],
                                     [["PASS" if t.ok else "FAIL", t.what, t.measured, t.limit] for t in targets])


def render(results: dict[str, Any], sizes: Sizes, targets: list[Target]) -> str:
    tables: dict[str, Callable[[Any], str]] = {
        "roundtrip": lambda r: round_trip_table(r, sizes), "throughput": lambda r: throughput_table(r, sizes),
        "crash": crash_table, "death": death_table, "timeout": lambda r: timeout_table(r, sizes),
        "memory": lambda r: memory_table(r, sizes), "executor": lambda r: executor_table(r, sizes)}
    parts = [make(results[name]) for name, make in tables.items() if name in results]
    return "\n\n".join([*parts, targets_table(targets)])
