"""A real ``cmworker run`` serving tests/apps/leaky.py, whose jobs carry the credentials a test chooses.

``JobBodies`` wraps one replica's real app: the runtime hands out real jobs (held, answerable exactly
once), but the GET body of a job whose query has a ``"case"`` is made by the test from the real one, so
a test can give a job any ``authHeader``, or send a body with no usable ``jobId`` at all. Everything the
process writes (stdout and stderr, separately) is kept in files the test reads.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmworker.logs import REDACTED
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS, JobBodies, MakeBody, stop_process

WAIT = 60.0


def spellings(secret: str, *, reprs: bool = False) -> dict[str, str]:
    """How a secret reads in a log line: as it is, JSON-escaped, and JSON-escaped to ASCII; with ``reprs``,
    also as Python shows it inside the repr of a str or of its UTF-8 bytes, and those JSON-escaped."""
    spelled = {"raw": secret, "json": json.dumps(secret, ensure_ascii=False)[1:-1], "ascii": json.dumps(secret)[1:-1]}
    if reprs:
        spelled["repr"] = repr('"' + secret)[2:-1]
        spelled["bytes_repr"] = repr(b'"' + secret.encode())[3:-1]
        spelled["repr_ascii"] = json.dumps(spelled["repr"])[1:-1]
        spelled["bytes_repr_ascii"] = json.dumps(spelled["bytes_repr"])[1:-1]
    return spelled


def leaks(text: str, secrets: list[str], *, reprs: bool = False) -> list[tuple[str, str]]:
    """(secret, spelling) for every spelling of every secret found in ``text``."""
    found = []
    for secret in secrets:
        spelled = {text: name for name, text in spellings(secret, reprs=reprs).items()}  # one name per spelling
        found += [(secret, name) for spelling, name in spelled.items() if spelling in text]
    return found


def with_credentials(**credentials: str) -> MakeBody:
    """The real body, with these credentials first in its job (so that any excerpt of it shows them)."""
    def make(envelope: dict[str, Any]) -> bytes:
        job = envelope["computeModuleJobV1"]
        envelope["computeModuleJobV1"] = {**credentials, **{k: v for k, v in job.items() if k not in credentials}}
        return json.dumps(envelope).encode()
    return make


@dataclass
class Replica:
    rt: EmbeddedRuntime
    bodies: JobBodies
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    cases: Iterator[int] = field(default_factory=itertools.count)

    def submit(self, steps: list[list[str]], make: MakeBody | None = None, *, nonce: str = "",
               function: str = "act") -> str:
        """Queue one job of ``function`` running ``steps``; ``make`` makes its GET body."""
        case = next(self.cases)
        if make is not None:
            self.bodies.bodies[case] = make
        return self.rt.submit(function, {"case": case, "steps": steps, "nonce": nonce})

    def answer(self, job_id: str) -> bytes:
        [snap] = self.rt.store.wait_finished([job_id], WAIT)
        assert snap is not None and snap.answer is not None, f"job {job_id} was not answered:\n{self.tail()}"
        return snap.answer

    def text(self) -> str:
        """Everything the process wrote so far, stdout then stderr."""
        return self.out.read_bytes().decode(errors="replace") + self.err.read_bytes().decode(errors="replace")

    def wait_for(self, marker: str, count: int = 1, timeout: float = WAIT) -> None:
        """Until ``marker`` is ``count`` times in the output: what a job wrote reaches the log a little
        after its answer."""
        deadline = time.monotonic() + timeout
        while self.text().count(marker) < count:
            assert self.proc.poll() is None, f"cmworker run exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"{marker!r} did not reach the log:\n{self.tail()}"
            time.sleep(0.02)

    def lines_with(self, marker: str) -> list[dict[str, Any]]:
        """The SLS lines whose text holds ``marker``, decoded."""
        return [json.loads(line) for line in self.out.read_text(errors="replace").splitlines() if marker in line]

    def tail(self) -> str:
        return self.text()[-4000:]


@contextmanager
def serving(tmp: Path, *, log_format: str = "sls", env: dict[str, str] | None = None,
            workers: int = 1, app: str = "leaky.py") -> Iterator[Replica]:
    """``cmworker run tests/apps/leaky.py`` (or ``app``, another of tests/apps); ``cap=False``: a job whose
    body has no usable id stays held forever, and must not keep the next ones from being handed out."""
    config = tmp / "cmworker.toml"
    config.write_text(f'[limits]\ntimeout = "20s"\n[logging]\nformat = "{log_format}"\n')
    with EmbeddedRuntime(long_poll=0.5, cap=False) as rt, open(tmp / "out", "wb") as out, \
            open(tmp / "err", "wb") as err:
        listener = rt.module_listener(0)  # the seam tests/test_fuzz.py uses too: the bytes of GET bodies are ours
        bodies = listener.app = JobBodies(listener.app)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cmworker", "run", os.path.join(APPS, app), "--workers", str(workers),
             "--config", str(config)],
            env={**os.environ, **rt.env(0), **(env or {})}, stdout=out, stderr=err, start_new_session=True)
        try:
            yield Replica(rt, bodies, proc, tmp / "out", tmp / "err")
        finally:
            stop_process(proc, WAIT)


__all__ = ["REDACTED", "WAIT", "JobBodies", "Replica", "leaks", "serving", "spellings", "with_credentials"]
