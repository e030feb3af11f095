"""Fuzzing redaction with hypothesis, through a real ``cmworker run`` against the embedded runtime.

Each example is a few jobs of tests/apps/leaky.py, each with a random secret as its ``authHeader``:
quotes, backslashes, control characters and non-ASCII around and inside a core of letters. Each job
shows secrets in random ways at random times: printed or logged in the job, kept in a module global and
printed by a later job, printed by a thread after the job was answered, written in pieces across an
overlong line with flushes between, logged in a line too long for the parent to parse. The property: no
secret, raw or JSON-escaped (with or without ``ensure_ascii``), is ever in anything the process wrote,
and every line on stdout is still JSON.

Examples are derandomized (the same on every run) and few, so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.redaction_harness import Replica, leaks, serving, with_credentials

pytestmark = pytest.mark.timeout(180)
EXAMPLES = 25

SPECIAL = st.sampled_from(['"', "\\", "'", "\t", "\r", "\n", "\x00", "\x1b", "\x7f", "/", " ", "\u00e9",
                           "\u2028", "\u4e2d", "\U0001f511", "\ufeff"])
CORE = st.text(alphabet=string.ascii_letters.replace("x", "").replace("y", "") + string.digits,
               min_size=8, max_size=16)  # never the filler ("x", "y") of an overlong line
# How a step shows the secret, and what marks its line in the log once it is there.
SHOWN = {"print": "{n}", "stderr": "{n}", "json": "{n}", "json_utf8": "{n}", "log": "{n}", "log_long": "end-{n}",
         "unsafe": "{n}", "traceback": "{n}", "thread": "{n} later:", "split": "end {n}"}


@st.composite
def secrets(draw: st.DrawFn) -> str:
    core = draw(CORE)
    cut = draw(st.integers(0, len(core)))
    before, inside, after = (draw(st.text(SPECIAL, max_size=4)) for _ in range(3))
    return before + core[:cut] + inside + core[cut:] + after


# One job: its secret, what it shows of its own secret, and whether it prints the one kept by a job before.
jobs = st.tuples(secrets(), st.lists(st.sampled_from([*SHOWN, "remember"]), min_size=1, max_size=3),
                 st.sampled_from(["", *SHOWN]).filter(lambda how: how not in ("thread", "split")))


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    with serving(tmp_path_factory.mktemp("fuzz_redaction")) as served:  # one worker: one module global
        yield served


@settings(derandomize=True, deadline=None, database=None, max_examples=EXAMPLES,
          phases=[Phase.explicit, Phase.generate],  # each example costs jobs: a failure is reported as found
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(scenario=st.lists(jobs, min_size=1, max_size=3))
def test_no_secret_reaches_the_log_in_any_spelling_at_any_time(
        replica: Replica, scenario: list[tuple[str, list[str], str]]) -> None:
    markers, shown = [], []
    for secret, hows, later in scenario:
        steps = [[how, "auth", _nonce(replica)] for how in hows]
        if later:
            steps.append([later, "remembered", _nonce(replica)])
        job = replica.submit(steps, with_credentials(authHeader=secret))
        replica.answer(job)
        # A thread's line would come after the answer, and its worker is replaced at the answer: it may
        # never come (what comes is checked all the same).
        markers += [SHOWN[how].format(n=nonce) for how, _, nonce in steps if how not in ("remember", "thread")]
        shown.append(secret)
    for marker in markers:
        replica.wait_for(marker)
    text = replica.text()
    assert leaks(text, shown) == []
    for line in replica.out.read_text().splitlines():
        json.loads(line)


def _nonce(replica: Replica) -> str:
    return f"step{next(replica.cases)}x"
