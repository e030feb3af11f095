"""Hostile jobs against the pool's promises, with real workers (tests/apps/redteam_jobs.py).

One job cannot harm the pool or another job, nothing a job starts outlives it, and every job gets
exactly one answer that names its cause. One worker (``workers=1``) where the point is the next job on
the same worker.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

import cmworker
from cmworker.pool.output import LINE_BURST, LINE_BYTES, MAX_LINE
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS, WAIT, cmworker_run, running_pool, stop_process
from tests.test_job_escape import mark, wait_unmarked  # noqa: F401 - mark is a fixture
from tests.test_serve import answer

pytestmark = pytest.mark.timeout(120)
APP = "redteam_jobs.py"
RUN_CONFIG = """
[limits]
timeout = "20s"
kill_grace = "50ms"
"""


# -- a job that forks and lets its copy return into the worker ----------------------------------------

@pytest.mark.parametrize("wait", [False, True])
def test_a_forked_copy_returning_into_the_worker_neither_answers_nor_takes_the_next_job(wait: bool) -> None:
    with running_pool(APP, workers=1) as h:
        worker = h.payload(h.run("pid"))
        answer = h.run("fork_and_return", {"wait": wait}, timeout=20)
        assert answer.kind == "ok", answer.body
        assert h.payload(answer) == {"pid": worker, "copy": False}
        for _ in range(3):  # a copy left reading the socket would take some of these
            later = h.run("pid", timeout=20)
            assert h.payload(later) == later.pid  # run by the worker the pool sent it to


def test_a_forked_copy_that_raises_does_not_answer_for_the_job() -> None:
    with running_pool(APP, workers=1) as h:
        answer = h.run("fork_and_raise", {"sleep": 0.5}, timeout=20)
        assert (answer.kind, h.payload(answer)) == ("ok", "original")
        h.wait_full_strength()
        assert h.run("pid").kind == "ok"


def test_a_forked_copy_inside_a_stream_sends_no_item() -> None:
    with running_pool(APP, workers=1) as h:
        job = h.submit("fork_in_stream", timeout=20)
        assert h.wait(job).kind == "ok"
        assert [json.loads(i) for i in h.items[job]] == ["before", "after"]


# -- state of the worker process that reaches the next job -------------------------------------------

RLIMITS = [
    ("RLIMIT_NOFILE", 16, False),
    ("RLIMIT_NOFILE", 64, True),
    ("RLIMIT_CPU", 1, False),
    ("RLIMIT_FSIZE", 0, False),
    ("RLIMIT_AS", 2**28, False),
    ("RLIMIT_CORE", 0, True),
    ("RLIMIT_NPROC", 1, False),
]


@pytest.mark.parametrize(("name", "value", "hard"), RLIMITS,
                         ids=[f"{n}-{'hard' if h else 'soft'}" for n, _, h in RLIMITS])
def test_a_resource_limit_a_job_lowers_does_not_reach_the_next_job(name: str, value: int, hard: bool) -> None:
    with running_pool(APP, workers=1) as h:
        before = h.payload(h.run("limits"))
        assert h.run("set_rlimit", {"name": name, "value": value, "hard": hard}).kind == "ok"
        after = h.run("limits")
        assert after.kind == "ok", after.body
        assert h.payload(after)["rlimits"] == before["rlimits"]
        # A soft limit is put back in place; a hard one only a privileged process may raise again, so the
        # worker is replaced unless it has CAP_SYS_RESOURCE.
        if not hard:
            assert h.payload(after)["pid"] == before["pid"]
        h.wait_full_strength()


@pytest.mark.parametrize("untraceable", [False, True])
def test_priority_affinity_and_process_flags_a_job_sets_do_not_reach_the_next_job(untraceable: bool) -> None:
    with running_pool(APP, workers=1, untraceable=untraceable) as h:
        before = h.payload(h.run("attributes"))
        assert h.run("process_attributes").kind == "ok"
        assert h.payload(h.run("attributes")) == before  # the same pid too: put back in place


def test_interpreter_settings_a_job_changes_do_not_reach_the_next_job() -> None:
    with running_pool(APP, workers=1) as h:
        before = h.payload(h.run("limits"))
        assert h.run("set_interpreter").kind == "ok"
        after = h.payload(h.run("limits"))
        assert after == before
        answer = h.run("deep", {"depth": 200})
        assert (answer.kind, h.payload(answer)) == ("ok", 200)


def test_a_job_that_makes_its_workers_ends_nonblocking_leaves_a_next_job_that_can_answer_big() -> None:
    with running_pool(APP, workers=1) as h:
        before = h.payload(h.run("limits"))
        assert h.run("nonblocking").kind == "ok"
        answer = h.run("big", {"size": 8 * 2**20, "print": 2**20})
        assert answer.kind == "ok", answer.body[:300]
        assert len(h.payload(answer)) == 8 * 2**20
        assert h.payload(h.run("limits")) == before


@pytest.mark.parametrize("how", ["close", "devnull"])
def test_a_job_that_closes_or_replaces_its_workers_socket_is_still_answered(how: str) -> None:
    with running_pool(APP, workers=1) as h:
        worker = h.payload(h.run("pid"))
        answer = h.run("clobber_socket", {"how": how}, timeout=20)
        assert (answer.kind, h.payload(answer)) == ("ok", how), answer.body
        assert h.payload(h.run("pid")) == worker


def test_a_job_that_closes_every_fd_of_its_worker_is_answered_and_the_next_job_runs() -> None:
    """Nothing is left to put back from: the worker cannot answer, and the parent says it died."""
    with running_pool(APP, workers=1) as h:
        answer = h.run("clobber_socket", {"how": "close_all"}, timeout=20)
        assert answer.kind == "worker_died", answer.body
        assert h.run("pid").kind == "ok"


@pytest.mark.parametrize("to", ["sibling", "setsid"])
def test_a_worker_a_job_moved_to_another_group_or_session_is_back_in_its_own_for_the_next_job(to: str) -> None:
    """In a sibling's group, the worker would die with that sibling's job (the parent kills a worker's
    group when it ends); moved to a session of its own, it cannot come back and is replaced."""
    with running_pool(APP, workers=2) as h:
        moved = h.run("move_worker", {"to": to})
        assert moved.kind == "ok", moved.body
        after = [h.payload(h.run("groups")) for _ in range(4)]  # both workers, whichever took which
        template = h.pool.template_pid
        assert template is not None
        for state in after:
            assert (state["pgrp"], state["sid"]) == (state["pid"], os.getsid(template)), (moved.body, after)
        h.wait_full_strength()


def test_megabytes_of_output_without_a_newline_neither_delay_the_answer_nor_flood_the_log() -> None:
    with running_pool(APP, workers=1) as h:
        answer = h.run("flood", {"mib": 32})
        assert (answer.kind, h.payload(answer)) == ("ok", "flooded")
        assert h.run("pid").kind == "ok"
        with h.cond:
            # Cut into lines no longer than the limit, each counted against the flood limit: a read's worth
            # per line (64 KiB from a pipe), 2000 of them at once, let all 64 MiB through to the log.
            assert max(len(line.text) for line in h.output) <= MAX_LINE
            assert sum(line.dropped for line in h.output) > 0


def test_a_long_line_a_job_writes_at_once_reaches_the_log_whole_and_a_flood_of_them_is_limited_in_bytes() -> None:
    with running_pool(APP, workers=1) as h:
        answer = h.run("long_line", {"kib": 40})
        assert answer.kind == "ok"
        with h.cond:
            [line] = [line.text for line in h.output if line.job_id == answer.job.id]
        assert len(line) > 40_000 and json.loads(line)["event"] == "big"  # whole: a structured line still
        # The flood limit counts such a line as what its size is worth in short lines.
        assert LINE_BURST * LINE_BYTES / (40 * 1024) < 1000
        answer = h.run("long_lines", {"kib": 40, "count": 1000})
        with h.cond:
            kept = [line for line in h.output if line.job_id == answer.job.id and not line.dropped]
            dropped = sum(line.dropped for line in h.output if line.job_id == answer.job.id)
        assert dropped > 0 and sum(len(line.text) for line in kept) <= (LINE_BURST + 100) * LINE_BYTES


# -- a job that stops being a subreaper --------------------------------------------------------------

@pytest.mark.parametrize("cgroups", ["off", "auto"])
def test_a_grandchild_of_a_job_that_stopped_being_a_subreaper_dies_with_the_job(mark: Path, cgroups: str) -> None:  # noqa: F811
    with running_pool(APP, workers=1, cgroups=cgroups) as h:
        answer = h.run("unreap_then_orphan", {"mark": str(mark)})
        assert answer.kind == "ok", answer.body
        wait_unmarked(mark)


def test_the_next_job_runs_in_a_subreaper_after_a_job_unset_it() -> None:
    with running_pool(APP, workers=1) as h:
        h.run("unreap_then_orphan", {"orphan": False})
        assert h.payload(h.run("subreaper")) == 1


# -- multiprocessing helpers: the job's processes, killed with it; the next job must start its own ----

@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_multiprocessing_pool_works_in_every_job_on_the_same_worker(method: str) -> None:
    with running_pool(APP, workers=1) as h:
        for _ in range(2):
            answer = h.run("mp_pool", {"method": method}, timeout=60)
            assert (answer.kind, h.payload(answer)) == ("ok", [1, 2]), answer.body[:2000]


# -- a job that signals the template -----------------------------------------------------------------

TEMPLATE_SIGNALS = ["SIGSTOP", "SIGTSTP", "SIGTERM", "SIGHUP", "SIGINT", "SIGCHLD", "SIGUSR1", "SIGPIPE"]


@pytest.mark.parametrize("sig", TEMPLATE_SIGNALS)
def test_a_sibling_that_dies_after_a_job_signalled_the_template_is_answered_and_replaced(sig: str) -> None:
    """A stopped template reports no death and forks no worker: the parent continues it when a worker
    ends. No timeout on the sibling's job: without that, its answer never came."""
    with running_pool(APP, workers=2) as h:
        answer = h.run("signal_template", {"signal": sig})
        assert answer.kind == "ok", answer.body
        died = h.run("exit3", {"sleep": 0.2})
        assert died.kind == "worker_died", died.body
        assert h.payload(died).get("exit_code") in (3, None)  # None: the template died, the status with it
        h.wait_full_strength()
        assert h.run("pid").kind == "ok"


# -- answers built from hostile values --------------------------------------------------------------

ESCAPES = ["SystemExit", "KeyboardInterrupt", "GeneratorExit"]


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_result_whose_encoding_raises_a_base_exception_is_answered_not_serializable(escape: str) -> None:
    with running_pool(APP, workers=1) as h:
        worker = h.payload(h.run("pid"))
        answer = h.run("result_escapes", {"escape": escape})
        assert answer.kind == "result_not_serializable", answer.body
        assert escape in h.payload(answer)["error"]
        assert h.payload(h.run("pid")) == worker


@pytest.mark.parametrize("escape", ESCAPES)
def test_an_exception_whose_str_raises_a_base_exception_is_answered_as_the_jobs_exception(escape: str) -> None:
    with running_pool(APP, workers=1) as h:
        worker = h.payload(h.run("pid"))
        answer = h.run("raise_unprintable", {"escape": escape})
        assert answer.kind == "exception", answer.body
        assert h.payload(answer)["type"] == "_ExitingStr"
        assert h.payload(h.run("pid")) == worker


class ExitingReduce:
    """A result whose pickling (for the executor's answer) raises SystemExit."""

    def __reduce__(self) -> Any:
        raise SystemExit(0)


def return_exiting_reduce() -> ExitingReduce:
    return ExitingReduce()


def test_an_executor_result_whose_pickling_raises_system_exit_is_answered_not_serializable() -> None:
    with cmworker.Executor(1) as executor:
        error = executor.submit(return_exiting_reduce).exception(timeout=WAIT)
        assert isinstance(error, cmworker.ResultNotSerializable), repr(error)
        assert "SystemExit" in str(error)


@pytest.mark.parametrize("sig", ["SIGSTOP", "SIGTSTP", "SIGTTIN"])
def test_a_worker_a_sibling_job_stopped_goes_on_and_answers(sig: str) -> None:
    """No timeout on the stopped job: a worker left stopped would never answer."""
    with running_pool(APP, workers=2) as h:
        victim = h.submit("nap", {"sleep": 1.0})
        h.wait_sent(victim)
        assert h.payload(h.run("signal_siblings", {"signal": sig})) == 1
        answer = h.wait(victim)
        assert answer.kind == "ok", answer.body
        assert h.payload(h.run("nap", {"sleep": 0})) is not None


# -- a job that signals the replica (``cmworker run``) ------------------------------------------------

def replica_stopped(proc: subprocess.Popen[bytes]) -> bool:
    return psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED


def test_a_job_that_stops_the_replica_is_answered_once_it_is_continued_and_the_replica_serves_on(
        tmp_path: Path) -> None:
    """Nothing in the replica's process can undo a SIGSTOP; once continued (by an operator, or a
    supervisor), the poll loop resumes, long polls cut meanwhile included, and the job is answered once."""
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt, \
            cmworker_run(rt, tmp_path, RUN_CONFIG, app=APP, workers=2) as proc:
        stopper = rt.submit("signal_replica", {"signal": "SIGSTOP"})
        deadline = time.monotonic() + WAIT
        while not replica_stopped(proc):
            assert time.monotonic() < deadline, "the job did not stop the replica"
            time.sleep(0.02)
        time.sleep(2.5)  # past the runtime's long poll: the GETs held while stopped time out meanwhile
        os.kill(proc.pid, signal.SIGCONT)
        assert answer(rt, stopper) == ("ok", "SIGSTOP")
        assert answer(rt, rt.submit("pid"))[0] == "ok"


@pytest.mark.parametrize("sig", ["SIGCHLD", "SIGPIPE", "SIGWINCH", "SIGCONT"])
def test_a_signal_the_replica_ignores_or_handles_does_not_disturb_it(sig: str, tmp_path: Path) -> None:
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt, \
            cmworker_run(rt, tmp_path, RUN_CONFIG, app=APP, workers=2) as proc:
        assert answer(rt, rt.submit("signal_replica", {"signal": sig})) == ("ok", sig)
        assert answer(rt, rt.submit("pid"))[0] == "ok"
        assert proc.poll() is None


_PR_CAPBSET_DROP = 24


def _without_capabilities() -> None:
    """Between fork and exec: empty the bounding set, so that the program runs as a user with no
    capabilities (no CAP_SYS_PTRACE: a container's default), all its processes alike."""
    libc = ctypes.CDLL(None, use_errno=True)
    cap = 0
    while libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1


@contextmanager
def cmworker_run_without_capabilities(rt: EmbeddedRuntime, tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    (tmp / "cmworker.toml").write_text(RUN_CONFIG)
    with open(tmp / "run.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cmworker", "run", os.path.join(APPS, APP), "--workers", "2",
             "--config", str(tmp / "cmworker.toml")], env={**os.environ, **rt.env(0)}, stdout=log,
            stderr=subprocess.STDOUT, preexec_fn=_without_capabilities, start_new_session=True)
        try:
            yield proc
        finally:
            stop_process(proc, WAIT)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops capabilities it must have first")
def test_a_job_cannot_read_the_memory_of_the_replica_the_template_or_a_sibling_worker(tmp_path: Path) -> None:
    """The replica holds every job's credentials, a sibling worker its own job's, and the template forks
    every later worker. Non-dumpable, the kernel lets no process of the same user trace them or open their
    /proc/<pid>/mem, short of CAP_SYS_PTRACE (which containers do not grant by default)."""
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt, \
            cmworker_run_without_capabilities(rt, tmp_path):
        kind, found = answer(rt, rt.submit("read_memory_of_others"))
        assert kind == "ok", (found, (tmp_path / "run.log").read_text()[-3000:])
        assert found == {"replica": False, "template": False, "sibling": False}


UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                # only to read the interpreter under /root: writing still takes the file's owner
                "--inh-caps=-all,+dac_read_search", "--ambient-caps=-all,+dac_read_search"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="runs the replica as another user")
def test_a_replica_run_as_a_user_not_root_still_sets_its_workers_oom_score_and_each_jobs_own_peak(
        tmp_path: Path) -> None:
    """Non-dumpable, a process's /proc/self files belong to root: as any other user it could no longer
    write its oom_score_adj (the OOM killer then took the replica as readily as a worker) nor reset its
    peak (each job then reported the biggest peak of any job before it on that worker)."""
    (tmp_path / "cmworker.toml").write_text(RUN_CONFIG)
    with EmbeddedRuntime(long_poll=1.0) as rt, open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(
            [*UNPRIVILEGED, sys.executable, "-m", "cmworker", "run", os.path.join(APPS, APP), "--workers", "1",
             "--config", str(tmp_path / "cmworker.toml")], env={**os.environ, **rt.env(0)}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            big, small = rt.submit("own_proc_settings", {"mib": 120}), rt.submit("own_proc_settings", {})
            answers = [answer(rt, big), answer(rt, small)]
        finally:
            stop_process(proc, WAIT)
    assert answers == [("ok", {"oom_score_adj": 500, "uid": 65534})] * 2, answers
    peaks = {line["params"]["job_id"]: line["params"]["peak_rss_bytes"]
             for line in map(json.loads, (tmp_path / "run.log").read_text().splitlines())
             if line.get("message") == "job_finished"}
    assert peaks[big] > 120 * 2**20 > 2 * peaks[small], peaks
