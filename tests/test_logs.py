"""Logs for the Foundry Logs tab: SLS service.1 lines, job output tagged with its job, secrets never shown."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog
from structlog.testing import capture_logs

from cmworker import logs
from cmworker.config import load_config
from cmworker.redaction import SECRETS
from cmworker.replica.intake import Accepted, parse_job
from cmworker.replica.ledger import Ledger
from cmworker.replica.poller import Poller
from cmworker.replica.service import Service, discover
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS

pytestmark = pytest.mark.timeout(120)
LEVELS = {"FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"}


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def render(configure_format: str = "sls") -> io.StringIO:
    out = io.StringIO()
    logs.configure(configure_format, "DEBUG", stream=out)
    return out


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_structlog_and_stdlib_lines_have_the_sls_shape() -> None:
    out = render()
    logs.get_logger("cmworker.x").warning("something_odd", job_id="j1", attempt=2)
    logging.getLogger("some.library").critical("disk %s is full", "/tmp")
    first, second = lines(out)
    for line in (first, second):
        assert line["type"] == "service.1" and line["level"] in LEVELS
        assert line["time"].endswith("Z") and line["thread"] == threading.current_thread().name
        assert line["params"]["process_id"] == os.getpid()
    assert (first["level"], first["message"], first["origin"]) == ("WARN", "something_odd", "cmworker.x")
    assert first["params"]["job_id"] == "j1" and first["params"]["attempt"] == 2 and first["safe"] is True
    assert (second["level"], second["message"], second["origin"]) == ("FATAL", "disk /tmp is full", "some.library")


def test_fields_cmworker_does_not_vouch_for_are_unsafe() -> None:
    out = render()
    structlog.get_logger("app").info("user_event", customer="alice@example.com", job_id="j2")
    [line] = lines(out)
    assert line["params"] == {"job_id": "j2", "session_id": None, "process_id": os.getpid()}
    assert line["unsafeParams"] == {"customer": "alice@example.com"}
    assert line["safe"] is False


def test_exceptions_carry_a_stacktrace() -> None:
    out = render()
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("cmworker").exception("it failed")
    [line] = lines(out)
    assert line["level"] == "ERROR" and "ValueError: boom" in line["stacktrace"]


def test_registered_secrets_are_redacted_everywhere() -> None:
    out = render()
    logs.add_secret("s3cr3t-token-value")
    try:
        structlog.get_logger().info("token is s3cr3t-token-value", header="Bearer s3cr3t-token-value")
        logging.getLogger("lib").error("sending s3cr3t-token-value")
    finally:
        logs.remove_secret("s3cr3t-token-value")
    text = out.getvalue()
    assert "s3cr3t" not in text and text.count(logs.REDACTED) == 3


def test_console_format_is_for_people() -> None:
    out = render("console")
    structlog.get_logger().info("job_finished", job_id="j3", kind="ok")
    text = out.getvalue()
    assert "job_finished" in text and "job_id=j3" in text and not text.startswith("{")


# -- FixedLine: the per-job line's shortcut past structlog -----------------------------------------

FIELDS: dict[str, Any] = {"job_id": 'j-\u00e9"\\\n', "function": "spin", "kind": "ok", "worker_pid": 4242,
                          "queued_s": 0.000123, "wall_s": 1e-07, "cpu_s": 0.25, "peak_rss_bytes": None,
                          "result_bytes": 4, "status": True, "jobs_by_outcome": {"ok": 3}}


def _fixed_and_ordinary(method: str, fields: dict[str, Any], level: str = "DEBUG",
                        configure_format: str = "sls") -> tuple[str, str]:
    """The same call through FixedLine and through the ordinary logger, at one frozen instant."""
    out = io.StringIO()
    logs.configure(configure_format, level, stream=out)
    ordinary = logs.get_logger("cmworker.poller").bind()
    fixed = logs.FixedLine(ordinary, "cmworker.poller", "job_finished")
    fixed(method, **fields)
    logs.flush_deferred()
    first = out.getvalue()
    getattr(ordinary, method)("job_finished", **fields)
    return first, out.getvalue()[len(first):]


def test_the_fixed_line_is_exactly_the_ordinary_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_now", lambda now=None: "2026-12-01T12:00:00.000001Z")  # one instant for both lines
    monkeypatch.setenv("COMPUTE_SESSION_ID", "session-7")
    logs.add_secret("4242-secret")
    try:
        for method in ("info", "warning", "error"):
            fixed, ordinary = _fixed_and_ordinary(method, {**FIELDS, "job_id": "with 4242-secret inside"})
            assert fixed == ordinary and "4242-secret" not in fixed
            fixed, ordinary = _fixed_and_ordinary(method, FIELDS)
            assert fixed == ordinary
    finally:
        logs.remove_secret("4242-secret")
    line = json.loads(fixed)
    assert line["params"]["job_id"] == FIELDS["job_id"] and line["params"]["session_id"] == "session-7"
    assert line["level"] == "ERROR" and line["safe"] is True and "unsafeParams" not in line


def test_the_fixed_line_follows_the_level_the_format_and_what_a_field_is() -> None:
    assert _fixed_and_ordinary("info", FIELDS, level="WARN") == ("", "")
    fixed, ordinary = _fixed_and_ordinary("warning", FIELDS, level="WARN")
    assert json.loads(fixed)["message"] == json.loads(ordinary)["message"] == "job_finished"
    fixed, _ = _fixed_and_ordinary("info", {**FIELDS, "customer": "alice"})  # not a field cmworker sets
    assert json.loads(fixed)["unsafeParams"] == {"customer": "alice"}
    fixed, ordinary = _fixed_and_ordinary("info", FIELDS, configure_format="console")
    assert fixed.split(" ", 1)[1] == ordinary.split(" ", 1)[1] and "job_finished" in fixed  # after the time


def test_deferred_lines_are_written_soon_with_the_time_and_thread_of_the_call() -> None:
    out = io.StringIO()
    logs.configure("sls", "INFO", stream=out)
    fixed = logs.FixedLine(logs.get_logger("cmworker.poller"), "cmworker.poller", "job_finished")
    called = []
    for i in range(3):
        called.append(time.time())
        fixed("info", job_id=f"j{i}", kind="ok")
        time.sleep(0.002)
    thread = threading.Thread(target=lambda: fixed("warning", job_id="j3", kind="timeout"), name="another")
    thread.start()
    thread.join()
    _wait(lambda: out.getvalue().count("\n") == 4, timeout=10)  # the log thread writes them by itself
    written = lines(out)
    assert [line["params"]["job_id"] for line in written] == ["j0", "j1", "j2", "j3"]
    assert [line["thread"] for line in written] == [threading.current_thread().name] * 3 + ["another"]
    assert written[3]["level"] == "WARN"
    for line, when in zip(written[:3], called, strict=True):  # the call's time, not the write's (50 ms on)
        stamp = datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert abs(stamp.replace(tzinfo=datetime.timezone.utc).timestamp() - when) < 0.02
    fixed("info", job_id="j4", kind="ok")
    logs.flush_deferred()  # what the poller calls as it stops: written now
    assert lines(out)[-1]["params"]["job_id"] == "j4"


def test_deferred_lines_wait_for_their_batch_and_go_out_in_one_write() -> None:
    class Writes(io.StringIO):
        count = 0

        def write(self, text: str) -> int:
            self.count += 1
            return super().write(text)

    out = Writes()
    logs.configure("sls", "INFO", stream=out)
    kind = logs.FixedLine(None, "cmworker.poller", "job_finished")
    writer = structlog.WriteLogger(file=out)
    deferred = logs._Deferred(interval=30.0)  # its thread waits 30 s: only flush() writes in this test
    for i in range(3):
        deferred.add(writer, (kind, "INFO", time.time(), "t", {"job_id": f"j{i}"}))
    assert out.getvalue() == ""
    deferred.flush()
    assert out.count == 1 and [line["params"]["job_id"] for line in lines(out)] == ["j0", "j1", "j2"]


def test_the_fixed_line_goes_where_structlog_is_pointed() -> None:
    logs.configure("sls", "INFO", stream=io.StringIO())
    fixed = logs.FixedLine(logs.get_logger("cmworker.poller"), "cmworker.poller", "job_finished")
    with capture_logs() as captured:
        fixed("info", job_id="j9", kind="ok")
    assert captured == [{"event": "job_finished", "job_id": "j9", "kind": "ok", "log_level": "info",
                         "origin": "cmworker.poller"}]


# -- the canonical line and the stats line, from a poller running in this process ------------------

def _poller(rt: EmbeddedRuntime, stats_interval: float | None,
            logger_levels: tuple[tuple[str, str], ...] = ()) -> Poller:
    service = Service(discover(rt.env(0)))
    flags = {"app": os.path.join(APPS, "misbehave.py"), "workers": 1, "limits.timeout": 5, "worker_nice": 0,
             "logging.stats_interval": "none" if stats_interval is None else stats_interval,
             "logging.logger_levels": dict(logger_levels)}
    return Poller(load_config(flags=flags, environ={}, cwd=APPS), service)


def _run_in_thread(poller: Poller) -> threading.Thread:
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    return thread


def _wait(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_one_canonical_job_finished_line_per_job() -> None:
    with EmbeddedRuntime(long_poll=0.5) as rt, capture_logs() as captured:
        poller = _poller(rt, stats_interval=None)
        thread = _run_in_thread(poller)
        ok, bad = rt.submit("echo", 1), rt.submit("exit3")
        _wait(lambda: rt.record.accepted(ok) and rt.record.accepted(bad))
        poller.stop()
        thread.join(30)
    finished = {e["job_id"]: e for e in captured if e["event"] == "job_finished"}
    assert set(finished) == {ok, bad}
    assert finished[ok]["kind"] == "ok" and finished[ok]["function"] == "echo"
    assert finished[bad]["kind"] == "worker_died" and finished[bad]["log_level"] == "warning"
    for key in ("worker_pid", "queued_s", "wall_s", "cpu_s", "result_bytes"):
        assert key in finished[ok]
    assert finished[ok]["result_bytes"] == len(json.dumps({"echo": 1, "job": ok}))


def test_stats_line_reports_the_replica() -> None:
    with EmbeddedRuntime(long_poll=0.5) as rt, capture_logs() as captured:
        poller = _poller(rt, stats_interval=0.2)
        thread = _run_in_thread(poller)
        job = rt.submit("echo", 1)
        _wait(lambda: rt.record.accepted(job))
        # A line may fall between the job's answer and its POST (still held); wait for one after both.
        _wait(lambda: any(e["event"] == "stats" and e["jobs"] == 1 and e["held"] == 0 for e in captured))
        poller.stop()
        thread.join(30)
    stats = next(e for e in captured if e["event"] == "stats" and e["jobs"] == 1 and e["held"] == 0)
    assert stats["jobs_by_outcome"] == {"ok": 1} and stats["workers_alive"] == 1
    assert stats["parent_rss_bytes"] > 0 and stats["respawns"] == 0


# -- everything `cmworker run` prints, in every scenario ---------------------------------------------

CONFIG = """
shutdown_grace = "200ms"
[limits]
timeout = "20s"
[functions.sleep_forever]
timeout = "300ms"
[functions.allocate_fast]
memory_limit = "200MiB"
[logging]
format = "sls"
"""


def _answered(rt: EmbeddedRuntime, job: str) -> None:
    _wait(lambda: rt.record.accepted(job) == 1, timeout=60)


def test_every_line_of_a_full_run_is_sls_and_no_secret_leaks(tmp_path: Path) -> None:
    (tmp_path / "cmworker.toml").write_text(CONFIG)
    with EmbeddedRuntime(long_poll=0.5, max_concurrent_tasks=2) as rt:
        out, err = tmp_path / "out", tmp_path / "err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen([sys.executable, "-m", "cmworker", "run", os.path.join(APPS, "misbehave.py"),
                                     "--workers", "2", "--config", str(tmp_path / "cmworker.toml")],
                                    env={**os.environ, **rt.env(0)}, stdout=o, stderr=e)
            try:
                jobs = [rt.submit(f, q) for f, q in [
                    ("echo", 1), ("raise_value_error", 2), ("segfault", None), ("exit3", None),
                    ("sleep_forever", None), ("allocate_fast", {"bytes": 1024 * 2**20}), ("nope", None),
                    ("leak_credentials", None), ("log_things", {"order": 7}), ("my_credentials", None)]]
                for job in jobs:
                    _answered(rt, job)
                last = rt.submit("neighbour", {"sleep": 30, "n": 0})  # still running at shutdown
                _wait(lambda: last in rt.record.held(0))
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 0
                _answered(rt, last)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        token = Path(rt.env(0)["MODULE_AUTH_TOKEN"]).read_text().strip()
        credentials = json.loads(rt.record.job(jobs[-1]).answer)
        job_secrets = [credentials["authHeader"].removeprefix("Bearer "), credentials["tempCredsAuthToken"]]
        assert all(len(s) > 8 for s in job_secrets)
    text = out.read_bytes().decode() + err.read_bytes().decode()
    parsed = []
    for raw in text.splitlines():
        line = json.loads(raw)  # every line is JSON ...
        assert line["type"] == "service.1" and line["level"] in LEVELS, raw  # ... and SLS
        parsed.append(line)
    job_lines = [p for p in parsed if p["origin"] == "cmworker.job"]
    assert job_lines and all(p["params"].get("job_id") or p["params"].get("pid") for p in job_lines)
    finished = [p for p in parsed if p["message"] == "job_finished"]
    assert {p["params"]["kind"] for p in finished} >= {"ok", "exception", "worker_died", "timeout",
                                                       "memory_limit", "unknown_function", "shutdown"}
    assert all(p["params"]["job_id"] for p in finished)
    assert any(p["message"] == "order_checked" and p["unsafeParams"] == {"order": 7} for p in parsed)
    assert any(p["message"] == "legacy warning about 7" and p["level"] == "WARN" for p in parsed)
    leaked = [p for p in parsed if "auth:" in p["message"]]
    assert leaked and all(logs.REDACTED in p["message"] for p in leaked)
    assert token not in text
    for secret in job_secrets:
        assert secret not in text


def test_a_flood_of_output_neither_blocks_the_job_nor_grows_the_parent() -> None:
    with EmbeddedRuntime(long_poll=0.5) as rt, capture_logs() as captured:
        poller = _poller(rt, stats_interval=None)
        thread = _run_in_thread(poller)
        warm = rt.submit("print_lines", {"n": 10})
        _wait(lambda: rt.record.accepted(warm))
        before = psutil.Process().memory_info().rss
        job = rt.submit("print_lines", {"n": 100_000})
        _wait(lambda: rt.record.accepted(job), timeout=90)
        after = psutil.Process().memory_info().rss
        poller.stop()
        thread.join(30)
    assert json.loads(rt.record.job(job).answer) == 100_000
    dropped = [e for e in captured if e["event"] == "output_dropped" and e["job_id"] == job]
    shown = [e for e in captured if e.get("job_id") == job and e["event"].startswith("line ")]
    assert dropped and dropped[0]["dropped_lines"] + len(shown) == 100_000
    assert after - before < 64 * 2**20


def test_logger_levels_apply_inside_the_workers() -> None:
    with EmbeddedRuntime(long_poll=0.5) as rt, capture_logs() as captured:
        poller = _poller(rt, stats_interval=None, logger_levels=(("app.legacy", "ERROR"),))
        thread = _run_in_thread(poller)
        job = rt.submit("log_things", {"order": 8})
        _wait(lambda: rt.record.accepted(job))
        _wait(lambda: any(e["event"] == "job_finished" for e in captured))
        poller.stop()
        thread.join(30)
    events = [e["event"] for e in captured]
    assert "order_checked" in events  # app.audit still logs at INFO
    assert not any("legacy warning" in e for e in events)  # app.legacy was raised to ERROR


def test_source_credentials_are_registered_as_secrets(tmp_path: Path) -> None:
    from cmworker.replica.intake import source_secrets

    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"warehouse": {"password": "hunter2-long", "keys": ["k-123456"]}}))
    assert sorted(source_secrets({"SOURCE_CREDENTIALS": str(creds)})) == ["hunter2-long", "k-123456"]
    assert source_secrets({}) == []


def test_a_token_that_comes_back_with_each_job_of_its_user_is_one_secret() -> None:
    secret = "shared-user-token-1234"
    count = len(SECRETS)
    logs.add_job_secret(secret)
    logs.add_job_secret(secret)  # two jobs of the same user
    try:
        assert len(SECRETS) == count + 1 and logs.redact(f"Bearer {secret}") == f"Bearer {logs.REDACTED}"
    finally:
        logs.remove_secret(secret)
    assert logs.redact(f"Bearer {secret}") == f"Bearer {secret}"


def test_a_jobs_credentials_stay_redacted_after_it_is_answered(tmp_path: Path) -> None:
    """A module global, a thread or a later job may print them at any time (tests/test_redaction.py shows
    it through a real replica); the poll thread registers what the intake found as job secrets."""
    ledger = Ledger()
    for n in range(50):  # every job its own credentials, as in Foundry
        body = json.dumps({"computeModuleJobV1": {"jobId": f"j{n}", "queryType": "echo", "query": {},
                                                  "authHeader": f"Bearer user-token-{n:04}",
                                                  "temporaryCredentialsAuthToken": f"temp-creds-{n:04}"}})
        intake = parse_job(body.encode(), ["echo"], ledger)
        assert isinstance(intake, Accepted) and ledger.accept(intake.job_id, intake.function)
        assert f"user-token-{n:04}" in intake.secrets and f"temp-creds-{n:04}" in intake.secrets
        for secret in intake.secrets:
            logs.add_job_secret(secret)
        ledger.release(f"j{n}")
    for n in range(50):
        assert logs.redact(f"user-token-{n:04} temp-creds-{n:04}") == f"{logs.REDACTED} {logs.REDACTED}"
