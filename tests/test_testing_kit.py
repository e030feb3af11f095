"""``cmworker.testing``: an app served with real workers on the embedded runtime, for a user's tests.

The module-level fixture below is used exactly as a user's test file would use it; ``served`` is the
context manager behind it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

import cmworker
import cmworker.testing
from tests.pool_harness import APPS, WAIT, descendants, wait_gone

pytestmark = pytest.mark.timeout(120)

client = cmworker.testing.fixture(os.path.join(APPS, "misbehave.py"),
                                  settings={"limits.timeout": "500ms", "limits.kill_grace": "50ms", "worker_nice": 0})


def test_the_fixture_hands_back_a_client_of_the_served_app(client: cmworker.Client) -> None:
    answer = client.call("echo", {"x": 1}, timeout=WAIT)
    assert answer["echo"] == {"x": 1}
    assert {f["functionName"] for f in client.functions()} >= {"echo", "segfault", "sleep_forever"}


def test_jobs_run_in_real_worker_processes(client: cmworker.Client) -> None:
    worker = client.call("pid", timeout=WAIT)
    assert worker != os.getpid()
    assert psutil.Process(worker).ppid() != os.getpid()  # forked by the worker template, not by the test
    assert "misbehave" not in sys.modules  # the test's process never imported the app


def test_a_crash_and_a_timeout_are_real_and_the_app_keeps_serving(client: cmworker.Client) -> None:
    with pytest.raises(cmworker.WorkerDied) as died:
        client.call("segfault", timeout=WAIT)
    assert died.value.signal == "SIGSEGV"
    with pytest.raises(cmworker.JobTimeout):  # the settings given to the fixture are in force
        client.call("sleep_forever", timeout=WAIT)
    assert client.call("echo", "still here", timeout=WAIT)["echo"] == "still here"


def test_served_leaves_no_process_behind() -> None:
    before = descendants()
    with cmworker.testing.served(os.path.join(APPS, "misbehave.py"), workers=1,
                                 settings={"worker_nice": 0}) as served:
        assert served.call("echo", 7, timeout=WAIT)["echo"] == 7
        assert descendants() - before  # the template and its worker
    wait_gone(descendants() - before)


def test_an_app_that_cannot_be_served_fails_on_entry_saying_why() -> None:
    with pytest.raises(cmworker.testing.ServingFailed, match="broken at import time"), \
            cmworker.testing.served(os.path.join(APPS, "crash_on_import.py"), workers=1):
        pytest.fail("served an app that cannot be imported")


def test_the_cmworker_toml_beside_the_app_is_used(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import cmworker\n\n@cmworker.function\ndef nap(context, event):\n"
                                     "    import time\n    time.sleep(30)\n")
    (tmp_path / "cmworker.toml").write_text('[limits]\ntimeout = "200ms"\nkill_grace = "50ms"\n')
    with cmworker.testing.served(tmp_path / "app.py", workers=1, settings={"worker_nice": 0}) as served, \
            pytest.raises(cmworker.JobTimeout):
        served.call("nap", timeout=WAIT)
