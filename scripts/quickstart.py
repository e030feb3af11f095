"""Start `cmworker dev` on examples/quickstart, call one function for each outcome, print the answers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "quickstart"
CALLS: list[tuple[str, Any, str]] = [
    ("add", {"a": 1, "b": 2}, "a success"),
    ("divide", {"a": 1, "b": 0}, "the function raises"),
    ("nap", {"seconds": 10}, "it runs past its 1 s timeout"),
    ("crash", {}, "its worker segfaults"),
    ("hog", {"mib": 1024}, "it allocates past its 256 MiB limit"),
    ("add", {"a": 20, "b": 22}, "and the pool is still fine"),
]


def main() -> int:
    from cmworker import Client, JobError

    # A terminal closed (SIGHUP) or a kill (SIGTERM) ends the script through the ``finally`` below, which
    # stops the dev server and removes the directory: it holds the runtime's announcement and caller token.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    state = tempfile.mkdtemp(prefix="cmworker-quickstart-")
    env = {**os.environ, "CMWORKER_STATE_DIR": state}
    with open(Path(state) / "dev.log", "wb") as log:
        dev = subprocess.Popen([sys.executable, "-m", "cmworker", "dev"], cwd=EXAMPLE, env=env,
                               stdout=subprocess.DEVNULL, stderr=log)
    try:
        client = _connect(Client, state, dev)
        print(f"cmworker dev is serving {EXAMPLE / 'app.py'}\n")
        for function, payload, what in CALLS:
            print(f"$ cmworker call {function} '{json.dumps(payload)}'    # {what}")
            try:
                print(f"  -> {json.dumps(client.call(function, payload, timeout=60))}")
            except JobError as exc:
                print(f"  -> {exc.kind}: {str(exc).splitlines()[0]}")
        print("\nEvery call got exactly one answer. Keep it running with: cd examples/quickstart && cmworker dev")
        return 0
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(30)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.wait()
        shutil.rmtree(state, ignore_errors=True)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _connect(client_class: Any, state: str, dev: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + 60
    while True:
        if dev.poll() is not None:
            sys.stderr.write((Path(state) / "dev.log").read_text())
            raise SystemExit("cmworker dev exited before it was ready")
        try:
            os.environ["CMWORKER_STATE_DIR"] = state
            client = client_class()
            client.call("add", {"a": 0, "b": 0}, timeout=30)
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
