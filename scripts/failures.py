#!/usr/bin/env python3
"""Failure scenarios side by side: what a caller receives from the official SDK and from cmworker.

For each scenario the same job code (scripts/bench_apps/failures_work.py) is served by each client as a
real subprocess — the SDK app (failures_sdk.py, run as a script) and ``cmworker run failures_cmworker.py``
with a ``cmworker.toml`` written for the run (``[limits] timeout``, ``memory_limit``) — each against a
fresh ``EmbeddedRuntime`` in this process (``max_concurrent_tasks`` = the client's worker count, capped
as Foundry's router caps a replica). Then, as a Foundry caller would, through the runtime's query API
over HTTPS:

  1. submit the scenario's job and note when the runtime hands it to the client;
  2. apply the scenario's disruption once the job runs, if it has one (SIGTERM to the client's main
     process, a restart of the runtime's module endpoints, connections refused, a result POST cut);
  3. submit a normal job right after: is the client still serving?
  4. wait for both answers (long-polling ``GET /api/v1/jobs/{id}/answer``) until the observation window
     closes, and read what the runtime saw: the jobs' states, the result POSTs, the client's exit.

Every cell of the table is written from those observations; times are seconds after the scenario's job
was submitted (a client exit: seconds after the signal). Trials run a few at a time (``--parallel``), each
with its own runtime and client, so timings carry some scheduling noise (tenths of a second).

    scripts/failures [--only crash,hang] [--window 20] [--workers 1] [--markdown FILE] [--json FILE]

``scripts/failures`` installs the official SDK into ``.venv`` first (the ``compare`` extra), then runs this
script with ``.venv/bin/python``; run directly, it needs a Python where ``foundry-compute-modules`` is
installed.

The memory hog allocates ``--hog-mib`` (1 GiB) in the SDK's worker, which has no limit: that trial is
skipped unless the machine has that much plus 2 GiB available. Client processes are always stopped, and
only those this script started: cmworker gets SIGTERM first, then SIGKILL for whatever of its tree is left.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "scripts" / "bench_apps"
sys.path.insert(0, str(ROOT))

from cmworker.runtime.embedded import EmbeddedRuntime  # noqa: E402

CLIENTS = ("sdk", "cmworker")
READY_WITHIN = 90.0      # a client that has not answered its first job by then failed to start
STOP_GRACE = 10.0
LOG_TAIL = 2000
_MEMORY = threading.Lock()  # at most one memory hog at a time on this shared machine
STARTED: list[tuple[int, float]] = []  # (pid, create time) of every client process seen: --json lists them


def client_label(kind: str) -> str:
    if kind == "sdk":
        return f"official SDK {importlib.metadata.version('foundry-compute-modules')}"
    return "cmworker"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    window: float = 20.0          # how long each trial watches for answers after the submission
    workers: int = 1              # per client; also the runtime's cap for its replica
    timeout: str = "5s"           # cmworker's [limits] timeout
    memory_limit: str = "256MiB"  # cmworker's [limits] memory_limit
    hog_mib: int = 1024           # what the memory hog allocates
    job_s: float = 2.0            # the running job of the SIGTERM and runtime scenarios
    outage_s: float = 4.0         # how long the runtime refuses connections


# -- scenarios -------------------------------------------------------------------------------------


@dataclass
class Trial:
    """One client serving one scenario: what a disruption needs to act on."""

    kind: str
    runtime: EmbeddedRuntime
    process: subprocess.Popen[bytes]
    settings: Settings
    signalled_at: float | None = None


def sigterm(trial: Trial) -> None:
    """What the platform does to a replica it stops: SIGTERM to the container's main process only."""
    trial.signalled_at = time.monotonic()
    trial.process.send_signal(signal.SIGTERM)


def restart(trial: Trial) -> None:
    trial.runtime.restart()


def refuse(trial: Trial) -> None:
    trial.runtime.refuse_connections(trial.settings.outage_s)


def cut_result(trial: Trial) -> None:
    trial.runtime.drop_next_result()


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    what: str                                  # what the job does and what the script does to it
    function: str
    payload: Callable[[Settings], Any] = lambda s: {}
    disrupt: Callable[[Trial], None] | None = None
    delay: float = 0.0                         # seconds after the job is handed out before disrupting
    hog: bool = False


SCENARIOS = [
    Scenario("crash", "crash (segfault)", "The job reads address 0 (`ctypes.string_at(0)`): SIGSEGV in the "
             "process that runs it.", "segfault"),
    Scenario("exit", "`os._exit(1)` in the job", "The job calls `os._exit(1)`: no exception, no cleanup.",
             "exit1"),
    Scenario("hang", "hang", "The job sleeps forever. cmworker runs with `timeout = {timeout}`; the SDK has no "
             "timeout.", "hang"),
    Scenario("memory", "memory hog ({hog_mib} MiB)", "The job allocates {hog_mib} MiB, writing every page, holds "
             "it 1 s and returns. cmworker runs with `memory_limit = {memory_limit}`; the SDK has no limit of its "
             "own. In a container whose memory limit is below what the job takes, the kernel's OOM killer would "
             "kill the SDK's worker instead, and the caller would get what the crash row shows.", "hog",
             payload=lambda s: {"mib": s.hog_mib, "hold": 1.0}, hog=True),
    Scenario("sigterm", "SIGTERM while a {job_s:g} s job runs", "A {job_s:g} s job runs; 0.5 s after the runtime "
             "handed it out, the client's main process gets SIGTERM (as Kubernetes stops a pod). The next job is "
             "submitted after the signal: a client that is going away should leave it queued for another "
             "replica. Here the client is not the first process of a PID namespace; in a container it is (or "
             "is the only child of an init that exits with it), and when that process exits the kernel kills "
             "every other process of the container, so no worker can outlive it there.", "slow",
             payload=lambda s: {"seconds": s.job_s}, disrupt=sigterm, delay=0.5),
    Scenario("restart", "runtime restart during a job", "A {job_s:g} s job runs; 0.5 s in, the runtime restarts "
             "its module endpoints (every open connection and parked long poll is cut; the job queue survives, "
             "as Foundry's does).", "slow", payload=lambda s: {"seconds": s.job_s}, disrupt=restart, delay=0.5),
    Scenario("outage", "runtime unreachable ({outage_s:g} s) as a job ends", "A {job_s:g} s job runs; 1 s in, "
             "the runtime stops listening for {outage_s:g} s (connections refused, open ones cut), so the job "
             "finishes while the runtime is unreachable.", "slow", payload=lambda s: {"seconds": s.job_s},
             disrupt=refuse, delay=1.0),
    Scenario("cut", "result POST cut mid-body", "A {job_s:g} s job runs; the runtime cuts the connection of "
             "the next result POST halfway through its body, without an answer.", "slow",
             payload=lambda s: {"seconds": s.job_s}, disrupt=cut_result),
    Scenario("exception", "exception in the job", "The job raises `ValueError(\"boom on {{}}\")`.", "boom",
             payload=lambda s: {"n": 1}),
]
BY_KEY = {s.key: s for s in SCENARIOS}


def describe(scenario: Scenario, settings: Settings) -> tuple[str, str]:
    values = asdict(settings)
    return scenario.title.format(**values), scenario.what.format(**values)


# -- observations ----------------------------------------------------------------------------------


@dataclass
class Answer:
    """An answer as the caller received it from the query API."""

    status: str      # the runtime's Cmworker-Job-Status: done, failed or dropped
    at_s: float      # seconds after the scenario's job was submitted
    body: str        # the answer's text (shortened past 20,000 characters)


@dataclass
class Outcome:
    scenario: str
    client: str
    window_s: float
    workers: int
    skipped: str | None = None
    job: Answer | None = None
    job_state: str = ""                   # the runtime's status of the job when the window closed
    handed_out_s: float | None = None     # when the runtime handed the job to the client
    next_job: Answer | None = None
    next_state: str = ""
    held_at_end: int = 0                  # jobs the replica held, unanswered, when the window closed
    next_submitted_s: float | None = None
    result_posts: list[int] = field(default_factory=list)   # HTTP status of each result POST for the job
    gets: int = 0                         # GET job requests that reached the runtime during the window
    exit_code: int | None = None          # the client's main process, if it ended within the window
    exit_after_signal_s: float | None = None
    exited_at_s: float | None = None
    left_running: int = 0                 # processes of its tree alive at the end, once the main one is gone
    output: str = ""                      # what the client wrote during the window (its end, if long)


class Caller:
    """A Foundry caller: the embedded runtime's query API over HTTPS, raw answers (no decoding)."""

    def __init__(self, runtime: EmbeddedRuntime) -> None:
        self.url = runtime.query_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(runtime.ca_path)
        self.session.headers["Authorization"] = f"Bearer {runtime.caller_token}"

    def submit(self, function: str, payload: Any) -> str:
        response = self.session.post(f"{self.url}/api/v1/jobs", json={"queryType": function, "query": payload},
                                     timeout=30)
        response.raise_for_status()
        job_id: str = response.json()["jobId"]
        return job_id

    def answer(self, job_id: str, deadline: float, submitted: float) -> Answer | None:
        """Long-poll the job's answer until ``deadline`` (monotonic); ``None`` if none came by then."""
        while (left := deadline - time.monotonic()) > 0:
            wait = min(left, 30.0)
            response = self.session.get(f"{self.url}/api/v1/jobs/{job_id}/answer", params={"wait": f"{wait:.3f}"},
                                        timeout=wait + 30)
            if response.status_code == 200:
                at = time.monotonic() - submitted
                text = response.content.decode("utf-8", "replace")
                if len(text) > 20_000:
                    text = text[:20_000] + f"… ({len(response.content):,} bytes)"
                return Answer(response.headers.get("Cmworker-Job-Status", "?"), round(at, 3), text)
            if response.status_code != 202:
                response.raise_for_status()
        return None

    def close(self) -> None:
        self.session.close()


def in_background(call: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``call`` in a thread; the returned function joins it and gives its result (or raises)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the joining thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join


# -- the client under test -------------------------------------------------------------------------


class Tree:
    """Every process of a client's tree this script has seen, so that all of them can be stopped."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.scan()

    def scan(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            for proc in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    self.seen[(proc.pid, proc.create_time())] = proc
        return list(self.seen.values())

    def alive(self, exclude_root: bool = False) -> list[psutil.Process]:
        found = []
        for proc in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE \
                        and not (exclude_root and proc is self.root):
                    found.append(proc)
        return found


def write_config(workdir: Path, settings: Settings) -> Path:
    path = workdir / "cmworker.toml"
    path.write_text(f'[limits]\ntimeout = "{settings.timeout}"\nmemory_limit = "{settings.memory_limit}"\n')
    return path


@contextlib.contextmanager
def serving(kind: str, runtime: EmbeddedRuntime, settings: Settings, workdir: Path) -> Iterator[
        tuple[subprocess.Popen[bytes], Tree, Path]]:
    """Start the client for ``kind`` against ``runtime``, wait until it has answered a job, stop it after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMWORKER_")}
    env.update(runtime.env(0))
    env["MAX_CONCURRENT_TASKS"] = str(settings.workers)
    env["PYTHONFAULTHANDLER"] = ""  # a segfault's Python traceback is not what this compares
    if kind == "sdk":
        cmd = [sys.executable, str(APPS / "failures_sdk.py")]
    else:
        cmd = [sys.executable, "-m", "cmworker", "run", str(APPS / "failures_cmworker.py"),
               "--config", str(write_config(workdir, settings)), "--workers", str(settings.workers)]
    log_path = workdir / f"{kind}.log"
    with open(log_path, "wb") as log:
        # Its own session, so that its process group is the client's alone.
        process = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    tree = Tree(process.pid)
    try:
        ready = runtime.submit("ok", {"ready": True})
        deadline = time.monotonic() + READY_WITHIN
        while (snap := runtime.store.wait_finished([ready], 0.2)[0]) is None or snap.status != "done":
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{kind} did not come up (exit {process.poll()}); its output ends:\n{tail}")
        tree.scan()
        yield process, tree, log_path
    finally:
        stop(process, tree, kind)


def stop(process: subprocess.Popen[bytes], tree: Tree, kind: str) -> None:
    """cmworker: SIGTERM to its main process and a grace; the SDK, which has no drain: nothing yet. Then
    SIGKILL whatever of the tree is left — only processes seen in it."""
    tree.scan()
    if process.poll() is None and kind == "cmworker":
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_GRACE)
    tree.scan()
    for proc in tree.alive():
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil refuses a pid that was reused by another process
    process.wait()
    psutil.wait_procs(list(tree.seen.values()), timeout=5)
    STARTED.extend(tree.seen)


# -- one trial -------------------------------------------------------------------------------------


def run_trial(scenario: Scenario, kind: str, settings: Settings) -> Outcome:
    """Serve ``scenario`` with client ``kind`` on a fresh runtime and record what the caller receives."""
    outcome = Outcome(scenario.key, kind, settings.window, settings.workers)
    if scenario.hog and kind == "sdk":
        need = (settings.hog_mib << 20) + (2 << 30)
        available = psutil.virtual_memory().available
        if available < need:
            outcome.skipped = (f"skipped: {available / 2**30:.1f} GiB available, {need / 2**30:.1f} GiB needed "
                               "to let the SDK's worker allocate freely")
            return outcome
    with contextlib.ExitStack() as stack:
        if scenario.hog:
            stack.enter_context(_MEMORY)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"cmworker-failures-{kind}-")))
        runtime = stack.enter_context(EmbeddedRuntime(max_concurrent_tasks=settings.workers))
        process, tree, log_path = stack.enter_context(serving(kind, runtime, settings, workdir))
        caller = Caller(runtime)
        stack.callback(caller.close)
        trial = Trial(kind, runtime, process, settings)
        start = log_path.stat().st_size
        observe(scenario, trial, tree, caller, outcome)
        with open(log_path, "rb") as log:
            log.seek(start)
            outcome.output = log.read().decode("utf-8", "replace")[-LOG_TAIL:]
    return outcome


def observe(scenario: Scenario, trial: Trial, tree: Tree, caller: Caller, outcome: Outcome) -> None:
    runtime, settings = trial.runtime, trial.settings
    gets_before = runtime.record.gets(0)
    submitted = time.monotonic()
    job_id = caller.submit(scenario.function, scenario.payload(settings))
    deadline = submitted + settings.window
    job_answer = in_background(lambda: caller_for(runtime).answer(job_id, deadline, submitted))
    answered = threading.Event()
    exited = in_background(lambda: wait_exit(trial.process, deadline, answered))

    while state(runtime, job_id) == "queued" and time.monotonic() < deadline:
        time.sleep(0.005)  # the runtime has no "handed out" event to wait on; this lasts milliseconds
    if state(runtime, job_id) != "queued":
        outcome.handed_out_s = round(time.monotonic() - submitted, 3)
        if scenario.disrupt is not None:
            time.sleep(scenario.delay)
            tree.scan()
            scenario.disrupt(trial)
    next_id = caller.submit("ok", {"after": scenario.key})
    outcome.next_submitted_s = round(time.monotonic() - submitted, 3)
    next_answer = in_background(lambda: caller_for(runtime).answer(next_id, deadline, submitted))

    outcome.job = job_answer()
    outcome.next_job = next_answer()
    answered.set()  # both answered, or the window closed: nothing more to watch
    exit_code, exited_at = exited()
    outcome.job_state = state(runtime, job_id)
    outcome.next_state = state(runtime, next_id)
    outcome.held_at_end = len(runtime.record.held(0))
    outcome.result_posts = [post.status for post in runtime.record.result_posts(job_id)]
    outcome.gets = runtime.record.gets(0) - gets_before
    if exited_at is not None:
        outcome.exit_code = exit_code
        outcome.exited_at_s = round(exited_at - submitted, 3)
        if trial.signalled_at is not None:
            outcome.exit_after_signal_s = round(exited_at - trial.signalled_at, 3)
        outcome.left_running = len(tree.alive(exclude_root=True))


def state(runtime: EmbeddedRuntime, job_id: str) -> str:
    snap = runtime.record.job(job_id)
    return "unknown" if snap is None else snap.status


def caller_for(runtime: EmbeddedRuntime) -> Caller:
    return Caller(runtime)  # one requests.Session per waiting thread


def wait_exit(process: subprocess.Popen[bytes], deadline: float,
              answered: threading.Event) -> tuple[int | None, float | None]:
    """The client's exit code and when it exited (to within 50 ms), if it does before ``deadline`` or
    before both answers are in."""
    while not answered.is_set() and (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return process.wait(min(left, 0.05)), time.monotonic()
    return process.poll(), (time.monotonic() if process.poll() is not None else None)


def run_scenarios(keys: list[str], settings: Settings, clients: tuple[str, ...] = CLIENTS,
                  parallel: int = 6) -> list[Outcome]:
    """Every (scenario, client) trial, ``parallel`` at a time; outcomes in scenario then client order."""
    plan = [(BY_KEY[key], kind) for key in keys for kind in clients]
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(run_trial, scenario, kind, settings): (scenario, kind) for scenario, kind in plan}
        for future in concurrent.futures.as_completed(futures):
            scenario, kind = futures[future]
            progress(f"{scenario.key} / {kind}: done")
        return [future.result() for future in futures]


# -- the report ------------------------------------------------------------------------------------


def parse(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def first_line(text: str, limit: int = 90) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 1 else f"{value:.1f} s"


def answer_cell(answer: Answer) -> str:
    payload = parse(answer.body)
    if answer.status == "done":
        return f"result at {seconds(answer.at_s)}: `{first_line(answer.body, 60)}`"
    if not isinstance(payload, dict):
        return f"{answer.status} answer at {seconds(answer.at_s)}: `{first_line(answer.body, 60)}`"
    keys = ", ".join(payload)
    kind = f" `{payload['kind']}`" if isinstance(payload.get("kind"), str) else ""
    message = payload.get("error", payload.get("exception", ""))
    quoted = f": “{first_line(str(message))}”" if message else ""
    return f"error{kind} at {seconds(answer.at_s)}, payload `{{{keys}}}`{quoted}"


def job_cell(outcome: Outcome) -> str:
    if outcome.job is not None:
        gone = outcome.exited_at_s is not None and outcome.exited_at_s < outcome.job.at_s
        return answer_cell(outcome.job) + (" (after the main process had exited)" if gone else "")
    if outcome.handed_out_s is None:
        return f"no answer within {outcome.window_s:g} s: the client never took the job (`{outcome.job_state}`)"
    return f"**no answer within {outcome.window_s:g} s** (the runtime still shows the job `{outcome.job_state}`)"


def next_cell(outcome: Outcome) -> str:
    if outcome.next_job is not None:
        how = "answered" if outcome.next_job.status == "done" else f"answered `{outcome.next_job.status}`"
        return f"{how} at {seconds(outcome.next_job.at_s)}"
    if outcome.next_state == "queued" and outcome.exit_code is None and outcome.held_at_end >= outcome.workers:
        slots = "its only slot" if outcome.workers == 1 else f"all {outcome.workers} of its slots"
        return f"not taken, still `queued`: the unanswered job holds {slots} on the replica"
    state = {"queued": "not taken, still `queued`", "running": "taken, not answered (`running`)"}
    return state.get(outcome.next_state, f"`{outcome.next_state}`, no answer")


def exit_cell(outcome: Outcome) -> str:
    if outcome.exit_code is None:
        return ""
    how = (f"killed by {signal.Signals(-outcome.exit_code).name}" if outcome.exit_code < 0
           else f"exited with code {outcome.exit_code}")
    when = (f"{seconds(outcome.exit_after_signal_s)} after the signal" if outcome.exit_after_signal_s is not None
            else f"at {seconds(outcome.exited_at_s or 0.0)}")
    left = (f", leaving {outcome.left_running} process(es) of its tree running" if outcome.left_running
            else "")
    return f"main process {how} {when}{left}"


def cell(outcome: Outcome) -> str:
    if outcome.skipped:
        return outcome.skipped
    parts = [job_cell(outcome)]
    if exit_text := exit_cell(outcome):
        parts.append(exit_text)
    parts.append(f"next job: {next_cell(outcome)}")
    return "; ".join(parts).replace("|", "\\|")


def shortened(value: Any, limit: int = 160) -> Any:
    """``value`` with long strings cut to their first line (for showing a payload's shape)."""
    if isinstance(value, dict):
        return {k: shortened(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [shortened(v, limit) for v in value]
    if isinstance(value, str) and (len(value) > limit or "\n" in value):
        lines = value.count("\n") + 1
        return f"{first_line(value, limit)} … ({len(value):,} chars, {lines} lines)"
    return value


def log_line(line: str) -> str:
    """A structured (JSON) log line as its level and message, anything else as it is; shortened."""
    record = parse(line)
    if isinstance(record, dict) and "message" in record:
        params = record.get("params") or {}
        fields = ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("session_id", "process_id", "job_id"))
        line = f"{record.get('level', '')} {record['message']}" + (f" ({fields})" if fields else "")
    return first_line(line, 300)


def details(outcome: Outcome) -> list[str]:
    if outcome.skipped:
        return [f"- {outcome.skipped}"]
    lines = []
    if outcome.handed_out_s is not None:
        lines.append(f"- handed out by the runtime at {seconds(outcome.handed_out_s)}; next job submitted at "
                     f"{seconds(outcome.next_submitted_s or 0.0)}")
    if outcome.job is not None:
        payload = parse(outcome.job.body)
        shown = (json.dumps(shortened(payload), ensure_ascii=False) if payload is not None
                 else repr(outcome.job.body[:300]))
        lines.append(f"- answer (`{outcome.job.status}`, at {seconds(outcome.job.at_s)}): `{shown}`")
    else:
        lines.append(f"- no answer within {outcome.window_s:g} s; the runtime's state of the job: "
                     f"`{outcome.job_state}`")
    posts = ", ".join(str(s) if s else "cut" for s in outcome.result_posts) or "none"
    lines.append(f"- result POSTs for the job, as the runtime answered them: {posts}; GET job requests during "
                 f"the window: {outcome.gets}")
    lines.append(f"- next job: {next_cell(outcome)}")
    if exit_text := exit_cell(outcome):
        lines.append(f"- {exit_text}")
    if outcome.job is None or outcome.exit_code is not None:
        last = [line for line in outcome.output.splitlines() if line.strip()]
        lines.append(f"- the client's output during the window ends with: `{log_line(last[-1])}`" if last
                     else "- the client wrote nothing to its output during the window")
    return lines


def report(outcomes: list[Outcome], settings: Settings, command: str, when: str) -> str:
    by = {(o.scenario, o.client): o for o in outcomes}
    keys = [s.key for s in SCENARIOS if any(o.scenario == s.key for o in outcomes)]
    workers = "1 worker" if settings.workers == 1 else f"{settings.workers} workers"
    out = [f"Generated by `{command}` on {when}: each client a subprocess with {workers}, "
           f"against a fresh embedded runtime; cmworker with `timeout = \"{settings.timeout}\"`, "
           f"`memory_limit = \"{settings.memory_limit}\"`. Times are seconds after the job was submitted; "
           f"each trial watched for {settings.window:g} s. \"Next job\" is a normal job submitted right after "
           "(after the disruption, when there is one).", "",
           f"| scenario | {client_label('sdk')}: caller receives | cmworker: caller receives |", "|---|---|---|"]
    for key in keys:
        title, _ = describe(BY_KEY[key], settings)
        row = [cell(by[(key, kind)]) if (key, kind) in by else "not run" for kind in CLIENTS]
        out.append(f"| {title} | {' | '.join(row)} |")
    out += ["", "### Details"]
    for key in keys:
        title, what = describe(BY_KEY[key], settings)
        out += ["", f"**{title}.** {what}", ""]
        for kind in CLIENTS:
            if (key, kind) in by:
                out.append(f"{client_label(kind)}:")
                out.append("")
                out += details(by[(key, kind)])
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated scenarios (default all: {','.join(BY_KEY)})")
    parser.add_argument("--window", type=float, default=Settings.window, help="seconds to watch each trial")
    parser.add_argument("--workers", type=int, default=Settings.workers, help="workers per client (default 1)")
    parser.add_argument("--parallel", type=int, default=6, help="trials at once (default 6)")
    parser.add_argument("--hog-mib", type=int, default=Settings.hog_mib, help="what the memory hog allocates")
    parser.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--json", metavar="FILE", help="write every observation to FILE")
    args = parser.parse_args()
    keys = args.only.split(",") if args.only else list(BY_KEY)
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(BY_KEY)}")
    if importlib.util.find_spec("compute_modules") is None:
        # The SDK's client runs with this interpreter: without it, every trial would fail to start.
        parser.error(f"the official SDK (foundry-compute-modules) is not installed for {sys.executable}; "
                     "run scripts/failures instead, which installs it into .venv first "
                     "(or: pip install -e '.[compare]')")
    settings = replace(Settings(), window=args.window, workers=args.workers, hog_mib=args.hog_mib)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run every finally: stop the clients
    started = time.monotonic()
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    command = shlex.join(["scripts/failures.py", *sys.argv[1:]])
    outcomes = run_scenarios(keys, settings, parallel=args.parallel)
    text = report(outcomes, settings, command, when)
    print(text)
    elapsed = time.monotonic() - started
    progress(f"{len(outcomes)} trials in {elapsed:.0f} s, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "when": when, "command": command, "settings": asdict(settings), "elapsed_s": round(elapsed, 1),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "clients": {kind: client_label(kind) for kind in CLIENTS},
            "outcomes": [asdict(o) for o in outcomes], "client_processes": STARTED}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
