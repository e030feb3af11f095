"""Where and why a job ended: its stack at a timeout, a crash or a memory kill; the deadline it can see;
its peak memory; the soft memory limit and max_worker_memory.

Real workers throughout (tests/apps/diagnose.py): real sleeps and loops, a C call that holds the GIL with
SIGTERM ignored (ctypes), a real segfault and abort(), real memory.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cmworker
from cmworker.config import load_config
from cmworker.errors import ConfigError
from cmworker.pool.stack import StackCatcher, user_frame
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS, WAIT, cmworker_run, decoded_answer, descendants, running, running_pool, wait_gone

pytestmark = pytest.mark.timeout(120)

MiB = 2**20
APP = Path(APPS) / "diagnose.py"


def stuck_lines(function: str) -> list[int]:
    """The lines of ``function`` in the test app marked ``# stuck here``: a loop may be caught on either
    of its lines."""
    lines = APP.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {function}("))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "#")), len(lines))
    return [i + 1 for i in range(start, end) if lines[i].rstrip().endswith("# stuck here")]


def stuck_line(function: str) -> int:
    """The one line of ``function`` marked ``# stuck here``."""
    [line] = stuck_lines(function)
    return line


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    # kill_grace is long, so that an answer made as soon as the worker died of its dump is told apart
    # from one made when the grace ran out.
    with running_pool("diagnose.py", workers=2, kill_grace=3.0) as harness:
        yield harness


# -- the stack at a timeout ------------------------------------------------------------------------

@pytest.mark.parametrize("function", ["nap", "spin", "c_loop", "waits_for_thread"])
def test_a_timed_out_job_is_answered_with_its_stack_naming_the_users_function_and_line(pool: Any,
                                                                                       function: str) -> None:
    timeout = 0.3
    answer = pool.run(function, {}, timeout=timeout)
    payload = pool.payload(answer)
    assert answer.kind == "timeout"
    # A spinning loop is caught at its jump back (the `while` line) or in its body, as the signal lands.
    where = re.fullmatch(rf"{function}\(\) at {re.escape(str(APP))}:(\d+)", payload["where"])
    assert where is not None and int(where[1]) in stuck_lines(function), payload["where"]
    line = int(where[1])
    assert f"ran past its timeout of 300ms in {function}() at diagnose.py:{line} and was killed" in payload["error"]
    assert payload["where"] == f"{function}() at {APP}:{line}" == answer.where
    assert f'File "{APP}", line {line} in {function}' in payload["stack"]
    # The worker died of its dump, at once: the answer did not wait for kill_grace (3 s) to run out.
    assert answer.wall < timeout + pool.pool.options.kill_grace
    wait_gone({answer.pid})


def test_the_stack_of_a_timed_out_job_shows_its_other_threads_too(pool: Any) -> None:
    payload = pool.payload(pool.run("waits_for_thread", {}, timeout=0.3))
    assert re.search(r"Thread 0x[0-9a-f]+ .*\n(  File .*\n)*  File .*diagnose\.py\", line \d+ in blocked_helper",
                     payload["stack"]), payload["stack"]


def test_a_job_that_blocks_the_dump_is_killed_when_kill_grace_runs_out_and_answered_without_a_stack() -> None:
    with running_pool("diagnose.py", workers=1, kill_grace=0.5) as harness:
        answer = harness.run("deaf", {}, timeout=0.3)
        payload = harness.payload(answer)
        assert answer.kind == "timeout" and "stack" not in payload
        assert payload["error"] == "function 'deaf' ran past its timeout of 300ms and was killed"
        assert 0.3 + 0.5 <= answer.wall < 0.3 + 0.5 + 5.0  # the grace, and not much more
        wait_gone({answer.pid}, timeout=5.0)
        assert harness.run("whoami", {}).kind == "ok"  # and the pool goes on with a new worker


def test_a_stack_a_job_dumps_itself_and_lives_on_is_logged_as_its_output_not_swallowed(pool: Any) -> None:
    answer = pool.run("dumps_own_stack", {})
    assert answer.kind == "ok"
    texts = [line.text for line in pool.output[:pool.output_before[answer.job.id]] if line.job_id == answer.job.id]
    assert "before the dump" in texts and "after the dump" in texts, texts
    assert any(text.startswith(("Current thread 0x", "Stack (most recent call first)")) for text in texts), texts
    assert any(f'File "{APP}", line' in text and "in dumps_own_stack" in text for text in texts), texts
    # and the next job's timeout stack is its own, not this one's
    payload = pool.payload(pool.run("nap", {}, timeout=0.3))
    assert "dumps_own_stack" not in payload["stack"]


def test_a_grandchild_holding_the_job_up_does_not_delay_the_kill_or_hide_the_stack(pool: Any) -> None:
    before = descendants()
    answer = pool.run("held_up_by_grandchild", {}, timeout=0.3)
    payload = pool.payload(answer)
    assert answer.kind == "timeout"
    assert payload["where"] == f"held_up_by_grandchild() at {APP}:{stuck_line('held_up_by_grandchild')}"
    assert answer.wall < 0.3 + pool.pool.options.kill_grace
    wait_gone({answer.pid})
    wait_gone(descendants() - before - set(pool.pool.worker_pids()))  # the grandchild too


# -- the stack at a crash and at a memory kill -----------------------------------------------------

@pytest.mark.parametrize(("function", "sig"), [("segfault", "SIGSEGV"), ("abort", "SIGABRT")])
def test_a_crash_is_answered_with_the_stack_of_the_crash(pool: Any, function: str, sig: str) -> None:
    answer = pool.run(function, {})
    payload = pool.payload(answer)
    line = stuck_line(function)
    assert answer.kind == "worker_died" and payload["signal"] == sig
    assert f"was killed by {sig}" in payload["error"]
    assert f" in {function}() at diagnose.py:{line} without answering" in payload["error"]
    assert payload["where"] == f"{function}() at {APP}:{line}"
    assert payload["stack"].startswith("Fatal Python error: ")
    # The dump went to the answer, not to the job's output lines.
    assert "Fatal Python error" not in payload["output"]
    assert not any("Fatal Python error" in line.text for line in pool.output)


def test_a_memory_kill_is_answered_with_the_stack_of_the_allocation_loop(pool: Any) -> None:
    answer = pool.run("grow", {}, memory_limit=150 * MiB)
    payload = pool.payload(answer)
    assert answer.kind == "memory_limit" and payload["rss_bytes"] > 150 * MiB
    # In the allocation, or in the millisecond's pause after it: either line of the loop.
    loop = (stuck_line("grow"), stuck_line("grow") + 1)
    assert any(f'File "{APP}", line {line} in grow' in payload["stack"] for line in loop), payload["stack"]
    assert re.search(r"of memory, over its limit of 150MiB in (_touched|grow)\(\) at diagnose\.py:\d+, and was "
                     "killed", payload["error"]), payload["error"]


# -- deadlines the job can see ---------------------------------------------------------------------

def test_context_remaining_counts_down_from_the_configured_timeout(pool: Any) -> None:
    answer = pool.run("time_left", {"sleep": 0.2}, timeout=5.0, soft_timeout=4.0)
    left = pool.payload(answer)
    assert 5.0 - 0.05 <= left["first"] <= 5.0
    assert left["second"] < left["first"] - 0.15
    assert abs(left["soft"] - (left["second"] - 1.0)) < 0.05
    assert abs(left["module"] - left["second"]) < 0.05  # cmworker.remaining() says the same
    assert abs(left["deadline"] - left["now"] - left["second"]) < 0.05


def test_without_a_timeout_remaining_is_none_and_the_context_carries_no_deadline(pool: Any) -> None:
    left = pool.payload(pool.run("time_left", {"sleep": 0.0}))
    assert left["first"] is left["second"] is left["soft"] is left["module"] is left["deadline"] is None
    plain = pool.payload(pool.run("time_left_dict", {}))
    assert plain == {"deadline": None, "softDeadline": None, "remaining": None, "now": plain["now"]}


def test_the_context_dict_carries_the_deadlines_as_unix_times(pool: Any) -> None:
    seen = pool.payload(pool.run("time_left_dict", {}, timeout=10.0, soft_timeout=8.0))
    assert abs(seen["deadline"] - seen["now"] - 10.0) < 0.05
    assert abs(seen["softDeadline"] - seen["now"] - 8.0) < 0.05
    assert abs(seen["remaining"] - 10.0) < 0.05


def test_an_executor_call_sees_its_deadline_through_cmworker_remaining() -> None:
    with cmworker.Executor(max_workers=1, timeout=5.0) as executor:
        left = executor.submit(lambda: cmworker.remaining()).result(WAIT)
        assert left is not None and 5.0 - 0.05 <= left <= 5.0
    with cmworker.Executor(max_workers=1) as executor:
        assert executor.submit(lambda: cmworker.remaining()).result(WAIT) is None
    assert cmworker.remaining() is None  # outside a job


def test_an_executor_call_that_times_out_raises_with_its_stack() -> None:
    def stuck() -> None:
        time.sleep(3600)

    with cmworker.Executor(max_workers=1, timeout=0.3) as executor, pytest.raises(cmworker.JobTimeout) as caught:
        executor.submit(stuck).result(WAIT)
    assert caught.value.where is not None and caught.value.where.startswith("stuck() at ")
    assert "in stuck" in caught.value.stack


# -- memory: peak RSS of every job, soft limit, worker replacement ---------------------------------

def test_every_answer_carries_the_jobs_peak_rss_without_a_memory_limit(pool: Any) -> None:
    answer = pool.run("hold", {"mib": 200})
    seen = pool.payload(answer)["rss"]  # psutil's RSS of the worker while it held the memory
    assert seen > 200 * MiB
    assert abs(answer.max_rss - seen) <= 0.1 * seen


def test_a_jobs_peak_is_its_own_not_that_of_the_jobs_before_it_on_the_worker() -> None:
    with running_pool("diagnose.py", workers=1) as harness:
        big = harness.run("hold", {"mib": 300})
        small = harness.run("hold", {"mib": 1})
        assert big.pid == small.pid
        assert big.max_rss > 300 * MiB
        assert small.max_rss < 100 * MiB  # the high-water mark was reset when the job started


def test_a_child_process_of_a_job_without_a_memory_limit_is_counted(pool: Any) -> None:
    # No sampler runs for this job: the worker reports the largest process of the job it reaped.
    answer = pool.run("child_holds", {"mib": 300, "sleep": 0.1})
    assert answer.kind == "ok" and answer.max_rss >= 300 * MiB


def test_with_a_memory_limit_the_sampler_counts_the_whole_tree_of_the_job() -> None:
    with running_pool("diagnose.py", workers=1) as harness:
        answer = harness.run("child_holds", {"mib": 300, "own_mib": 200, "sleep": 1.0}, memory_limit=4 * 2**30)
        assert answer.kind == "ok" and answer.max_rss >= 500 * MiB  # the worker's 200 and the child's 300


def test_a_job_catches_its_soft_memory_limit_and_returns() -> None:
    with running_pool("diagnose.py", workers=1) as harness:
        answer = harness.run("soft_grow", {}, soft_memory_limit=120 * MiB, memory_limit=600 * MiB)
        assert answer.kind == "ok", answer.body
        result = harness.payload(answer)
        assert result["caught"] == "MemoryLimitExceeded" and result["soft"] is True
        assert result["limit"] == 120 * MiB
        assert answer.max_rss > 120 * MiB


def test_an_uncaught_soft_memory_limit_is_answered_memory_limit(pool: Any) -> None:
    # grow does not catch it: the job ends with the soft error, before the hard limit is reached.
    answer = pool.run("grow", {}, soft_memory_limit=100 * MiB, memory_limit=2000 * MiB)
    payload = pool.payload(answer)
    assert answer.kind == "memory_limit" and payload["soft"] is True and payload["limit_bytes"] == 100 * MiB


def test_a_worker_left_above_max_worker_memory_is_replaced_before_the_next_job() -> None:
    with running_pool("diagnose.py", workers=1) as harness:
        first = harness.payload(harness.run("leak", {"mib": 10}, max_worker_memory=200 * MiB))["pid"]
        assert harness.payload(harness.run("whoami", {}))["pid"] == first  # under the limit: kept
        leaked = harness.payload(harness.run("leak", {"mib": 300}, max_worker_memory=200 * MiB))["pid"]
        assert leaked == first
        after = harness.payload(harness.run("whoami", {}))["pid"]
        assert after != leaked
        assert not running(leaked) or wait_gone({leaked}) is None


# -- the job_finished line, end to end ---------------------------------------------------------------

CONFIG = """
[limits]
timeout = "20s"
kill_grace = "2s"

[functions.nap]
timeout = "300ms"
"""


def test_job_finished_lines_carry_peak_rss_and_the_stack_of_a_timed_out_job(tmp_path: Path) -> None:
    with EmbeddedRuntime(long_poll=1.0, max_concurrent_tasks=2) as rt, \
            cmworker_run(rt, tmp_path, CONFIG, app="diagnose.py") as proc:
        held, napped = rt.submit("hold", {"mib": 200}), rt.submit("nap", {})
        for job in (held, napped):
            decoded_answer(rt, job, WAIT)
        rss = json.loads(rt.record.job(held).answer)["rss"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    lines = [json.loads(line) for line in (tmp_path / "run.log").read_text().splitlines() if line.startswith("{")]
    finished = {line["params"]["job_id"]: line for line in lines if line.get("message") == "job_finished"}
    assert abs(finished[held]["params"]["peak_rss_bytes"] - rss) <= 0.1 * rss
    timed_out = finished[napped]
    assert timed_out["params"]["kind"] == "timeout"
    assert timed_out["params"]["where"] == f"nap() at {APP}:{stuck_line('nap')}"
    assert f'line {stuck_line("nap")} in nap' in timed_out["stacktrace"]




# -- the settings ---------------------------------------------------------------------------------

def test_the_memory_settings_are_per_function_and_the_soft_one_must_stay_below_the_hard_one(tmp_path: Path) -> None:
    toml = tmp_path / "cmworker.toml"
    toml.write_text('[limits]\nmemory_limit = "1GiB"\nsoft_memory_limit = "768MiB"\nmax_worker_memory = "512MiB"\n'
                    '[functions.big]\nmemory_limit = "8GiB"\nsoft_memory_limit = "6GiB"\nmax_worker_memory = "none"\n')
    config = load_config(toml, environ={})
    assert config.limits.soft_memory_limit == 768 * MiB and config.limits.max_worker_memory == 512 * MiB
    big = config.limits_for("big")
    assert big.soft_memory_limit == 6 * 2**30 and big.max_worker_memory is None
    declared = config.limits_for("small", {"soft_memory_limit": 100 * MiB, "max_worker_memory": 300 * MiB})
    assert declared.soft_memory_limit == 100 * MiB and declared.max_worker_memory == 300 * MiB
    toml.write_text('[limits]\nmemory_limit = "1GiB"\n[functions.big]\nsoft_memory_limit = "2GiB"\n')
    with pytest.raises(ConfigError, match=r"function 'big': soft_memory_limit = \"2GiB\" .* must be less than "
                                          r"memory_limit = \"1GiB\""):
        load_config(toml, environ={})


# -- reading a dump (no processes) -------------------------------------------------------------------

DUMP = """\
Thread 0x00007f15eedef6c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 327 in wait
  File "/srv/app/pricing.py", line 12 in helper
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap

Current thread 0x00007f15f07e4b80 (most recent call first):
  File "/usr/lib/python3.11/site-packages/numpy/core/multiarray.py", line 9 in dot
  File "/srv/app/pricing.py", line 42 in solve
  File "/srv/app/app.py", line 7 in price
  File "{worker}", line 160 in _run_json
  File "{worker}", line 102 in _run"""


def test_the_user_frame_is_the_innermost_app_frame_of_the_thread_running_the_job() -> None:
    worker = str(Path(cmworker.__file__).parent / "pool" / "worker.py")
    frame = user_frame(DUMP.format(worker=worker))
    assert frame is not None and frame.where == "solve() at /srv/app/pricing.py:42"
    assert frame.short == "solve() at pricing.py:42"


def test_the_catcher_takes_the_dump_lines_and_lets_other_output_through() -> None:
    catcher = StackCatcher()
    lines = ["before", *DUMP.format(worker="/w.py").splitlines(), "after"]
    passed = [line for line in lines if not catcher.take(line)]
    assert passed == ["before", "after"]
    assert catcher.text == DUMP.format(worker="/w.py")
    catcher.reset()
    assert catcher.text is None


def test_the_executor_takes_the_memory_settings_too() -> None:
    from cmworker import Executor
    from tests import executor_jobs

    with Executor(1, memory_limit="1GiB", soft_memory_limit="120MiB", max_worker_memory="200MiB") as ex:
        grown = ex.submit(executor_jobs.grow_until_told).result(timeout=60)
        assert grown["caught"] is True and grown["grown_mib"] >= 60  # stopped by the soft limit, not killed
        # Without the soft limit for these: the 300 MiB kept would cross it.
        first = ex.submit_with(executor_jobs.keep, 10, soft_memory_limit=None).result(timeout=60)
        leaked = ex.submit_with(executor_jobs.keep, 300, soft_memory_limit=None).result(timeout=60)
        assert leaked == first  # same worker: below max_worker_memory until then
        after = ex.submit_with(executor_jobs.keep, 0, soft_memory_limit=None).result(timeout=60)
        assert after != leaked  # replaced after the 300 MiB
    with pytest.raises(ValueError, match=r"soft_memory_limit .* must be less than memory_limit"):
        Executor(1, memory_limit="100MiB", soft_memory_limit="200MiB")
