"""What loading an app tells its author: two functions of one name are an error naming both, threads
started by the import are warned of, an import error shows the user's frames only, and ``cmworker config``
shows the limits set in the decorator beside the file's and warns of tables that match no function."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.dev_harness import ROOT, dev_server


def _cmworker(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cmworker", *args], cwd=tmp, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT),
                                           "CMWORKER_STATE_DIR": str(tmp / "state")})


DUPLICATE = '''
import cmworker


@cmworker.function
def total(context, event) -> int:
    return 1


@cmworker.function(name="total")
def other_total(context, event) -> int:
    return 2
'''


def test_two_functions_of_one_name_are_an_error_naming_both(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(DUPLICATE)
    app = tmp_path / "app.py"
    served = _cmworker(tmp_path, "dev", "app.py", "--log-format", "console")
    assert served.returncode == 2
    message = f"two functions are registered as 'total': total at {app}:5 and other_total at {app}:10"
    assert message in served.stderr
    schema = _cmworker(tmp_path, "schema", "app.py")
    assert schema.returncode == 1 and message in schema.stderr


def test_an_import_error_shows_the_users_frames_only(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("def load():\n    raise KeyError('settings')\n")
    (tmp_path / "app.py").write_text("import helper\n\nhelper.load()\n")
    served = _cmworker(tmp_path, "dev", "app.py", "--log-format", "console")
    assert served.returncode == 2
    frames = re.findall(r'File "([^"]+)", line \d+', served.stderr)
    assert frames == [str(tmp_path / "app.py"), str(tmp_path / "helper.py")], served.stderr
    assert "KeyError: 'settings'" in served.stderr


THREADS = '''
import threading
import time
import cmworker

threading.Thread(target=lambda: time.sleep(3600), name="cache-refresher", daemon=True).start()


@cmworker.function
def alive(context, event) -> list:
    return [t.name for t in threading.enumerate()]
'''


def test_threads_alive_after_the_import_are_warned_of_naming_them(tmp_path: Path) -> None:
    with dev_server(tmp_path, THREADS) as dev:
        console = dev.wait_for("thread(s) while it was imported")
        assert "the app started 1 thread(s) while it was imported ('cache-refresher'); they do not run in " \
               "the workers, which are forked from this process, and a fork copies only the thread that " \
               "forks" in console
        assert "cache-refresher" not in dev.call("alive")  # what the warning says


LIMITS = '''
import cmworker


@cmworker.function(timeout="5s", memory_limit="1GiB")
def quick(context, event) -> int:
    return 1


@cmworker.function
def plain(context, event) -> int:
    return 2
'''

CONFIG = '''
app = "app.py"

[limits]
timeout = "60s"

[functions.plain]
memory_limit = "300MiB"

[functions.plian]
timeout = "1s"

[functions.quik]
timeout = "2s"
'''


def test_cmworker_config_shows_decorator_limits_with_their_source_and_warns_of_unmatched_tables(
        tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(LIMITS)
    (tmp_path / "cmworker.toml").write_text(CONFIG)
    shown = _cmworker(tmp_path, "config")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    section = out[out.index("# [functions.plain]"):]
    assert re.search(r'#   memory_limit = "300MiB" +# functions\.plain\.memory_limit, file .*cmworker\.toml', section)
    assert re.search(r'#   timeout = "1m" +# limits\.timeout, file .*cmworker\.toml', section)
    section = out[out.index("# [functions.quick]"):]
    assert re.search(r'#   timeout = "5s" +# declared by @cmworker\.function on \'quick\'', section)
    assert re.search(r'#   memory_limit = "1GiB" +# declared by @cmworker\.function on \'quick\'', section)
    assert re.search(r'#   max_result_size = "32MiB" +# limits\.max_result_size, default', section)
    assert "[functions.plian] (file " in shown.stderr
    assert "the app registers no function 'plian'; did you mean 'plain'?" in shown.stderr
    assert "the app registers no function 'quik'; did you mean 'quick'?" in shown.stderr  # every one named
    assert shown.stderr.startswith("cmworker config: warning: ")
