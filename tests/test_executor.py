"""``cmworker.Executor`` against real forked workers: the misbehaving-call catalogue through futures, the
``concurrent.futures`` surface (submit, map, cancel, shutdown), pickling by value and by reference, and
what is left of the processes when an executor is shut down, dropped, or its interpreter exits or is killed.

Every wait has a deadline (``WAIT``); no test asserts a duration.
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

import cmworker
from cmworker import (
    JobTimeout,
    MemoryLimitExceeded,
    RemoteException,
    ResultNotSerializable,
    WorkerDied,
)
from cmworker.errors import AppLoadError
from cmworker.pool import pickled
from tests import executor_jobs as jobs
from tests.pool_harness import WAIT, descendants, wait_gone

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
pytestmark = pytest.mark.timeout(60)


def worker_pids(ex: cmworker.Executor) -> set[int]:
    return set(ex.worker_pids())


def read_pid(pidfile: Path) -> int:
    deadline = time.monotonic() + WAIT
    while not pidfile.exists():
        assert time.monotonic() < deadline, f"{pidfile} was never written"
        time.sleep(0.01)
    return int(pidfile.read_text())


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def ex() -> Iterator[cmworker.Executor]:
    """One executor for the whole catalogue: it must survive every case, one after the other."""
    before = descendants()
    executor = cmworker.Executor(2, preload=["tests.executor_jobs"])
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        wait_gone(descendants() - before)


# -- the misbehaving-call catalogue ------------------------------------------------------------------


@dataclass
class Case:
    fn: Callable[..., Any]
    expect: type[BaseException]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)   # submit_with's per-call limits
    details: dict[str, Any] = field(default_factory=dict)  # attributes the exception must carry
    pidfile: bool = False                                  # pass pidfile=...; the call writes a pid to it
    kill_pid: bool = False                                 # SIGKILL that pid from the test
    grandchild: bool = False                               # that pid is a grandchild: it must be gone after
    check: Callable[[BaseException], bool] | None = None


CATALOGUE = [
    Case(jobs.raise_value_error, ValueError, args=(42,),
         check=lambda e: "bad value 42" in str(e) and "raise_value_error" in str(e.__cause__)),
    Case(jobs.segfault, WorkerDied, details={"signal": "SIGSEGV"}),
    Case(jobs.exit3, WorkerDied, details={"exit_code": 3},
         check=lambda e: "about to exit" in e.output and "last words" in e.output),
    Case(jobs.abort, WorkerDied, details={"signal": "SIGABRT"}),
    Case(jobs.wait_to_be_killed, WorkerDied, pidfile=True, kill_pid=True, details={"signal": "SIGKILL"}),
    Case(jobs.sys_exit, RemoteException, details={"remote_type": "SystemExit"}),
    Case(jobs.keyboard_interrupt, RemoteException, details={"remote_type": "KeyboardInterrupt"}),
    Case(jobs.sleep_forever, JobTimeout, limits={"timeout": 0.3}, details={"timeout_s": 0.3},
         check=lambda e: "soft" not in e.details),
    Case(jobs.busy_ignoring_sigterm, JobTimeout, limits={"timeout": 0.3}, details={"timeout_s": 0.3}),
    Case(jobs.stuck_in_c, JobTimeout, limits={"timeout": 0.4, "soft_timeout": 0.2}, details={"timeout_s": 0.4},
         check=lambda e: "soft" not in e.details),
    Case(jobs.grandchild, JobTimeout, kwargs={"then": "hang"}, limits={"timeout": 0.5}, pidfile=True, grandchild=True),
    Case(jobs.sleep_forever, JobTimeout, limits={"timeout": 10, "soft_timeout": 0.2},
         details={"timeout_s": 0.2, "soft": True}, check=lambda e: "sleep_forever" in str(e.__cause__)),
    Case(jobs.allocate_slowly, MemoryLimitExceeded, args=(8 * MiB, 0.005),
         limits={"memory_limit": 128 * MiB, "timeout": 20}, details={"limit_bytes": 128 * MiB},
         check=lambda e: e.rss_bytes > e.limit_bytes),
    Case(jobs.grandchild_allocates, MemoryLimitExceeded, kwargs={"size": 400 * MiB},
         limits={"memory_limit": "200MiB", "timeout": 20}, details={"limit_bytes": 200 * MiB}, pidfile=True,
         grandchild=True),
    Case(jobs.length, pickle.PicklingError, args=(threading.Lock(),),
         check=lambda e: "tests.executor_jobs.length" in str(e) and "lock" in str(e)),
    Case(jobs.return_lock, ResultNotSerializable, details={"type": "lock"}),
    Case(jobs.return_load_bomb, ResultNotSerializable,
         check=lambda e: "this result cannot be rebuilt" in str(e.__cause__)),
    Case(jobs.raise_unpicklable, RemoteException, details={"remote_type": "Unpicklable"},
         check=lambda e: "carries a lock" in str(e) and "raise_unpicklable" in e.remote_traceback),
    Case(jobs.raise_two_arg_error, RemoteException, details={"remote_type": "TwoArgError"},
         check=lambda e: "needs two arguments" in str(e)),
]


def _case_id(case: Case) -> str:
    return f"{case.fn.__name__}-{case.expect.__name__}" + ("-soft" if "soft_timeout" in case.limits else "")


@pytest.mark.parametrize("case", CATALOGUE, ids=_case_id)
def test_misbehaving_call_fails_its_own_future_only(ex: cmworker.Executor, case: Case, tmp_path: Path) -> None:
    neighbour = ex.submit(jobs.nap, 0.2, "neighbour")
    kwargs = dict(case.kwargs)
    pidfile = tmp_path / "pid"
    if case.pidfile:
        kwargs["pidfile"] = str(pidfile)
    future = ex.submit_with(case.fn, *case.args, **case.limits, **kwargs)
    if case.kill_pid:
        os.kill(read_pid(pidfile), signal.SIGKILL)

    with pytest.raises(BaseException) as info:
        future.result(timeout=WAIT)
    error = info.value
    assert type(error) is case.expect, repr(error)
    for name, value in case.details.items():
        assert getattr(error, name) == value, (name, error)
    if case.check is not None:
        assert case.check(error), (error, error.__cause__)
    if case.grandchild:
        wait_gone({read_pid(pidfile)})

    assert neighbour.result(timeout=WAIT) == "neighbour"
    assert ex.submit(jobs.square, 7).result(timeout=WAIT) == 49  # the executor keeps working


def test_remote_exception_keeps_its_type_and_the_worker_traceback_as_cause(ex: cmworker.Executor) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        ex.submit(jobs.divide, 1, 0).result(timeout=WAIT)
    cause = info.value.__cause__
    assert cause is not None
    assert "Traceback (most recent call last)" in str(cause)
    assert "in divide" in str(cause) and "return a / b" in str(cause)


def test_sys_exit_and_keyboard_interrupt_do_not_cost_the_worker() -> None:
    with cmworker.Executor(1) as one:
        before = one.submit(jobs.pid).result(timeout=WAIT)
        for fn in (jobs.sys_exit, jobs.keyboard_interrupt):
            assert isinstance(one.submit(fn).exception(timeout=WAIT), RemoteException)
        assert one.submit(jobs.pid).result(timeout=WAIT) == before


def test_soft_timeout_lets_the_call_clean_up_and_return() -> None:
    with cmworker.Executor(1, timeout=10, soft_timeout=0.2) as soft:
        assert soft.submit(jobs.cleans_up_on_soft_timeout).result(timeout=WAIT) == "cleaned up"


def test_huge_argument_and_result_cross_intact(ex: cmworker.Executor) -> None:
    data = os.urandom(16 * MiB)
    assert ex.submit(jobs.echo, data).result(timeout=WAIT) == data
    assert ex.submit(jobs.big, 64 * MiB).result(timeout=WAIT) == b"x" * (64 * MiB)


def test_a_grandchild_left_behind_by_a_finished_call_is_killed(ex: cmworker.Executor, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    assert ex.submit(jobs.grandchild, str(pidfile), "return").result(timeout=WAIT) == "left a grandchild behind"
    wait_gone({read_pid(pidfile)})


# -- pickling: by value, by reference -----------------------------------------------------------------


def test_lambdas_and_closures_run(ex: cmworker.Executor) -> None:
    offset = 10

    def add_offset(x: int) -> int:
        return x + offset

    assert ex.submit(lambda x: x * 3, 5).result(timeout=WAIT) == 15
    assert ex.submit(add_offset, 5).result(timeout=WAIT) == 15
    assert list(ex.map(lambda x, y: x - y, [5, 6], [1, 2])) == [4, 4]


def test_importable_functions_are_sent_by_reference(ex: cmworker.Executor) -> None:
    assert ex.submit(jobs.globals_are_the_module).result(timeout=WAIT) is True
    body = pickled.dump_call(jobs.square, (3,), {})
    assert b"tests.executor_jobs" in body and b"_make_function" not in body


def test_preloaded_module_is_imported_once_in_the_template(ex: cmworker.Executor) -> None:
    assert ex.submit(jobs.imported_before_fork).result(timeout=WAIT) is True


MAIN_SCRIPT = """
import json, os, sys
import cmworker

CACHE = {}

def remember(key):
    # A module-level cache in __main__: it must outlive the call on the same worker.
    CACHE[key] = True
    return os.getpid(), sorted(CACHE)

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

def norm1(p):
    return abs(p.x) + abs(p.y)

def main():
    scale = 3
    with cmworker.Executor(1) as ex:
        cached = [ex.submit(remember, k).result(timeout=30) for k in "abc"]
        out = {
            "cached": cached,
            "lambda": ex.submit(lambda x: x * scale, 2).result(timeout=30),
            "point": ex.submit(norm1, Point(3, -4)).result(timeout=30),
            "returned": type(ex.submit(Point, 1, 2).result(timeout=30)).__qualname__,
            "map": list(ex.map(norm1, [Point(1, 1), Point(2, -2)], chunksize=2)),
        }
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def run_script(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=WAIT,
                          env=env, cwd=tmp_path)


def test_main_module_functions_classes_and_their_module_cache(tmp_path: Path) -> None:
    run = run_script(tmp_path, MAIN_SCRIPT)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    pids = {pid for pid, _ in out["cached"]}
    assert len(pids) == 1  # one worker ran all three calls...
    assert [keys for _, keys in out["cached"]] == [["a"], ["a", "b"], ["a", "b", "c"]]  # ...and kept its cache
    assert out["lambda"] == 6
    assert out["point"] == 7
    assert out["returned"] == "Point"
    assert out["map"] == [2, 4]


# -- limits ------------------------------------------------------------------------------------------


def test_executor_limits_apply_to_every_call_and_submit_with_overrides_them() -> None:
    with cmworker.Executor(1, timeout=0.3, memory_limit="128MiB") as limited:
        with pytest.raises(JobTimeout):
            limited.submit(jobs.sleep_forever).result(timeout=WAIT)
        with pytest.raises(MemoryLimitExceeded):  # its timeout lifted: on a loaded machine touching
            # 512 MiB can take longer than 0.3 s, and the executor's memory limit is what is tested here
            limited.submit_with(jobs.allocate, 512 * MiB, timeout=WAIT).result(timeout=WAIT)
        # None lifts a limit for one call; an omitted one stays the executor's
        assert limited.submit_with(jobs.nap, 0.5, "late", timeout=None).result(timeout=WAIT) == "late"
        lifted = limited.submit_with(jobs.allocate, 256 * MiB, memory_limit=None, timeout=WAIT)
        assert lifted.result(timeout=WAIT) == 256 * MiB
        with pytest.raises(JobTimeout) as info:
            limited.submit_with(jobs.sleep_forever, memory_limit="1GiB").result(timeout=WAIT)
        assert info.value.timeout_s == 0.3


def test_workers_are_recycled_after_max_jobs() -> None:
    with cmworker.Executor(1, max_jobs_per_worker=2) as recycled:
        pids = [recycled.submit(jobs.pid).result(timeout=WAIT) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


# -- map ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3, 50])
def test_map_returns_results_in_order(ex: cmworker.Executor, chunksize: int) -> None:
    assert list(ex.map(jobs.square, range(20), chunksize=chunksize)) == [x * x for x in range(20)]
    assert list(ex.map(pow, [2, 3, 4], [5, 2], chunksize=chunksize)) == [32, 9]


def test_map_raises_the_first_failure_in_order(ex: cmworker.Executor) -> None:
    results = ex.map(jobs.divide, [1, 2, 3, 4], [1, 1, 0, 1], chunksize=2)
    assert next(results) == 1
    assert next(results) == 2
    with pytest.raises(ZeroDivisionError):
        next(results)
    assert ex.submit(jobs.square, 3).result(timeout=WAIT) == 9


def test_map_timeout_raises_and_cancels_what_has_not_started(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with cmworker.Executor(1, timeout=1) as one:
        results = one.map(jobs.nap_then_touch, [0.0, 10.0, 0.0, 0.0], ["", "", "", str(marker)], timeout=0.5)
        assert next(results) == 0.0
        with pytest.raises(concurrent.futures.TimeoutError):  # the builtin TimeoutError from 3.11 on
            next(results)
        with pytest.raises(StopIteration):
            next(results)
        # The executor's own timeout ends the running call. The third call was already sent to the
        # worker, to run next (as in ProcessPoolExecutor, such a call counts as running); the fourth
        # was still queued: withdrawn, never run.
        assert one.submit(jobs.touch, str(tmp_path / "next")).result(timeout=WAIT)
    assert not marker.exists()


def test_map_rejects_a_bad_chunksize(ex: cmworker.Executor) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(jobs.square, [1], chunksize=bad)


# -- cancel and shutdown -----------------------------------------------------------------------------


def test_a_call_sent_ahead_to_a_worker_that_crashes_runs_on_its_replacement() -> None:
    with cmworker.Executor(1) as one:
        crash = one.submit(jobs.segfault)
        after = one.submit(jobs.square, 3)  # sent to the same worker, behind the crash
        with pytest.raises(cmworker.WorkerDied):
            crash.result(timeout=WAIT)
        assert after.result(timeout=WAIT) == 9


def test_a_queued_future_can_be_cancelled_and_a_running_one_cannot(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with cmworker.Executor(1) as one:
        running = one.submit(jobs.nap, 0.3, "ran")
        sent = one.submit(jobs.square, 3)  # sent to the worker ahead, to run next: running too
        queued = one.submit(jobs.touch, str(marker))
        deadline = time.monotonic() + WAIT
        while not sent.running() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert running.running() and sent.running() and not queued.running()
        assert queued.cancel()
        assert not running.cancel() and not sent.cancel()
        done, _ = concurrent.futures.wait([queued], timeout=0)
        assert queued in done and queued.cancelled()
        assert running.result(timeout=WAIT) == "ran" and sent.result(timeout=WAIT) == 9
        assert one.submit(jobs.square, 2).result(timeout=WAIT) == 4
    assert not marker.exists()  # the cancelled call never ran


def test_shutdown_cancel_futures_cancels_the_queue_and_leaves_no_process(tmp_path: Path) -> None:
    before = descendants()
    one = cmworker.Executor(1)
    processes = descendants() - before
    running = one.submit(jobs.nap, 0.3, "finished")
    queued = [one.submit(jobs.touch, str(tmp_path / f"q{i}")) for i in range(5)]
    one.shutdown(wait=True, cancel_futures=True)

    # The first queued call may have been sent to the worker already, to run after the current one (as
    # in ProcessPoolExecutor, it counts as running then): then it runs. The others never left the queue.
    ran = [f for f in queued if not f.cancelled()]
    assert ran in ([], queued[:1]) and all(f.result(timeout=0) for f in ran)
    assert running.result(timeout=0) == "finished"
    assert not alive(processes)  # shutdown(wait=True) returned: no worker or template left
    assert descendants() - before == set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q0"] * len(ran)
    with pytest.raises(RuntimeError, match="after shutdown"):
        one.submit(jobs.square, 1)


def test_shutdown_returns_once_every_worker_has_exited() -> None:
    """Even a worker that holds a lot of memory (its teardown takes the kernel a while) is gone by then."""
    one = cmworker.Executor(2)
    hoarders = {one.submit(jobs.hoard, 384 * MiB).result(timeout=WAIT) for _ in range(2)}
    one.shutdown(wait=True)
    assert not alive(hoarders)


def test_shutdown_without_wait_returns_at_once_and_the_pool_stops_after_the_last_answer() -> None:
    before = descendants()
    one = cmworker.Executor(1)
    processes = descendants() - before
    future = one.submit(jobs.nap, 0.5, "finished")
    one.shutdown(wait=False)
    assert not future.done()
    assert future.result(timeout=WAIT) == "finished"
    wait_gone(processes)
    with pytest.raises(RuntimeError, match="after shutdown"):
        one.submit(jobs.square, 1)


def test_shutdown_from_a_done_callback_does_not_deadlock() -> None:
    before = descendants()
    one = cmworker.Executor(1)
    called = threading.Event()

    def stop(_: concurrent.futures.Future[Any]) -> None:
        one.shutdown(wait=True)
        called.set()

    one.submit(jobs.square, 2).add_done_callback(stop)
    assert called.wait(WAIT)
    wait_gone(descendants() - before)


def test_a_done_callback_may_submit_more_work(ex: cmworker.Executor) -> None:
    second: list[concurrent.futures.Future[Any]] = []
    ready = threading.Event()

    def chain(future: concurrent.futures.Future[Any]) -> None:
        second.append(ex.submit(jobs.square, future.result()))
        ready.set()

    ex.submit(jobs.square, 3).add_done_callback(chain)
    assert ready.wait(WAIT)
    assert second[0].result(timeout=WAIT) == 81


def test_an_executor_dropped_without_shutdown_finishes_its_calls_then_stops() -> None:
    before = descendants()
    dropped = cmworker.Executor(1)
    processes = descendants() - before
    future = dropped.submit(jobs.nap, 0.2, "done")
    del dropped
    gc.collect()
    assert future.result(timeout=WAIT) == "done"
    wait_gone(processes)


EXIT_SCRIPT = """
import json, sys, time
import cmworker
from tests import executor_jobs as jobs

ex = cmworker.Executor(2)
print(json.dumps({"workers": ex.worker_pids(), "template": ex.template_pid}), flush=True)
print(ex.submit(jobs.square, 4).result(timeout=30), flush=True)
late = ex.submit(jobs.nap, 0.3, "late call finished")
late.add_done_callback(lambda f: print(f.result(), flush=True))
if sys.argv[1] == "hang":
    time.sleep(10**6)
# the script ends here with the executor open and a call running
"""


def test_interpreter_exit_with_an_open_executor_finishes_its_calls_and_leaves_no_process(tmp_path: Path) -> None:
    run = run_script(tmp_path, EXIT_SCRIPT, "exit")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    pids = json.loads(lines[0])
    assert lines[1:] == ["16", "late call finished"]
    wait_gone({*pids["workers"], pids["template"]})


def test_a_killed_parent_leaves_no_worker_behind(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), "hang"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        pids = json.loads(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "16"
        assert alive({*pids["workers"], pids["template"]})
    finally:
        proc.kill()
        proc.wait(WAIT)
        if proc.stdout is not None:
            proc.stdout.close()
    wait_gone({*pids["workers"], pids["template"]})


# -- arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_workers": 0}, "max_workers must be a positive int"),
    ({"max_workers": -2}, "max_workers must be a positive int"),
    ({"max_workers": True}, "max_workers must be a positive int"),
    ({"max_workers": 1.5}, "max_workers must be a positive int"),
    ({"max_jobs_per_worker": 0}, "max_jobs_per_worker must be a positive int"),
    ({"timeout": "abc"}, "timeout: 'abc' is not a duration"),
    ({"timeout": 0}, "timeout: 0 is not a limit"),
    ({"soft_timeout": -1}, "soft_timeout: -1 is not a duration"),
    ({"timeout": 1, "soft_timeout": 1}, r"soft_timeout \(1s\) must be less than timeout \(1s\)"),
    ({"timeout": "1s", "soft_timeout": "2s"}, r"soft_timeout \(2s\) must be less than timeout \(1s\)"),
    ({"memory_limit": "lots"}, "memory_limit: 'lots' is not a size"),
])
def test_bad_arguments_are_rejected_before_any_process_starts(kwargs: dict[str, Any], message: str) -> None:
    before = descendants()
    with pytest.raises(ValueError, match=message):
        cmworker.Executor(**kwargs)
    assert descendants() == before


def test_bad_per_call_arguments_are_rejected_at_submit(ex: cmworker.Executor) -> None:
    with pytest.raises(ValueError, match="timeout: 'soon' is not a duration"):
        ex.submit_with(jobs.square, 1, timeout="soon")
    with pytest.raises(ValueError, match="must be less than timeout"):
        ex.submit_with(jobs.square, 1, timeout=1, soft_timeout=5)
    with pytest.raises(TypeError, match="not callable"):
        ex.submit(42)


def test_a_preload_module_that_cannot_be_imported_fails_the_constructor() -> None:
    before = descendants()
    with pytest.raises(AppLoadError, match="no_such_module"):
        cmworker.Executor(1, preload=["no_such_module"])
    wait_gone(descendants() - before)


# -- the example -------------------------------------------------------------------------------------


def test_the_example_shows_a_result_a_crash_and_a_timeout() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "executor_demo.py")], capture_output=True,
                         text=True, timeout=WAIT)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:3] == ["count_primes(2,000,000) -> ok: 148933", "count_primes(3,000,000) -> ok: 216816",
                         "count_primes(4,000,000) -> ok: 283146"]
    assert lines[3].startswith("crash() -> WorkerDied (signal SIGSEGV)")
    assert lines[4].startswith("spin() -> JobTimeout") and "timeout of 1s" in lines[4]
    assert lines[5] == "afterwards: [4, 25, 168]"
