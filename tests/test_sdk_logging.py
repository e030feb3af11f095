"""The official SDK's loggers inside a function served by ``cmworker run``: each record is written once, as
an SLS line tagged with the job, whichever loggers the app mixes (a real replica on the embedded runtime)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import cmworker_run, decoded_answer

pytestmark = pytest.mark.timeout(90)
WAIT = 30.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedRuntime, Path]]:
    tmp = tmp_path_factory.mktemp("sdk_logging")
    with EmbeddedRuntime(long_poll=0.5) as rt, cmworker_run(rt, tmp, "", app="sdk_logging_app.py", workers=1):
        yield rt, tmp / "run.log"




def _lines(log: Path, text: str) -> list[dict[str, Any]]:
    """Every line of the replica's output that mentions ``text``, parsed (each must be SLS JSON)."""
    found = []
    for raw in log.read_text().splitlines():
        if text in raw:
            found.append(json.loads(raw))
    return found


def _settle(log: Path, text: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and len(_lines(log, text)) < count:
        time.sleep(0.05)
    time.sleep(0.3)  # a second copy, if there were one, is written right after the first
    return _lines(log, text)


def test_each_sdk_record_is_one_sls_line_with_the_job_id(served: tuple[EmbeddedRuntime, Path]) -> None:
    rt, log = served
    job = rt.submit("sdk_logs", {"n": 7})
    assert decoded_answer(rt, job) == 7
    for text in ("from the import-time logger 7", "from a logger made in the job", "bound"):
        lines = [line for line in _settle(log, text, 1) if line.get("message") == text]
        assert len(lines) == 1, (text, lines)
        line = lines[0]
        assert line["type"] == "service.1"
        assert line["params"]["job_id"] == job
        assert line["params"]["function"] == "sdk_logs"
        assert line["params"]["process_id"] not in ("-1", -1)
        assert line["origin"].startswith("sdk_app.")
    warned = _lines(log, "from a logger made in the job")[0]
    assert warned["level"] == "WARN"
    assert warned["unsafeParams"]["order"] == 7
    bound = next(line for line in _lines(log, '"bound"') if line.get("message") == "bound")
    assert bound["unsafeParams"]["region"] == "eu"
    assert bound["unsafeParams"]["customer"] == "ada"


def test_sdk_and_cmworker_loggers_in_one_function_each_write_once(served: tuple[EmbeddedRuntime, Path]) -> None:
    rt, log = served
    job = rt.submit("both_loggers", {"n": 3})
    assert decoded_answer(rt, job) == 3
    for text in ("from cmworker's logger", "from the SDK's logger"):
        lines = _settle(log, text, 1)
        assert len(lines) == 1, (text, lines)
        assert lines[0]["params"]["job_id"] == job
