"""cmworker against the official SDK on the same embedded runtime, in one run, rounds interleaved.

Measures (each client a real subprocess serving the same no-op function over HTTPS):
  - no-op burst throughput and client CPU per job (user + system CPU of the client's whole process
    tree, read from psutil before and after the burst);
  - idle latency (one call at a time);
  - cmworker's logging overhead: the same burst with INFO logs (one job_finished line per job) vs WARN;
  - the transport: CPU per keep-alive request with requests, urllib3 and http.client.
  - CPU-bound efficiency against a bare multiprocessing.Pool, a 20 MB payload in and out, and the time
    1,000 streamed items add over an empty stream.
  - how soon the first streamed item reaches the runtime after the generator yields it (the runtime
    records when a chunked body's first chunk arrives; both sides use the system-wide monotonic clock).

    .venv/bin/python scripts/bench_e2e.py [--quick] [--rounds N] [--jobs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests
import urllib3

from cmworker.runtime.embedded import EmbeddedRuntime
from cmworker.service import discover

SDK_APP = """\
from compute_modules.annotations import function
from compute_modules.startup import start_compute_module


@function
def noop(context, event):
    return event


if __name__ == "__main__":
    start_compute_module()
"""
CMWORKER_APP = """\
import cmworker


@cmworker.function
def noop(context, event):
    return event


@cmworker.function
def spin(context, event):
    return spin_work(event)


def spin_work(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


@cmworker.function(streaming=True)
def items(context, event):
    for i in range(event):
        yield {"i": i}


@cmworker.function(streaming=True)
def first_then_wait(context, event):
    import time

    with open(event, "w") as f:
        f.write(repr(time.monotonic()))  # the moment the first item is yielded
    yield {"i": 0}
    time.sleep(0.2)
    yield {"i": 1}
"""


def spin_work(n: int) -> int:
    """The CPU-bound job, the same code as in the app, for the bare multiprocessing.Pool."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


@contextmanager
def serving(kind: str, rt: EmbeddedRuntime, apps: Path, log_level: str = "INFO") -> Iterator[psutil.Process]:
    env = {**os.environ, **rt.env(0), "MAX_CONCURRENT_TASKS": "2"}
    if kind == "sdk":
        cmd = [sys.executable, str(apps / "sdk_app.py")]
    else:
        cmd = [sys.executable, "-m", "cmworker", "run", str(apps / "cm_app.py"), "--workers", "2",
               "--log-level", log_level]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rt.client().call("noop", 0, timeout=120)  # up and warm
        yield psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def burst(kind: str, apps: Path, jobs: int, log_level: str = "INFO") -> dict[str, float]:
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt, \
            serving(kind, rt, apps, log_level) as proc:
        client = rt.client()
        time.sleep(0.3)
        cpu0, t0 = tree_cpu(proc), time.perf_counter()
        results = client.get_batch_result(client.batch_run([("noop", i) for i in range(jobs)]), timeout=600)
        wall, cpu = time.perf_counter() - t0, tree_cpu(proc) - cpu0
        if results != list(range(jobs)):
            raise SystemExit(f"{kind}: wrong answers in the burst")
        latencies = []
        for i in range(min(100, jobs)):
            t = time.perf_counter()
            client.call("noop", i, timeout=60)
            latencies.append(time.perf_counter() - t)
    return {"jobs_per_s": jobs / wall, "cpu_us_per_job": cpu / jobs * 1e6,
            "idle_latency_ms": statistics.median(latencies) * 1e3}


def workloads(apps: Path, cpu_jobs: int, spin_n: int) -> dict[str, float]:
    """CPU-bound efficiency against a bare pool, a 20 MB payload in and out, and 1,000 streamed items."""
    import multiprocessing

    out: dict[str, float] = {}
    with multiprocessing.get_context("fork").Pool(2) as bare:
        bare.map(spin_work, [1000] * 4)
        t = time.perf_counter()
        bare.map(spin_work, [spin_n] * cpu_jobs, chunksize=1)
        out["bare_pool_s"] = time.perf_counter() - t
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2, max_result_size=64 * 2**20) as rt, \
            serving("cmworker", rt, apps):
        client = rt.client()
        t = time.perf_counter()
        client.get_batch_result(client.batch_run([("spin", spin_n)] * cpu_jobs), timeout=600)
        out["cmworker_cpu_bound_s"] = time.perf_counter() - t
        big = "x" * (20 * 2**20)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            if client.call("noop", big, timeout=120) != big:
                raise SystemExit("the 20 MB payload came back wrong")
            times.append(time.perf_counter() - t)
        out["payload_20mb_s"] = statistics.median(times)
        base, streamed = [], []
        for _ in range(5):
            t = time.perf_counter()
            client.call("items", 0, timeout=60)
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = client.call("items", 1000, timeout=60)
            streamed.append(time.perf_counter() - t)
            if got != [{"i": i} for i in range(1000)]:
                raise SystemExit("the stream came back wrong")
        out["stream_1000_extra_ms"] = (statistics.median(streamed) - statistics.median(base)) * 1e3
        firsts = []
        stamp = apps / "first-item.stamp"
        for _ in range(10):
            job_id = client.run("first_then_wait", str(stamp))
            client.get_result(job_id, timeout=60)
            arrived = rt.record.result_posts(job_id)[-1].first_chunk_at
            if arrived is None:
                raise SystemExit("the stream was not posted chunked")
            firsts.append(arrived - float(stamp.read_text()))
        out["stream_first_item_ms"] = statistics.median(firsts) * 1e3
    out["cpu_bound_efficiency"] = out["bare_pool_s"] / out["cmworker_cpu_bound_s"]
    return out


def transport(requests_count: int) -> dict[str, float]:
    """CPU per keep-alive GET job (answered 204 at once) through three HTTP stacks, in this process."""
    with EmbeddedRuntime(long_poll=0.0) as rt:
        ep = discover(rt.env(0))
        url = f"https://{ep.host}:{ep.port}{ep.job_path}"
        headers = {"Module-Auth-Token": ep.token}
        context = ssl.create_default_context(cafile=ep.ca_files[0])
        session = requests.Session()
        session.trust_env = False
        pool = urllib3.HTTPSConnectionPool(ep.host, ep.port, ssl_context=context, maxsize=1)
        conn = http.client.HTTPSConnection(ep.host, ep.port, context=context)

        def with_requests() -> int:
            return session.get(url, headers=headers, verify=ep.ca_files[0]).status_code

        def with_urllib3() -> int:
            return pool.request("GET", ep.job_path, headers=headers).status

        def with_http_client() -> int:
            conn.request("GET", ep.job_path, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status

        stacks: dict[str, Callable[[], int]] = {"requests.Session": with_requests,
                                                "urllib3": with_urllib3, "http.client": with_http_client}
        out = {}
        for name, call in stacks.items():
            for _ in range(50):
                assert call() == 204
            t = time.process_time()
            for _ in range(requests_count):
                call()
            out[name] = (time.process_time() - t) / requests_count * 1e6  # includes the server's share
        conn.close()
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    jobs = args.jobs or (100 if args.quick else 2000)
    apps = Path(tempfile.mkdtemp(prefix="cmworker-bench-e2e-"))
    (apps / "sdk_app.py").write_text(SDK_APP)
    (apps / "cm_app.py").write_text(CMWORKER_APP)

    raw: dict[str, list[dict[str, float]]] = {"sdk": [], "cmworker": [], "cmworker_warn": []}
    for r in range(rounds):
        for kind in (("sdk", "cmworker") if r % 2 == 0 else ("cmworker", "sdk")):
            raw[kind].append(burst(kind, apps, jobs))
        raw["cmworker_warn"].append(burst("cmworker", apps, jobs, log_level="WARN"))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    wire = transport(200 if args.quick else 2000)
    # ~50 ms of pure-Python work per job on this machine (spin_work(500_000) measured 45-55 ms).
    loads = workloads(apps, cpu_jobs=4 if args.quick else 40, spin_n=500_000)

    def med(kind: str, key: str) -> float:
        return statistics.median(x[key] for x in raw[kind])

    sdk_t, cm_t, warn_t = med("sdk", "jobs_per_s"), med("cmworker", "jobs_per_s"), med("cmworker_warn", "jobs_per_s")
    sdk_c, cm_c = med("sdk", "cpu_us_per_job"), med("cmworker", "cpu_us_per_job")
    print(f"\n### No-op burst, {jobs} jobs, 2 workers, median of {rounds} interleaved rounds\n")
    print("| client | jobs/s | client CPU µs/job | idle latency ms |\n|---|---|---|---|")
    for kind, label in (("sdk", "official SDK 0.34.0"), ("cmworker", "cmworker (INFO logs)"),
                        ("cmworker_warn", "cmworker (WARN logs)")):
        print(f"| {label} | {med(kind, 'jobs_per_s'):,.0f} | {med(kind, 'cpu_us_per_job'):,.0f} | "
              f"{med(kind, 'idle_latency_ms'):.2f} |")
    print("\n### Transport: CPU per keep-alive GET (client and in-process server together)\n")
    print("| stack | CPU µs/request |\n|---|---|")
    for name, cpu in wire.items():
        print(f"| {name} | {cpu:,.0f} |")
    print("\n### Workloads (cmworker, 2 workers)\n")
    print("| measure | value |\n|---|---|")
    print(f"| CPU-bound jobs, bare multiprocessing.Pool(2) | {loads['bare_pool_s']:.2f} s |")
    print(f"| the same jobs through cmworker and the runtime | {loads['cmworker_cpu_bound_s']:.2f} s |")
    print(f"| 20 MB payload in and out, per job | {loads['payload_20mb_s'] * 1e3:.0f} ms |")
    print(f"| 1,000 streamed items, time added over an empty stream | {loads['stream_1000_extra_ms']:.0f} ms |")
    print(f"| first streamed item: yielded -> its chunk at the runtime (median of 10) | "
          f"{loads['stream_first_item_ms']:.1f} ms |")
    overhead = (warn_t - cm_t) / warn_t
    checks = [
        ("no-op throughput >= 2x the SDK", cm_t / sdk_t >= 2, f"{cm_t / sdk_t:.2f}x"),
        ("client CPU per job <= 0.4x the SDK", cm_c / sdk_c <= 0.4, f"{cm_c / sdk_c:.2f}x"),
        ("INFO logging costs < 10 % of no-op throughput", overhead < 0.10, f"{overhead * 100:.1f} %"),
        ("CPU-bound efficiency >= 0.95 of a bare pool", loads["cpu_bound_efficiency"] >= 0.95,
         f"{loads['cpu_bound_efficiency']:.3f}"),
        ("1,000 streamed items add <= 100 ms", loads["stream_1000_extra_ms"] <= 100,
         f"{loads['stream_1000_extra_ms']:.0f} ms"),
        ("first streamed item on the wire <= 5 ms after it is yielded", loads["stream_first_item_ms"] <= 5,
         f"{loads['stream_first_item_ms']:.1f} ms"),
    ]
    print("\n### Targets\n\n| | target | measured |\n|---|---|---|")
    for name, ok, measured in checks:
        print(f"| {'PASS' if ok else 'FAIL'} | {name} | {measured} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"bursts": raw, "transport": wire, "workloads": loads}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
