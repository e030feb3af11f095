"""No secret reaches a log line: not in any spelling, not after its job was answered, not cut in two.

The real-process tests run ``cmworker run tests/apps/leaky.py`` against the embedded runtime; each job
gets credentials the test chose (tests/redaction_harness.py) and shows them one way, and the test reads
everything the process wrote. Answers to callers keep what the function raised or printed.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from cmworker import logs
from cmworker.pool.output import MAX_LINE, LineReader
from cmworker.redaction import Secrets
from cmworker.replica.intake import Refused, parse_job, source_secrets
from tests.redaction_harness import REDACTED, Replica, leaks, serving, with_credentials

pytestmark = pytest.mark.timeout(180)

CLIENT_SECRET = 'client"sec\\ret-\u00e9-' + secrets.token_hex(6)
SOURCES = {"warehouse": {"password": "hunter2-" + secrets.token_hex(6), "pin": 73914826, "ratio": 0.7391482613,
                         "enabled": True, "nothing": None, "hosts": ["db-" + secrets.token_hex(5)]}}


def plain() -> str:
    """A token as Foundry mints them: letters, digits, ``-`` and ``_``."""
    return "tok-" + secrets.token_urlsafe(18)


def odd() -> str:
    """A secret every escaping changes: quotes, a backslash, a tab, non-ASCII (two bytes, and astral)."""
    return f"q\"'b\\s\t\u00e9{secrets.token_hex(6)}\U0001f511"


def nonce() -> str:
    return "n" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    tmp = tmp_path_factory.mktemp("redaction")
    (tmp / "sources.json").write_text(json.dumps(SOURCES))
    env = {"CLIENT_ID": "the-client", "CLIENT_SECRET": CLIENT_SECRET, "SOURCE_CREDENTIALS": str(tmp / "sources.json"),
           "LEAKY_AT_IMPORT": "1"}
    with serving(tmp, env=env) as served:
        yield served


def show(replica: Replica, steps: list[list[str]], authorization: str, *, marker: str = "") -> str:
    """Run one job with this ``authHeader`` and wait until what it wrote (``marker``) is in the log."""
    n = nonce()
    job = replica.submit(steps, with_credentials(authHeader=authorization), nonce=n)
    replica.answer(job)
    replica.wait_for(marker.format(nonce=n) or n)
    return n


def assert_redacted_line(replica: Replica, n: str) -> None:
    """The job's line was logged, and what it showed was replaced (the test could see a leak)."""
    lines = replica.lines_with(n)
    assert lines and any(REDACTED in json.dumps(line) for line in lines), lines


# -- every spelling of a secret a job shows ------------------------------------------------------------

@pytest.mark.parametrize("how", ["print", "stderr", "json", "json_utf8", "repr", "bytes_repr", "log", "log_long",
                                 "unsafe", "traceback"])
def test_a_secret_with_quotes_backslashes_or_non_ascii_never_reaches_the_log(replica: Replica, how: str) -> None:
    secret = odd()
    n = show(replica, [[how, "token"]], f"Bearer {secret}", marker="end-{nonce}" if how == "log_long" else "")
    assert leaks(replica.text(), [secret], reprs=True) == []
    assert_redacted_line(replica, n)


def test_the_header_and_the_temporary_token_are_both_redacted(replica: Replica) -> None:
    secret, temp = odd(), plain()
    n = nonce()
    job = replica.submit([["print", "auth"], ["print", "temp"]],
                         with_credentials(authHeader=f"Bearer {secret}", temporaryCredentialsAuthToken=temp), nonce=n)
    replica.answer(job)
    replica.wait_for(n, count=2)
    assert leaks(replica.text(), [secret, temp, f"Bearer {secret}"]) == []
    assert_redacted_line(replica, n)


# -- a job's secrets outlive its answer ------------------------------------------------------------------

def test_a_secret_a_job_kept_is_redacted_when_a_later_job_prints_it(replica: Replica) -> None:
    kept = plain()
    first = replica.submit([["remember", "token"]], with_credentials(authHeader=f"Bearer {kept}"))
    replica.answer(first)
    n = show(replica, [["print", "remembered"]], f"Bearer {plain()}")  # the only worker: the same module global
    assert leaks(replica.text(), [kept]) == []
    assert_redacted_line(replica, n)


def test_a_thread_that_would_print_a_secret_after_the_answer_ends_with_its_worker(replica: Replica) -> None:
    """Nothing of a job outlives its answer: a worker a job left a thread in is replaced after that answer
    (docs/deploying.md, "What each job starts with"), so the line the thread would write 0.3 s later never
    comes, and the secret is nowhere. (A secret shown after its job by a later job, through a module global,
    is redacted: test_a_secret_a_job_kept_is_redacted_when_a_later_job_prints_it.)"""
    secret = plain()
    n = nonce()
    replica.answer(replica.submit([["thread", "token"]], with_credentials(authHeader=f"Bearer {secret}"), nonce=n))
    with pytest.raises(AssertionError, match="did not reach the log"):
        replica.wait_for(f"{n} later:", timeout=2.0)
    assert leaks(replica.text(), [secret]) == []


# -- a line the parent reads in pieces -------------------------------------------------------------------

def test_a_secret_split_across_reads_of_an_overlong_line_is_redacted_whole(replica: Replica) -> None:
    secret = plain()
    half = len(secret) // 2
    n = show(replica, [["split", "token"]], f"Bearer {secret}", marker="end {nonce}")
    text = replica.text()
    assert secret[:half] not in text and secret[half:] not in text
    assert REDACTED + " end " + n in text


def test_an_overlong_line_is_never_cut_inside_a_secret() -> None:
    """Wherever the limit falls in or near the secret, and whatever part of it the first read holds."""
    secret = ("cut-" + secrets.token_hex(20)).encode()
    logs.add_secret(secret.decode())
    try:
        for before in range(MAX_LINE - len(secret) - 2, MAX_LINE + 3):
            for written in (1, len(secret) // 2, len(secret) - 1, len(secret)):
                r, w = os.pipe()
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4 * MAX_LINE)  # the writes below must not wait for a reader
                reader = LineReader()
                os.write(w, b"x" * before + secret[:written])
                first, _ = reader.read(r)
                os.write(w, secret[written:] + b" end\n")
                second, _ = reader.read(r)
                os.close(r)
                os.close(w)
                assert any(secret in line for line in first + second), (before, written)
    finally:
        logs.remove_secret(secret.decode())


# -- job bodies that cannot be run -----------------------------------------------------------------------

@pytest.mark.parametrize("body", ["empty jobId", "not JSON"])
def test_a_body_without_a_usable_job_id_is_never_logged(replica: Replica, body: str) -> None:
    header, temp = plain(), plain()

    def make(envelope: dict[str, Any]) -> bytes:
        job = json.loads(with_credentials(authHeader=f"Bearer {header}", temporaryCredentialsAuthToken=temp)(envelope))
        job = job["computeModuleJobV1"]
        if body == "empty jobId":
            return json.dumps({**envelope, "computeModuleJobV1": {**job, "jobId": ""}}).encode()
        del job["jobId"]
        return json.dumps(job).encode()[:-20]  # cut short: not JSON, and no jobId to answer

    before = replica.text().count("without a usable jobId")
    replica.submit([], make)
    replica.wait_for("without a usable jobId", count=before + 1)
    assert leaks(replica.text(), [header, temp]) == []
    [line] = replica.lines_with("without a usable jobId")[before:]
    assert "bytes" in line["message"]


def test_the_credentials_of_a_body_without_a_job_id_are_still_found(tmp_path: Path) -> None:
    """The intake hands them to the poll thread with its refusal, which registers them before it logs."""
    header, temp = plain(), plain()
    parsed = parse_job(json.dumps({"computeModuleJobV1": {"authHeader": f"bearer {header}",
                                                          "temporaryCredentialsAuthToken": temp}}).encode(), [], ())
    cut = parse_job(b'{"computeModuleJobV1": {"authHeader": "Bearer ' + temp[::-1].encode() + b'", "que', [], ())
    assert isinstance(parsed, Refused) and isinstance(cut, Refused)
    assert {header, temp} <= set(parsed.secrets) and temp[::-1] in cut.secrets
    for secret in (*parsed.secrets, *cut.secrets):
        logs.add_job_secret(secret)
    assert logs.redact(f"{header} {temp} {temp[::-1]}") == f"{REDACTED} {REDACTED} {REDACTED}"


# -- how the credentials are spelled ---------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer  ", "Basic"])
def test_the_token_after_any_spelling_of_the_scheme_is_redacted(replica: Replica, scheme: str) -> None:
    secret = plain()
    n = show(replica, [["print", "token"]], f"{scheme} {secret}")
    assert leaks(replica.text(), [secret]) == []
    assert_redacted_line(replica, n)


@pytest.mark.parametrize("what", ["source:warehouse:pin", "source:warehouse:ratio", "source:warehouse:password",
                                  "client"])
def test_every_source_credential_and_the_client_secret_are_redacted(replica: Replica, what: str) -> None:
    n = show(replica, [["print", what]], f"Bearer {plain()}")
    assert leaks(replica.text(), [CLIENT_SECRET, "73914826", "0.7391482613", SOURCES["warehouse"]["password"]]) == []
    assert_redacted_line(replica, n)


def test_source_credentials_written_after_start_up_are_redacted(tmp_path: Path) -> None:
    """The platform may write the file a little after the container starts; jobs read it then."""
    late = tmp_path / "late.json"
    with serving(tmp_path, env={"SOURCE_CREDENTIALS": str(late)}) as served:
        served.answer(served.submit([]))  # serving, and the file is not there yet
        password = "late-" + secrets.token_hex(8)
        (tmp_path / "writing.json").write_text(json.dumps({"warehouse": {"password": password}}))
        os.rename(tmp_path / "writing.json", late)
        n = show(served, [["print", "source:warehouse:password"]], f"Bearer {plain()}")
        assert leaks(served.text(), [password]) == []
        assert_redacted_line(served, n)


def test_what_the_app_prints_at_import_is_redacted(replica: Replica) -> None:
    replica.wait_for("import: sources")
    lines = replica.lines_with("import:")
    assert len(lines) >= 2 and all(REDACTED in line["message"] for line in lines)
    assert leaks(replica.text(), [CLIENT_SECRET, "73914826", "0.7391482613", SOURCES["warehouse"]["password"],
                                  SOURCES["warehouse"]["hosts"][0]]) == []


def test_source_credentials_are_every_scalar_but_booleans_null_and_short_ones(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text('{"a": {"pw": "long-enough", "short": "abc", "pin": 73914826, "ratio": 2.750, "big": 1e21,'
                    ' "on": true, "off": false, "none": null, "list": ["k-123456", 12]}}')
    found = source_secrets({"SOURCE_CREDENTIALS": str(path)})
    assert set(found) >= {"long-enough", "73914826", "2.750", "2.75", "1e21", "1e+21", "k-123456"}
    assert not set(found) & {"true", "false", "null", "True", "False", "None"}
    registered = Secrets()
    for secret in found:
        registered.add(secret)
    assert registered.redact("abc 12 true 2.75") == f"abc 12 true {REDACTED}"  # as Python prints 2.750


# -- answers keep what was the caller's ------------------------------------------------------------------

def test_the_answer_to_the_caller_keeps_what_the_function_raised(replica: Replica) -> None:
    secret = plain()
    job = replica.submit([["raise", "token"]], with_credentials(authHeader=f"Bearer {secret}"))
    answer = json.loads(replica.answer(job))
    assert answer["kind"] == "exception" and secret in answer["exception"]
    replica.wait_for(job)  # its job_finished line
    assert leaks(replica.text(), [secret]) == []


# -- the console format (dev mode) ------------------------------------------------------------------------

def test_in_console_format_no_spelling_of_a_secret_reaches_the_terminal(tmp_path: Path) -> None:
    with serving(tmp_path, log_format="console") as console:
        secret = odd()
        n = show(console, [["print", "token"], ["json", "token"], ["repr", "token"], ["unsafe", "token"],
                           ["bytes_repr", "token"]], f"Bearer {secret}", marker="{nonce} calling")
        text = console.text()
    assert leaks(text, [secret], reprs=True) == []
    assert text.count(REDACTED) >= 5 and n in text


# -- the set of secrets -----------------------------------------------------------------------------------

def test_job_secrets_are_kept_up_to_the_limit_and_the_oldest_are_forgotten_first() -> None:
    kept = Secrets(job_secrets=3)
    kept.add("lasting-secret")
    for n in range(4):
        kept.add(f"job-secret-{n}", job=True)
    kept.add("job-secret-1", job=True)  # the same user again: now the newest
    kept.add("job-secret-4", job=True)
    assert kept.redact("lasting-secret job-secret-0 job-secret-2") == "<redacted> job-secret-0 job-secret-2"
    assert kept.redact("job-secret-1 job-secret-3 job-secret-4") == "<redacted> <redacted> <redacted>"


def test_overlapping_secrets_are_redacted_as_one_stretch() -> None:
    both = Secrets()
    both.add("abcdefgh-1234")
    both.add("1234-ijklmnop")
    assert both.redact("x abcdefgh-1234-ijklmnop y") == "x <redacted> y"


def test_tokens_sharing_a_long_start_are_each_redacted_wherever_they_fall() -> None:
    """Every JWT starts alike: the index must not rely on a token's first bytes."""
    header = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJmb3VuZHJ5In0."
    tokens = [header + secrets.token_urlsafe(40) for _ in range(50)]
    kept = Secrets()
    for token in tokens:
        kept.add(token, job=True)
    for shift in range(4):  # each 4-byte alignment of the token in the text
        assert [kept.redact(" " * shift + token + " end") for token in tokens] == [" " * shift + "<redacted> end"] * 50
    assert kept.redact(header + "not-a-token") == header + "not-a-token"


def test_each_line_of_a_multi_line_secret_is_a_secret() -> None:
    key = Secrets()
    key.add("-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIBAQ\n-----END KEY-----\n")
    assert key.redact("AQEFAASCBKcwggSjAgEAAoIBAQ") == REDACTED


def test_a_numeric_secret_in_a_number_field_is_redacted_and_the_line_stays_sls() -> None:
    out = io.StringIO()
    logs.configure("sls", "INFO", stream=out)
    logs.add_secret("73914826")
    try:
        logs.get_logger("app").info("pin", pin=73914826, total=739148260, job_id="j-73914826")
    finally:
        logs.remove_secret("73914826")
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    line = json.loads(out.getvalue())
    assert line["unsafeParams"] == {"pin": REDACTED, "total": REDACTED}
    assert line["params"]["job_id"] == f"j-{REDACTED}" and "73914826" not in out.getvalue()


@pytest.fixture
def hooks() -> Iterator[None]:
    saved = sys.excepthook, threading.excepthook
    yield
    sys.excepthook, threading.excepthook = saved
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_an_uncaught_exception_in_a_thread_is_one_redacted_sls_line(hooks: None) -> None:
    """Python would print it to stderr as it is; cmworker logs it like any line."""
    out = io.StringIO()
    logs.configure("sls", "INFO", stream=out)
    secret = odd()
    logs.add_secret(secret)

    def fail() -> None:
        raise RuntimeError(f"the call with {secret} failed")

    try:
        thread = threading.Thread(target=fail, name="careless")
        thread.start()
        thread.join(30)
    finally:
        logs.remove_secret(secret)
    [line] = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["message"] == "uncaught RuntimeError in careless" and line["level"] == "ERROR"
    assert f"RuntimeError: the call with {REDACTED} failed" in line["stacktrace"]
    assert leaks(out.getvalue(), [secret], reprs=True) == []


def test_an_excerpt_of_a_reply_is_redacted_before_it_is_cut() -> None:
    """What the parent logs of a runtime's reply: the cut must not leave a secret's start standing."""
    secret = plain()
    logs.add_secret(secret)
    try:
        text = logs.excerpt(("x" * 290 + secret).encode(), 300)
    finally:
        logs.remove_secret(secret)
    assert text == "x" * 290 + REDACTED
