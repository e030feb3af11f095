"""Red-team of "no secret reaches a log": paths and spellings found after the first hardening round.

Each test runs real processes (``cmworker run``, ``cmworker pipeline``, ``cmworker dev --pipeline``) against
the embedded runtime, shows a secret the way careless code would (tests/apps/redteam_leaky.py,
tests/apps/redteam_pipeline.py) and reads everything the process wrote. tests/test_redaction.py has the
first round's; what is deliberately not redacted (base64 and other transforms) is in docs/deploying.md.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS
from tests.redaction_harness import REDACTED, WAIT, Replica, leaks, serving, with_credentials

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


@pytest.mark.parametrize("how", ["token", "token_file", "client", "sources", "executor", "raise"])
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


# -- a job's output: escapes and encodings of the first round's missing -------------------------------

CLIENT_SECRET = "cl+ent/s\u00e9cr=t&" + secrets.token_hex(6)  # reserved in URLs, non-ASCII


def odd() -> str:
    """Quotes, a backslash, non-ASCII of two bytes and astral, and what a URL must escape."""
    return f"q\"'b\\s\u00e9{secrets.token_hex(6)}\U0001f511 +/="


def other_spellings(secret: str) -> dict[str, str]:
    """Spellings tests/redaction_harness.py's ``spellings`` has not: Python's ``ascii()`` (``%a``, ``!a``),
    percent-encoded as ``urllib.parse`` does it, and each of these JSON-escaped as an SLS line has it."""
    spelled = {"ascii": ascii('"' + secret)[2:-1], "ascii_double_quoted": ascii("'" + secret)[2:-1],
               "url": quote(secret, safe=""), "url_path": quote(secret), "url_form": quote_plus(secret)}
    return {**spelled, **{f"{name}_json": json.dumps(text)[1:-1] for name, text in spelled.items()}}


def other_leaks(text: str, secret: str) -> list[str]:
    return [name for name, spelled in other_spellings(secret).items() if spelled != secret and spelled in text]


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    with serving(tmp_path_factory.mktemp("redteam"), app="redteam_leaky.py",
                 env={"CLIENT_ID": "the-client", "CLIENT_SECRET": CLIENT_SECRET}) as served:
        yield served


def show(replica: Replica, how: str, what: str, secret: str) -> str:
    """Run one job whose token is ``secret``; it shows ``what`` ``how``. Its nonce, once its line is in the log."""
    n = nonce()
    replica.answer(replica.submit([[how, what]], with_credentials(authHeader=f"Bearer {secret}"), nonce=n))
    replica.wait_for(n)
    return n


@pytest.mark.parametrize("how", ["ascii", "percent_a"])
def test_a_secret_escaped_by_ascii_never_reaches_the_log(replica: Replica, how: str) -> None:
    """``ascii(token)`` and ``log.warning("%a", token)`` write non-ASCII as ``\\xe9``/``\\U0001f511``: a spelling
    neither JSON (``\\u00e9``) nor ``repr`` (as is) gives."""
    secret = odd()
    n = show(replica, how, "token", secret)
    text = replica.text()
    assert other_leaks(text, secret) == [] and leaks(text, [secret], reprs=True) == []
    assert any(REDACTED in json.dumps(line) for line in replica.lines_with(n))


@pytest.mark.parametrize(("how", "what"), [("url", "token"), ("url_plus", "token"), ("url", "client"),
                                           ("url_plus", "client")])
def test_a_secret_percent_encoded_in_a_url_or_form_never_reaches_the_log(replica: Replica, how: str,
                                                                         what: str) -> None:
    """A token in a query string, a client secret in a form body: ``%2B``, ``%2F``, ``%C3%A9``."""
    secret = odd()
    n = show(replica, how, what, secret)
    text = replica.text()
    assert other_leaks(text, secret) == [] and other_leaks(text, CLIENT_SECRET) == []
    assert any(REDACTED in line["message"] for line in replica.lines_with(n))


@pytest.mark.parametrize("how", ["carriage_return", "nul", "ansi", "not_utf8", "split_writes", "json_list",
                                 "stderr_exception"])
def test_control_bytes_bad_utf8_and_split_writes_around_a_secret_do_not_hide_it(replica: Replica,
                                                                                how: str) -> None:
    """``\\r`` progress output, NUL, ANSI colour, bytes that are not UTF-8 next to the secret, the secret
    written in three flushed pieces of one line: the line the parent logs still has it whole, redacted."""
    secret = odd()
    n = show(replica, how, "token", secret)
    text = replica.text()
    assert leaks(text, [secret], reprs=True) == [] and other_leaks(text, secret) == []
    assert any(REDACTED in line["message"] for line in replica.lines_with(n))


def test_a_forged_stack_dump_of_a_timed_out_job_is_redacted_in_its_job_finished_line(replica: Replica) -> None:
    """A job writes a faulthandler-shaped dump naming its token to stderr, then runs past its timeout: the
    parent takes the dump as the job's stack, for the answer (the caller's) and the ``stacktrace`` and
    ``where`` of its job_finished line (the log's)."""
    secret = "tok-" + secrets.token_urlsafe(18)
    n = nonce()
    job = replica.submit([], with_credentials(authHeader=f"Bearer {secret}"), nonce=n, function="stuck")
    answer = json.loads(replica.answer(job))
    assert answer["kind"] == "timeout" and secret in answer["stack"]  # the caller's own
    replica.wait_for(f'"{job}", "function": "stuck"')
    [line] = [line for line in replica.lines_with(job) if line["message"] == "job_finished"]
    assert f"{n}_{REDACTED}" in line["stacktrace"]
    assert leaks(replica.text(), [secret], reprs=True) == []


# -- the health status: cmworker health's output is the probe's, and lands in the pod's events ---------

def test_the_health_status_and_probe_never_show_a_secret_quoted_by_the_app(tmp_path: Path) -> None:
    """An app whose import fails quoting ``CLIENT_SECRET``: the log line is redacted, and the reason kept in
    the status file, which ``cmworker health`` prints for the container's probe, must be too."""
    client = "client-" + secrets.token_hex(8)
    status = tmp_path / "health.json"
    with EmbeddedRuntime(long_poll=0.5) as rt:
        env = {**os.environ, **rt.env(0), "CLIENT_SECRET": client, "CMWORKER_HEALTH_FILE": str(status)}
        run = subprocess.run([sys.executable, "-m", "cmworker", "run", os.path.join(APPS, "redteam_import_leak.py")],
                             env=env, capture_output=True, timeout=WAIT)
        probe = subprocess.run([sys.executable, "-m", "cmworker", "health"], env=env, capture_output=True,
                               timeout=WAIT)
    log = (run.stdout + run.stderr).decode(errors="replace")
    assert run.returncode == 2 and "cannot connect with secret" in log, log[-3000:]
    said = probe.stdout.decode(errors="replace")
    assert probe.returncode == 1 and "cannot connect with secret" in said, said
    for text in (log, status.read_text(), said):
        assert leaks(text, [client], reprs=True) == [] and REDACTED in text, text


def test_the_module_token_a_job_reads_from_its_file_is_redacted(replica: Replica) -> None:
    """Jobs run in the container that holds the module's own token file; printed, it is as the parent read it."""
    token = Path(replica.rt.env(0)["MODULE_AUTH_TOKEN"]).read_text().strip()
    n = show(replica, "print", "module", odd())
    assert leaks(replica.text(), [token], reprs=True) == []
    lines = replica.lines_with(n)
    assert lines and all(line["message"] == f"{n} secret: {REDACTED}" for line in lines), lines
