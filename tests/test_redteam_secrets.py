"""Red-team of "no secret reaches a log": paths and spellings found after the first hardening round.

Each test runs real processes (``cmworker run``, ``cmworker pipeline``, ``cmworker dev --pipeline``) against
the embedded runtime, shows a secret the way careless code would (tests/apps/redteam_leaky.py,
tests/apps/redteam_pipeline.py) and reads everything the process wrote. tests/test_redaction.py has the
first round's; what is deliberately not redacted (base64 and other transforms) is in docs/deploying.md.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS
from tests.redaction_harness import REDACTED, WAIT, leaks

pytestmark = pytest.mark.timeout(180)

PIPELINE_APP = os.path.join(APPS, "redteam_pipeline.py")


def nonce() -> str:
    return "n" + secrets.token_hex(8)


# -- pipeline mode: the supervisor writes every line, so it must know every secret ----------------------

@pytest.fixture(scope="module")
def runtime() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime(long_poll=0.5) as rt:
        yield rt


def run_loop(env: dict[str, str], how: str, n: str, *command: str) -> str:
    """Run the redteam pipeline loop to its end (``how`` it shows a secret); everything it wrote."""
    done = subprocess.run([sys.executable, "-m", "cmworker", *(command or ("pipeline",)), PIPELINE_APP,
                           "--log-format", "sls"],
                          env={**os.environ, **env, "REDTEAM_NONCE": n, "REDTEAM_HOW": how},
                          capture_output=True, timeout=WAIT)
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def redacted_lines(text: str, n: str) -> list[str]:
    return [line for line in text.splitlines() if n in line and REDACTED in line]


@pytest.mark.parametrize("how", ["token", "token_file", "client", "sources", "raise"])
def test_a_pipeline_loop_never_logs_its_token_the_client_secret_or_source_credentials(
        runtime: EmbeddedRuntime, tmp_path: Path, how: str) -> None:
    """The loop's lines are written by the supervisor, which registered no secret at all: the job token,
    ``CLIENT_SECRET`` and the sources' credentials the loop printed went to the log as they were."""
    client, password = f"client-\u00e9\"{secrets.token_hex(8)}", "pw-" + secrets.token_hex(8)
    env = {**runtime.pipeline_env({}), **runtime.sources_env({"warehouse": {"secrets": {"password": password}}}),
           "CLIENT_SECRET": client}
    token = Path(env["BUILD2_TOKEN"]).read_text().strip()
    n = nonce()
    text = run_loop(env, how, n)
    assert n in text, text[-3000:]
    assert leaks(text, [token, client, password], reprs=True) == []
    assert redacted_lines(text, n), text[-3000:]


def test_dev_pipeline_never_logs_the_token_it_emulates(tmp_path: Path) -> None:
    """``cmworker dev --pipeline`` supervises the loop the same way, with a token of its own runtime."""
    out = tmp_path / "token"
    n = nonce()
    text = run_loop({"REDTEAM_OUT": str(out)}, "token_file", n, "dev", "--pipeline")
    token = out.read_text()
    assert len(token) > 20 and n in text, text[-3000:]
    assert leaks(text, [token], reprs=True) == []
    assert redacted_lines(text, n), text[-3000:]
