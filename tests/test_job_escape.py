"""Every process a job starts is the job's: what it forks dies with it, wherever it went.

The jobs (tests/apps/leftovers.py) double-fork grandchildren that are orphaned at once, some of which
leave the job's process group and session (``setsid``). Each survivor would sit in the directory
``mark``; a test checks by pid, or by that directory, that nothing of the job is alive afterwards. The
fixture kills whatever a failing test left behind, so a hole does not outlive its test.

Each test runs in both modes of tracking a job's processes: per-worker cgroups (skipped where this
machine does not allow them) and the worker's process tree alone (``CMWORKER_CGROUPS=off``).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from cmworker.pool import cgroups
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import WAIT, Harness, running, running_pool, wait_gone
from tests.test_serve import answer, serving

MiB = 2**20
pytestmark = pytest.mark.timeout(120)


def marked(mark: Path) -> set[int]:
    """Live processes whose working directory is ``mark``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == str(mark) and running(int(entry)):
                    found.add(int(entry))
            except OSError:
                continue
    return found


def wait_unmarked(mark: Path, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not marked(mark), f"processes of the job still alive: {marked(mark)}"


@pytest.fixture
def mark(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "mark"
    directory.mkdir()
    yield directory
    deadline = time.monotonic() + WAIT
    while (left := marked(directory)) and time.monotonic() < deadline:
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
        time.sleep(0.01)


@pytest.fixture(params=["cgroup", "process_tree"])
def tracking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The mode under test: ``cmworker run`` reads the cgroups setting from the environment
    (``CMWORKER_CGROUPS``); a pool built here is given it (``leftovers_pool``)."""
    monkeypatch.setenv("CMWORKER_CGROUPS", "off" if request.param == "process_tree" else "auto")
    mode: str = request.param
    return mode


def tracking_line(output: list[str]) -> dict[str, str]:
    """The template's one line saying how it tracks a job's processes."""
    for text in output:
        if '"job_process_tracking"' in text:
            fields: dict[str, str] = json.loads(text)["unsafeParams"]
            return fields
    raise AssertionError("the template did not say how it tracks a job's processes")


def check_mode(run_log: Path, tracking: str) -> None:
    """After a ``cmworker run`` test: it ran in the mode it is named after (or cgroups are not here)."""
    line = tracking_line(run_log.read_text().splitlines())
    if line["mode"] != tracking:
        assert tracking == "cgroup", line
        pytest.skip(f"ran as process_tree, no cgroups here: {line['detail']}")


@contextmanager
def leftovers_pool(tracking: str, **kwargs: Any) -> Iterator[Harness]:
    """One worker running tests/apps/leftovers.py, in the tracking mode asked for (or the test is skipped)."""
    with running_pool("leftovers.py", workers=1, cgroups="off" if tracking == "process_tree" else "auto",
                      **kwargs) as h:
        line = tracking_line([o.text for o in h.output])
        if line["mode"] != tracking:
            assert tracking == "cgroup", line
            pytest.skip(f"no cgroups here: {line['detail']}")
        yield h


def read_pids(path: Path, timeout: float = WAIT) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the job never wrote {path}"
        time.sleep(0.01)
    pids: dict[str, int] = ast.literal_eval(path.read_text())
    return pids


def daemon_query(tmp_path: Path, mark: Path, **options: object) -> dict[str, object]:
    return {"pidfile": str(tmp_path / "pids"), "mark": str(mark), **options}


@pytest.mark.parametrize("ignore_term", [False, True], ids=["plain", "ignoring_sigterm"])
def test_a_setsid_grandchild_dies_at_its_jobs_timeout(tmp_path: Path, mark: Path, ignore_term: bool,
                                                      tracking: str) -> None:
    with leftovers_pool(tracking) as h:
        query = daemon_query(tmp_path, mark, setsid=True, then="hang", ignore_term=ignore_term)
        answer = h.run("daemon", query, timeout=2.0)
        assert answer.kind == "timeout"
        pids = read_pids(tmp_path / "pids")
        wait_gone({pids["worker"], pids["grandchild"]})
        wait_unmarked(mark)


def test_a_setsid_grandchild_dies_when_its_job_answers_ok(tmp_path: Path, mark: Path, tracking: str) -> None:
    with leftovers_pool(tracking) as h:
        answer = h.run("daemon", daemon_query(tmp_path, mark, setsid=True))
        assert answer.kind == "ok"
        wait_gone({read_pids(tmp_path / "pids")["grandchild"]})
        wait_unmarked(mark)


def test_a_grandchild_left_in_the_jobs_group_dies_when_its_job_answers_ok(tmp_path: Path, mark: Path,
                                                                          tracking: str) -> None:
    with leftovers_pool(tracking) as h:
        answer = h.run("daemon", daemon_query(tmp_path, mark, setsid=False))
        assert answer.kind == "ok"
        wait_gone({read_pids(tmp_path / "pids")["grandchild"]})
        wait_unmarked(mark)


def test_a_process_that_keeps_forking_away_dies_with_its_job(mark: Path, tracking: str) -> None:
    with leftovers_pool(tracking) as h:
        assert h.run("fork_away", {"mark": str(mark)}).kind == "ok"
        wait_unmarked(mark)


def test_a_reparented_grandchild_counts_against_the_memory_limit(tmp_path: Path, mark: Path,
                                                                 tracking: str) -> None:
    with leftovers_pool(tracking) as h:
        query = daemon_query(tmp_path, mark, bytes=300 * MiB, sleep=10)
        answer = h.run("orphan_allocates", query, memory_limit=200 * MiB, timeout=60)
        assert answer.kind == "memory_limit", answer.body
        assert h.payload(answer)["rss_bytes"] > 200 * MiB
        pids = read_pids(tmp_path / "pids")
        wait_gone({pids["worker"], pids["grandchild"]})
        wait_unmarked(mark)


def zombies_below_me() -> list[int]:
    """Descendants of the test process in state Z, read from /proc."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if state == b"Z":
            found.append(child.pid)
    return found


@pytest.mark.parametrize("orphans", [False, True], ids=["children", "orphaned_grandchildren"])
def test_200_short_lived_children_leave_no_zombie(orphans: bool, tracking: str) -> None:
    with leftovers_pool(tracking) as h:
        assert h.payload(h.run("many_children", {"n": 200, "life": 0.05, "orphans": orphans})) == 200
        deadline = time.monotonic() + WAIT
        while zombies_below_me() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zombies_below_me() == []


@pytest.mark.parametrize("ignore_term", [False, True], ids=["plain", "ignoring_sigterm"])
def test_a_setsid_grandchild_dies_when_cmworker_run_is_stopped(tmp_path: Path, mark: Path, ignore_term: bool,
                                                               tracking: str) -> None:
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt, \
            serving(rt, tmp_path, app="leftovers.py", top_level='shutdown_grace = "500ms"\n') as proc:
        query = daemon_query(tmp_path, mark, setsid=True, then="hang", ignore_term=ignore_term)
        job = rt.submit("daemon", query)
        pids = read_pids(tmp_path / "pids")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        assert answer(rt, job)[0] == "shutdown"
        wait_gone({pids["worker"], pids["grandchild"]})
        wait_unmarked(mark)
    check_mode(tmp_path / "run.log", tracking)



def test_a_setsid_grandchild_dies_when_cmworker_run_is_killed_outright(tmp_path: Path, mark: Path,
                                                                      tracking: str) -> None:
    """SIGKILL leaves the parent no say: the template sees its control socket close and ends the job."""
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt, \
            serving(rt, tmp_path, app="leftovers.py") as proc:
        rt.submit("daemon", daemon_query(tmp_path, mark, setsid=True, then="hang", ignore_term=True))
        pids = read_pids(tmp_path / "pids")
        proc.kill()
        proc.wait(WAIT)
        wait_gone({pids["worker"], pids["grandchild"]})
        wait_unmarked(mark)
    check_mode(tmp_path / "run.log", tracking)


def test_the_template_says_how_it_tracks_job_processes() -> None:
    with running_pool("leftovers.py", workers=1, cgroups="off") as h:
        line = tracking_line([o.text for o in h.output])
        assert line == {"mode": "process_tree", "detail": "turned off by the cgroups setting"}


def test_in_cgroup_mode_a_jobs_processes_share_their_workers_cgroup_which_goes_with_the_pool(
        tmp_path: Path, mark: Path) -> None:
    with leftovers_pool("cgroup") as h:
        h.submit("daemon", daemon_query(tmp_path, mark, setsid=True, then="hang"))
        pids = read_pids(tmp_path / "pids")
        leaf = cgroups.leaf_of(pids["worker"])
        assert leaf is not None and leaf.endswith(f"/worker-{pids['worker']}")
        assert pids["grandchild"] in cgroups.members(leaf)
        base = os.path.dirname(leaf)
    wait_unmarked(mark)
    deadline = time.monotonic() + WAIT
    while os.path.exists(base) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(base)


def test_a_cgroup_that_is_not_a_workers_own_is_never_taken_for_one() -> None:
    assert cgroups.leaf_of(os.getpid()) is None
    assert cgroups.leaf_of(1) is None
