"""The official SDK's source helpers beside cmworker: an app using ``compute_modules.sources`` (v1) and
``compute_modules.sources_v2.get_source`` served by ``cmworker run``, the embedded runtime writing the
sources files Foundry would mount. The v2 test calls through the source's own HTTPS client, verified
with the runtime's CA, and needs the SDK's ``sources`` extra (``external-systems``, ``pyyaml``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import cmworker_run, decoded_answer

pytestmark = pytest.mark.timeout(90)
WAIT = 30.0
CONFIG = {"region": "eu-west", "units": "metric"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedRuntime, Path, str]]:
    tmp = tmp_path_factory.mktemp("sdk_sources")
    with EmbeddedRuntime(long_poll=0.5) as rt:
        secret = rt.oauth.job_token()  # a credential the "external system" (the runtime itself) accepts
        env = rt.sources_env({"weather": {"secrets": {"apiKey": secret}, "url": f"https://{rt.foundry_host}",
                                          "configuration": CONFIG}})
        with cmworker_run(rt, tmp, "", app="sdk_sources_app.py", workers=1, env=env):
            yield rt, tmp / "run.log", secret




def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_sdk_v1_source_helpers_work_in_a_cmworker_function(served: tuple[EmbeddedRuntime, Path, str]) -> None:
    rt, log, secret = served
    answer = decoded_answer(rt, rt.submit("sources_v1"))
    assert answer == {"secret": _digest(secret), "config": CONFIG, "context_secret": _digest(secret)}
    deadline = time.monotonic() + WAIT
    while "the secret is" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = log.read_text()
    assert "the secret is <redacted>" in text and secret not in text


def test_sdk_v2_get_source_works_in_a_cmworker_function(served: tuple[EmbeddedRuntime, Path, str]) -> None:
    pytest.importorskip("external_systems")
    pytest.importorskip("yaml")
    rt, _, secret = served
    answer = decoded_answer(rt, rt.submit("sources_v2"))
    assert answer["secret"] == _digest(secret)
    assert answer["url"] == f"https://{rt.foundry_host}"
    assert answer["status"] == 200 and answer["subject"] == "pipeline-job"
