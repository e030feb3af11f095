"""The official Python SDK (``foundry-compute-modules``) serves an app, unchanged, against the emulator.

This is the emulator's fidelity check: the SDK is a real client written against the real runtime.
Each test runs a tiny SDK app as a subprocess with the environment the emulator hands a replica.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from cmworker.errors import JobDropped, RemoteException, UnknownFunction
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.runtime.helpers import DEADLINE, wait_until

pytest.importorskip("compute_modules")

SDK_APP = textwrap.dedent('''
    import time
    from typing import TypedDict

    from compute_modules.annotations import function
    from compute_modules.context import QueryContext


    class AddPayload(TypedDict):
        x: int
        y: int


    @function
    def add(context: QueryContext, event: AddPayload) -> int:
        return event["x"] + event["y"]


    @function
    def whoami(context: QueryContext, event: AddPayload) -> str:
        return context.jobId


    @function
    def boom(context, event):
        raise ValueError("boom on " + repr(event))


    @function
    def slow(context, event):
        time.sleep(60)
        return "too late"
''')


@pytest.fixture
def sdk_app(tmp_path: Path) -> Path:
    path = tmp_path / "app.py"
    path.write_text(SDK_APP)
    return path


@contextmanager
def sdk_process(runtime: EmbeddedRuntime, app: Path, replica: int = 0) -> Iterator[subprocess.Popen[bytes]]:
    """Run the SDK app for ``replica``; always kill its whole process group (the SDK forks a pool)."""
    env = {**os.environ, **runtime.env(replica)}
    process = subprocess.Popen([sys.executable, str(app)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process
    finally:
        kill_group(process)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(DEADLINE)


def test_official_sdk_serves_an_app_unchanged(make_runtime: Callable[..., EmbeddedRuntime], sdk_app: Path) -> None:
    runtime = make_runtime(long_poll=1.0)
    client = runtime.client()
    with sdk_process(runtime, sdk_app):
        assert client.call("add", {"x": 2, "y": 40}, timeout=DEADLINE) == 42
        job_id = client.run("whoami", {"x": 0, "y": 0})
        assert client.get_result(job_id, timeout=DEADLINE) == job_id  # the job's context reached it
        with pytest.raises(RemoteException, match="boom on"):
            client.call("boom", {"a": 1}, timeout=DEADLINE)
        with pytest.raises(UnknownFunction):
            client.call("no_such_function", {}, timeout=DEADLINE)
        # Its start-up: the schemas it inferred were posted and accepted, then one restart notification.
        schemas = runtime.record.schemas(0)
        assert schemas is not None
        assert [schema["functionName"] for schema in schemas] == ["add", "whoami", "boom", "slow"]
        add = schemas[0]
        assert [field["name"] for field in add["inputs"]] == ["x", "y"]
        assert add["output"]["single"]["dataType"]["type"] == "integer"
        assert [schema["functionName"] for schema in client.functions()] == ["add", "boom", "slow", "whoami"]
        assert runtime.record.restart_notifications(0) == [[]]


def test_sdk_killed_mid_job_and_restarted_gets_the_job_dropped(
        make_runtime: Callable[..., EmbeddedRuntime], sdk_app: Path) -> None:
    runtime = make_runtime(long_poll=1.0, max_concurrent_tasks=2)
    client = runtime.client()
    with sdk_process(runtime, sdk_app) as first:
        stuck = client.run("slow", {})
        wait_until(lambda: client.status(stuck) == "running", what="the SDK to take the slow job")
        kill_group(first)  # the container dies mid-job: no result will ever come
    with sdk_process(runtime, sdk_app):
        # On start the SDK posts a restart notification; the runtime drops what the old one held.
        with pytest.raises(JobDropped):
            client.get_result(stuck, timeout=DEADLINE)
        assert runtime.record.restart_notifications(0) == [[], [stuck]]
        assert client.call("add", {"x": 1, "y": 1}, timeout=DEADLINE) == 2
