"""Job bodies that the parent (reading the envelope's ends) and the worker (parsing it in full) could read
differently, and bodies that name their job in ways a URL cannot carry: a real ``cmworker run`` against the
embedded runtime over loopback HTTPS, the bytes of each GET body the test's own (``pool_harness.JobBodies``).

The promises checked: an answer goes only to the job the body is (as ``json.loads`` reads it), never to an
id found elsewhere in it; a body that cannot be answered is refused with a line naming why; the replica
keeps serving either way.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cmworker.app.envelope import FULL_PARSE_BELOW
from cmworker.runtime.embedded import EmbeddedRuntime
from cmworker.runtime.state import JobSnapshot
from tests.pool_harness import APPS, JobBodies, stop_process

pytestmark = pytest.mark.timeout(180)
WAIT = 30.0
PAD = "p" * FULL_PARSE_BELOW  # a query this long makes the parent read the envelope from its ends
DEEP = "[" * 1500 + "]" * 1500  # deeper than json parses, in a body short enough to be parsed in full


@dataclass
class Served:
    rt: EmbeddedRuntime
    raw: JobBodies
    proc: subprocess.Popen[bytes]
    log: Path
    cases: Iterator[int]

    def run(self, make: Callable[[str], bytes]) -> str:
        """Hand out one job whose GET body is ``make(job_id)``, then a probe; the case's job id, once the
        probe after it is answered (one worker: the case is settled by then)."""
        case = next(self.cases)
        self.raw.bodies[case] = lambda envelope: make(envelope["computeModuleJobV1"]["jobId"])
        job_id, probe = self.rt.store.submit([("echo", {"case": case}, "rt"), ("echo", "probe", "rt")])
        [snap] = self.rt.store.wait_finished([probe], WAIT)
        assert snap is not None and snap.status == "done", f"the probe after the case was not answered:\n{self.tail()}"
        # Not even on its way out: a thread that died makes the replica drain and exit, serving meanwhile.
        log = self.log.read_text(errors="replace")
        assert self.proc.poll() is None and '"message": "stopping' not in log, self.tail()
        return job_id

    def answered_once(self, job_id: str) -> Any:
        [snap] = self.rt.store.wait_finished([job_id], WAIT)
        assert snap is not None and snap.answer is not None, f"job {job_id} was not answered:\n{self.tail()}"
        assert self.rt.record.accepted(job_id) == 1, self.rt.record.result_posts(job_id)
        return json.loads(snap.answer)

    def unanswered(self, job_id: str) -> JobSnapshot | None:
        return self.rt.record.job(job_id)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("redteam")
    (tmp / "cmworker.toml").write_text('[limits]\ntimeout = "20s"\n')
    # cap off: a job refused as unanswerable stays held by the runtime, and must not block the next ones.
    with EmbeddedRuntime(long_poll=0.5, cap=False) as rt, open(tmp / "run.log", "wb") as log:
        listener = rt.module_listener(0)
        raw = listener.app = JobBodies(listener.app)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cmworker", "run", os.path.join(APPS, "misbehave.py"), "--workers", "1",
             "--config", str(tmp / "cmworker.toml")],
            env={**os.environ, **rt.env(0)}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield Served(rt, raw, proc, tmp / "run.log", itertools.count())
        finally:
            stop_process(proc, WAIT)


def v1(*members: str, after: str = "") -> bytes:
    """An envelope whose computeModuleJobV1 has these members (JSON text) in this order; ``after``: more
    top-level members after it."""
    return ('{"type": "computeModuleJobV1", "computeModuleJobV1": {' + ", ".join(members) + "}" + after
            + "}").encode()


def member(key: str, value: Any) -> str:
    return f"{json.dumps(key)}: {json.dumps(value)}"


# -- which job: an answer goes to the body's own id or to none ------------------------------------------


def test_a_job_id_that_is_not_unicode_is_refused_and_the_replica_keeps_serving(served: Served) -> None:
    # "\ud800" is valid JSON, but a lone surrogate has no UTF-8 form: no URL can name the job. Its POST
    # raised UnicodeEncodeError in a poster thread, which ended the replica.
    bad = v1(member("jobId", "\ud800"), member("queryType", "echo"), member("query", 1))
    job_id = served.run(lambda jid: bad)
    assert served.rt.record.result_posts(job_id) == []
    assert "its jobId cannot be written in a URL" in served.tail()


def test_an_unreadable_body_is_not_answered_under_an_id_from_its_query(served: Served) -> None:
    # Too deeply nested for json, so the parent looks for the id in the raw bytes; the first "jobId" there
    # was the query's, naming another job, which then got this job's error.
    other = str(uuid.uuid4())
    def make(jid: str) -> bytes:
        query = f'{{{member("jobId", other)}, "deep": {DEEP}}}'
        return v1(member("queryType", "echo"), '"query": ' + query, member("jobId", jid))
    job_id = served.run(make)
    assert served.rt.record.result_posts(other) == []
    assert served.rt.record.result_posts(job_id) == []
    assert "names more than one jobId" in served.tail()


def test_an_unreadable_body_with_its_id_first_is_answered_under_that_id(served: Served) -> None:
    other = str(uuid.uuid4())
    def make(jid: str) -> bytes:
        query = f'{{{member("jobId", other)}, "deep": {DEEP}}}'
        return v1(member("jobId", jid), member("queryType", "echo"), '"query": ' + query)
    job_id = served.run(make)
    payload = served.answered_once(job_id)
    assert payload["kind"] == "invalid_input" and "nested" in payload["error"]
    assert served.rt.record.result_posts(other) == []


@pytest.mark.parametrize("arrange", [
    # The tail's "jobId" is a later top-level member's: the parent took that id, and the worker's
    # refusal (it read the job's own id in full) went there; the job itself was never answered.
    lambda jid, other: v1(member("queryType", "echo"), member("query", PAD), member("jobId", jid),
                          after=f', "extra": {{"a": 1, {member("jobId", other)}}}'),
    # The tail's "queryType" is the later member's: the parent answered `unknown_function` at once.
    lambda jid, other: v1(member("jobId", jid), member("query", PAD), member("queryType", "echo"),
                          after=', "extra": {"queryType": "no_such_function"}'),
], ids=["jobId", "queryType"])
def test_a_member_after_the_job_does_not_name_its_id_or_function(
        served: Served, arrange: Callable[[str, str], bytes]) -> None:
    other = str(uuid.uuid4())
    job_id = served.run(lambda jid: arrange(jid, other))
    assert served.answered_once(job_id) == {"echo": PAD, "job": job_id}
    assert served.rt.record.result_posts(other) == []
