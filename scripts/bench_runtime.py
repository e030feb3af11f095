#!/usr/bin/env python3
"""Measure the embedded runtime's cost: server CPU per job, and long-poll wake-up latency.

The runtime runs in a child process so its CPU time (user + system, all threads, from psutil) is
measured apart from the client's. The client is deliberately thin: ``http.client`` over one TLS
keep-alive connection per role, so the numbers are the server's, not ``requests``'.

Per job the runtime serves: its share of a batch submission, one GET job, one POST result, and its
share of a batch answer fetch ("batched"); or one submission, one GET, one POST and one answer fetch
each on their own ("single").

    .venv/bin/python scripts/bench_runtime.py [--jobs 2000] [--wakeups 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import psutil

_CHILD = """
import json, sys
from cmworker.runtime.embedded import EmbeddedRuntime
runtime = EmbeddedRuntime(long_poll=float(sys.argv[1]), max_concurrent_tasks=1).start()
print(json.dumps({"env": runtime.env(), "url": runtime.query_url, "token": runtime.caller_token}), flush=True)
sys.stdin.read()  # run until the parent closes our stdin
runtime.stop()
"""


class Thin:
    """One keep-alive HTTPS connection; requests return (status, body)."""

    def __init__(self, host: str, port: int, ca: str, headers: dict[str, str]) -> None:
        context = ssl.create_default_context(cafile=ca)
        self.connection = http.client.HTTPSConnection(host, port, context=context, timeout=60)
        self.headers = headers

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.connection.request(method, path, body=body, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, response.read()


def start_server(long_poll: float) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(long_poll)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.kill()
        raise SystemExit("the runtime child did not start")
    return child, json.loads(line)


def connections(info: dict[str, Any]) -> tuple[Thin, Thin, dict[str, str]]:
    env = info["env"]
    with open(env["MODULE_AUTH_TOKEN"], encoding="utf-8") as handle:
        token = handle.read()
    host, port = info["url"].removeprefix("https://").rsplit(":", 1)
    caller = Thin(host, int(port), env["DEFAULT_CA_PATH"], {"Authorization": f"Bearer {info['token']}"})
    module = Thin(env["RUNTIME_HOST"], int(env["RUNTIME_PORT"]), env["DEFAULT_CA_PATH"],
                  {"Module-Auth-Token": token, "Content-Type": "application/octet-stream"})
    return caller, module, env


def paths(env: dict[str, str]) -> tuple[str, str]:
    def path(uri: str) -> str:
        return "/" + env[uri].split("/", 3)[3]

    return path("GET_JOB_URI"), path("POST_RESULT_URI")


def serve_jobs(module: Thin, get_path: str, result_path: str, count: int) -> None:
    for _ in range(count):
        status, body = module.request("GET", get_path)
        assert status == 200, status
        job = json.loads(body)["computeModuleJobV1"]
        status, _ = module.request("POST", f"{result_path}/{job['jobId']}", json.dumps(job["query"]).encode())
        assert status == 204, status


def batched(caller: Thin, module: Thin, env: dict[str, str], jobs: int) -> None:
    get_path, result_path = paths(env)
    batch = json.dumps([{"queryType": "echo", "query": {"i": i}} for i in range(jobs)]).encode()
    status, body = caller.request("POST", "/api/v1/jobs", batch)
    assert status == 200, status
    ids = json.loads(body)["jobIds"]
    serve_jobs(module, get_path, result_path, jobs)
    status, body = caller.request("POST", "/api/v1/answers", json.dumps({"jobIds": ids, "wait": 10}).encode())
    assert status == 200 and len(json.loads(body)["answers"]) == jobs


def single(caller: Thin, module: Thin, env: dict[str, str], jobs: int) -> None:
    get_path, result_path = paths(env)
    for i in range(jobs):
        status, body = caller.request("POST", "/api/v1/jobs", json.dumps({"queryType": "echo", "query": i}).encode())
        job_id = json.loads(body)["jobId"]
        serve_jobs(module, get_path, result_path, 1)
        status, _ = caller.request("GET", f"/api/v1/jobs/{job_id}/answer?wait=10")
        assert status == 200, status


def cpu_per_job(server: psutil.Process, run: Any, *args: Any) -> float:
    jobs = args[-1]
    before = server.cpu_times()
    started = time.perf_counter()
    run(*args)
    elapsed = time.perf_counter() - started
    after = server.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    print(f"  {run.__name__:8s} {jobs:6d} jobs  wall {elapsed * 1e3 / jobs:7.3f} ms/job  "
          f"server CPU {cpu * 1e3 / jobs:7.3f} ms/job")
    return cpu / jobs


def _poll(module: Thin, get_path: str, answered: dict[str, Any]) -> None:
    status, body = module.request("GET", get_path)
    answered["at"], answered["status"], answered["body"] = time.perf_counter(), status, body


def wakeups(caller: Thin, module: Thin, env: dict[str, str], rounds: int) -> tuple[list[float], list[float]]:
    """Submit a job while a GET is parked in its long poll; time submit-start -> GET-answer.

    Also returns the submit requests' own round trips: the wake-up proper is at most the difference.
    """
    get_path, result_path = paths(env)
    latencies: list[float] = []
    submits: list[float] = []
    for i in range(rounds):
        answered: dict[str, Any] = {}
        poller = threading.Thread(target=_poll, args=(module, get_path, answered))
        poller.start()
        time.sleep(0.02)  # let the GET park in its long poll
        sent = time.perf_counter()
        caller.request("POST", "/api/v1/jobs", json.dumps({"queryType": "echo", "query": i}).encode())
        submits.append(time.perf_counter() - sent)
        poller.join(10)
        assert answered.get("status") == 200, answered
        latencies.append(answered["at"] - sent)
        job = json.loads(answered["body"])["computeModuleJobV1"]
        module.request("POST", f"{result_path}/{job['jobId']}", b"null")
    return latencies, submits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--wakeups", type=int, default=200)
    args = parser.parse_args()
    child, info = start_server(long_poll=5.0)
    try:
        server = psutil.Process(child.pid)
        caller, module, env = connections(info)
        print(f"embedded runtime bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        batched(caller, module, env, 200)  # warm up: TLS sessions, code paths
        rows = [("batched submit + GET + POST + batched answers",
                 cpu_per_job(server, batched, caller, module, env, args.jobs)),
                ("single submit + GET + POST + answer",
                 cpu_per_job(server, single, caller, module, env, args.jobs))]
        latencies, submits = wakeups(caller, module, env, args.wakeups)
        latencies.sort()
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
    print()
    print("| measure | value |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| server CPU per job, {name} | {seconds * 1e6:.0f} µs |")
    q = statistics.quantiles(latencies, n=100)
    print(f"| long-poll wake-up (submit sent -> GET answered), median | {statistics.median(latencies) * 1e3:.2f} ms |")
    print(f"| long-poll wake-up, p95 | {q[94] * 1e3:.2f} ms |")
    print(f"| long-poll wake-up, max of {len(latencies)} | {latencies[-1] * 1e3:.2f} ms |")
    print(f"| (the submit request's own round trip, median) | {statistics.median(submits) * 1e3:.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
