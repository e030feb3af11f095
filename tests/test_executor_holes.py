"""Holes, each shown first with real processes, and the rest of its class.

1. A call sent ahead to a busy worker (prefetch) that dies before starting it runs on the replacement
   worker; its future must be marked running once, not again when it is sent the second time
   (``concurrent.futures`` logs ``CRITICAL Future ... in unexpected state: RUNNING`` then). In the same
   class: a call sent ahead must reach its worker after the worker's current call (not overtake it from
   another thread, not land inside a large one still being written).
2. Every documented attribute of an error (``WorkerDied.signal``/``exit_code``,
   ``MemoryLimitExceeded.rss_bytes``...) exists on every instance, ``None`` where it does not apply,
   however the error was made: raised in the parent, rebuilt from its payload, or unpickled.
3. ``scripts/failures.py`` run by a Python without the official SDK says how to get it, at once, instead
   of failing a minute later with the SDK client's ``No module named 'compute_modules'``.

Every wait has a deadline (``WAIT``); no test asserts a duration.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import cmworker
from cmworker import JobTimeout, MemoryLimitExceeded, ResultNotSerializable, WorkerDied, errors
from tests import executor_jobs as jobs
from tests.pool_harness import WAIT, descendants, wait_gone

MiB = 2**20
pytestmark = pytest.mark.timeout(90)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT}s: {what}"
        time.sleep(0.005)


@pytest.fixture
def futures_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """What ``concurrent.futures`` logs (it complains there, at CRITICAL, about misused futures)."""
    caplog.set_level(logging.DEBUG, logger="concurrent.futures")
    return caplog


def complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "concurrent.futures"]


def sent_ahead(executor: cmworker.Executor, queued: int) -> Callable[[], bool]:
    """A condition: the pool has sent a call ahead to its one busy worker and ``queued`` calls are left
    in its queue (``available``: idle workers minus queued calls)."""
    return lambda: executor.available == -queued


# -- 1. a call sent ahead to a worker that dies -------------------------------------------------------

DEATHS = {
    "segfault": (WorkerDied, {"signal": "SIGSEGV"}),
    "exit": (WorkerDied, {"exit_code": 7}),
    "allocate": (MemoryLimitExceeded, {"limit_bytes": 128 * MiB}),
}


@pytest.mark.parametrize("how", list(DEATHS))
def test_a_call_sent_ahead_to_a_worker_that_dies_is_marked_running_once(
        tmp_path: Path, futures_log: pytest.LogCaptureFixture, how: str) -> None:
    """It runs on the replacement worker, its future is running from the first send, and nothing is
    marked twice: ``concurrent.futures`` has nothing to complain about."""
    go = tmp_path / "go"
    expected, details = DEATHS[how]
    with cmworker.Executor(1, memory_limit="128MiB") as one:
        dying = one.submit(jobs.die_on_signal, str(go), how)
        ahead = one.submit(jobs.pid)
        wait_until(ahead.running, "the second call was sent ahead to the busy worker")
        go.touch()
        with pytest.raises(expected) as died:
            dying.result(timeout=WAIT)
        assert {name: getattr(died.value, name) for name in details} == details
        assert ahead.result(timeout=WAIT) != died.value.pid  # ran, on the replacement
    assert complaints(futures_log) == []


def test_a_map_chunk_sent_ahead_to_a_worker_that_dies_is_marked_running_once(
        tmp_path: Path, futures_log: pytest.LogCaptureFixture) -> None:
    go = tmp_path / "go"
    with cmworker.Executor(1) as one:
        dying = one.submit(jobs.die_on_signal, str(go), "exit")
        results = one.map(jobs.square, range(5), chunksize=2)  # three chunks: one sent ahead, two queued
        wait_until(sent_ahead(one, queued=2), "the first chunk was sent ahead to the busy worker")
        go.touch()
        with pytest.raises(WorkerDied):
            dying.result(timeout=WAIT)
        assert list(results) == [0, 1, 4, 9, 16]
    assert complaints(futures_log) == []


def test_a_call_sent_again_after_its_worker_died_stays_running_and_cannot_be_cancelled(
        tmp_path: Path, futures_log: pytest.LogCaptureFixture) -> None:
    """Between the death and the second send the call waits in the queue again: it is still running
    (as in ``ProcessPoolExecutor``, a call sent to a worker counts as running), so ``cancel`` refuses."""
    go = tmp_path / "go"
    with cmworker.Executor(1) as one:
        dying = one.submit(jobs.die_on_signal, str(go), "segfault")
        ahead = one.submit(jobs.pid)
        wait_until(ahead.running, "the second call was sent ahead to the busy worker")
        go.touch()
        with pytest.raises(WorkerDied) as died:
            dying.result(timeout=WAIT)
        assert ahead.running() or ahead.done()
        assert not ahead.cancel() and not ahead.cancelled()
        assert ahead.result(timeout=WAIT) != died.value.pid
    assert complaints(futures_log) == []


def test_shutdown_cancelling_the_queue_then_a_death_runs_the_call_sent_ahead_once(
        tmp_path: Path, futures_log: pytest.LogCaptureFixture) -> None:
    """``shutdown(wait=False, cancel_futures=True)``, then the busy worker dies: the queued call was
    cancelled and never runs, the call sent ahead runs on a replacement, then the pool stops."""
    go, marker = tmp_path / "go", tmp_path / "queued-ran"
    before = descendants()
    one = cmworker.Executor(1)
    processes = descendants() - before
    dying = one.submit(jobs.die_on_signal, str(go), "segfault")
    ahead = one.submit(jobs.pid)
    queued = one.submit(jobs.touch, str(marker))
    wait_until(ahead.running, "the second call was sent ahead to the busy worker")
    one.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled() and not ahead.cancelled()
    go.touch()
    with pytest.raises(WorkerDied) as died:
        dying.result(timeout=WAIT)
    assert ahead.result(timeout=WAIT) != died.value.pid
    wait_gone(processes)
    wait_gone(descendants() - before)  # the replacement worker too
    assert not marker.exists()
    assert complaints(futures_log) == []


def test_large_calls_sent_ahead_reach_the_worker_whole() -> None:
    """A call larger than the socket's buffer is partly sent and partly left for the pool's loop to
    flush; a call sent ahead to the same worker meanwhile must queue behind it, not into its middle."""
    with cmworker.Executor(1) as one:
        for size in (8 * MiB, 16 * MiB, 8 * MiB):
            given = one.submit(jobs.length, b"a" * size)
            ahead = one.submit(jobs.length, b"b" * (size + 1))
            assert (given.result(timeout=WAIT), ahead.result(timeout=WAIT)) == (size, size + 1)


# -- 2. every documented attribute of an error, on every instance -------------------------------------

# The details each kind documents (docs/deploying.md, "What callers see when a job fails"; the README's
# Executor example), and the ones the code adds: InvalidInput's field and expected, JobTimeout's soft.
DOCUMENTED: dict[type[errors.JobError], dict[str, object]] = {
    errors.UnknownFunction: {"function": "f", "known": ["g"]},
    errors.InvalidInput: {"field": "a.b", "expected": "integer"},
    errors.JobTimeout: {"timeout_s": 1.5, "soft": True, "pid": 12},
    errors.MemoryLimitExceeded: {"limit_bytes": 100, "rss_bytes": 120, "pid": 12},
    errors.WorkerDied: {"signal": "SIGSEGV", "exit_code": 3, "pid": 12, "output": "last", "likely_oom": True},
    errors.ResultNotSerializable: {"type": "lock"},
    errors.ResultTooLarge: {"size_bytes": 200, "limit_bytes": 100, "items_sent": 4},
    errors.StreamFailed: {"items_sent": 4, "type": "ValueError", "traceback": "Traceback ..."},
    errors.ShuttingDown: {"pid": 12},
    errors.JobDropped: {"replica": 2},
}


def through_payload(error: errors.JobError) -> errors.JobError:
    back = errors.error_from_payload(json.loads(error.to_bytes()))
    assert back is not None and type(back) is type(error)
    return back


def through_pickle(error: errors.JobError) -> errors.JobError:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    return back


BUILT = {"made": lambda error: error, "from_payload": through_payload, "unpickled": through_pickle}


def attributes(error: errors.JobError, names: list[str]) -> dict[str, object]:
    return {name: getattr(error, name) for name in names}


@pytest.mark.parametrize("how", list(BUILT))
@pytest.mark.parametrize("cls", list(DOCUMENTED), ids=lambda cls: cls.__name__)
def test_an_error_without_details_has_every_documented_attribute_as_none(
        cls: type[errors.JobError], how: str) -> None:
    error = BUILT[how](cls("it went wrong"))
    assert attributes(error, list(DOCUMENTED[cls])) == dict.fromkeys(DOCUMENTED[cls])
    assert error.details == {} and error.message == "it went wrong"


@pytest.mark.parametrize("how", list(BUILT))
@pytest.mark.parametrize("cls", list(DOCUMENTED), ids=lambda cls: cls.__name__)
def test_an_error_keeps_every_documented_detail_it_was_given(cls: type[errors.JobError], how: str) -> None:
    error = BUILT[how](cls("it went wrong", **DOCUMENTED[cls]))
    assert attributes(error, list(DOCUMENTED[cls])) == DOCUMENTED[cls]


@pytest.mark.parametrize("how", list(BUILT))
def test_a_remote_exception_has_its_type_and_traceback_however_it_was_built(how: str) -> None:
    bare = BUILT[how](errors.RemoteException("it went wrong"))
    assert isinstance(bare, errors.RemoteException)
    assert (bare.remote_type, bare.remote_traceback) == (None, "")


@pytest.mark.parametrize("cls", list(DOCUMENTED), ids=lambda cls: cls.__name__)
def test_an_undocumented_attribute_is_still_an_attribute_error(cls: type[errors.JobError]) -> None:
    with pytest.raises(AttributeError, match="no_such_detail"):
        cls("it went wrong").no_such_detail  # noqa: B018


@pytest.mark.parametrize("payload", [
    {"kind": "timeout", "error": "it went wrong", "message": "a detail named message"},
    {"kind": "timeout", "error": "it went wrong", "self": 1},
    {"kind": "exception", "exception": "it went wrong", "message": "a detail named message"},
], ids=["message", "self", "exception-message"])
def test_a_payload_detail_named_like_a_constructor_argument_is_kept(payload: dict[str, object]) -> None:
    """The payload comes from a worker or the runtime: any key is possible, and it must not stop the
    error from being rebuilt (a TypeError from the constructor)."""
    error = errors.error_from_payload(payload)
    assert error is not None and error.message == "it went wrong"
    assert {k: v for k, v in error.details.items() if k in payload} == \
        {k: v for k, v in payload.items() if k not in ("kind", "error", "exception")}


@pytest.fixture(scope="module")
def ex() -> Iterator[cmworker.Executor]:
    before = descendants()
    executor = cmworker.Executor(1, preload=["tests.executor_jobs"])
    try:
        yield executor
    finally:
        executor.shutdown(wait=True)
        wait_gone(descendants() - before)


DEATH_DETAILS = {
    jobs.segfault: {"signal": "SIGSEGV", "exit_code": None, "likely_oom": None},
    jobs.exit3: {"exit_code": 3, "signal": None, "likely_oom": None},
}


@pytest.mark.parametrize("how", list(BUILT))
@pytest.mark.parametrize("fn", list(DEATH_DETAILS), ids=lambda fn: fn.__name__)
def test_a_worker_death_has_signal_or_exit_code_and_the_other_is_none(
        ex: cmworker.Executor, fn: Callable[[], None], how: str) -> None:
    with pytest.raises(WorkerDied) as died:
        ex.submit(fn).result(timeout=WAIT)
    error = BUILT[how](died.value)
    assert attributes(error, list(DEATH_DETAILS[fn])) == DEATH_DETAILS[fn]
    assert isinstance(error.pid, int) and isinstance(error.output, str)


@pytest.mark.parametrize("how", list(BUILT))
def test_a_soft_timeout_raised_in_the_worker_has_every_documented_attribute(ex: cmworker.Executor,
                                                                             how: str) -> None:
    """Raised inside the call, it comes back pickled: no pid (the parent did not kill anything)."""
    with pytest.raises(JobTimeout) as info:
        ex.submit_with(jobs.sleep_forever, timeout=WAIT, soft_timeout=0.1).result(timeout=WAIT)
    error = BUILT[how](info.value)
    assert attributes(error, ["timeout_s", "soft", "pid"]) == {"timeout_s": 0.1, "soft": True, "pid": None}


@pytest.mark.parametrize("how", list(BUILT))
def test_a_hard_timeout_is_not_soft(ex: cmworker.Executor, how: str) -> None:
    with pytest.raises(JobTimeout) as info:
        ex.submit_with(jobs.sleep_forever, timeout=0.1).result(timeout=WAIT)
    error = BUILT[how](info.value)
    assert error.soft is None and error.timeout_s == 0.1 and isinstance(error.pid, int)


@pytest.mark.parametrize("how", list(BUILT))
def test_a_result_the_caller_cannot_unpickle_has_a_type_of_none(ex: cmworker.Executor, how: str) -> None:
    """The parent makes this one (the worker pickled the result fine): it knows no type name."""
    with pytest.raises(ResultNotSerializable) as info:
        ex.submit(jobs.return_load_bomb).result(timeout=WAIT)
    assert BUILT[how](info.value).type is None


# -- 3. scripts/failures.py without the official SDK --------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_the_failures_script_without_the_sdk_names_the_command_that_installs_it() -> None:
    """Run as after the Quick start (a base install): the SDK is hidden from this interpreter, as if not
    installed. The script exits at once with a usage error naming ``scripts/failures``, and starts no
    client or runtime."""
    hide_the_sdk = textwrap.dedent(f"""
        import runpy, sys
        sys.modules["compute_modules"] = None  # what an interpreter without the package finds: nothing
        sys.argv = ["scripts/failures.py", "--only", "crash"]
        runpy.run_path({str(ROOT / "scripts" / "failures.py")!r}, run_name="__main__")
    """)
    before = descendants()
    done = subprocess.run([sys.executable, "-c", hide_the_sdk], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "foundry-compute-modules" in done.stderr and "scripts/failures " in done.stderr
    assert "crash" not in done.stdout and descendants() == before
