"""The job intake: what one body handed out by the runtime asks of this replica, decided without acting.

``parse_job`` reads a GET body and answers with one of::

    Accepted   run it: it enters the ledger and goes to the pool
    Immediate  answer it at once with this error, no worker involved: it cannot be read, names no
               function or one the app lacks, or the replica is shutting down (it enters the ledger
               until that answer is posted)
    Refused    give it no answer: it has no usable job id, so none can be posted, or the job is held
               already, and its one answer will come from the run under way; ``problem`` is for the log

The poll thread acts on the decision (``Poller``); nothing here touches the ledger, the pool or the logs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Container
from dataclasses import dataclass
from typing import Any

from cmworker.errors import InvalidInput, JobError, ShuttingDown, UnknownFunction

# The job id of a body that json cannot parse: the first "jobId" key with a plain string value.
_JOB_ID = re.compile(rb'"jobId"\s*:\s*"([^"\\]{1,200})"')
_CREDENTIALS = ("authHeader", "temporaryCredentialsAuthToken")


@dataclass(frozen=True)
class Accepted:
    job_id: str
    function: str
    secrets: tuple[str, ...] = ()  # its credentials: kept out of every log line while it is held


@dataclass(frozen=True)
class Immediate:
    job_id: str
    function: str  # as the ledger records it: "" when the body could not be read
    error: JobError
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    problem: str


Intake = Accepted | Immediate | Refused


def parse_job(body: bytes, functions: Collection[str], held: Container[str], stopping: bool = False) -> Intake:
    """Decide what to do with ``body``, given the app's ``functions`` (empty while unknown: any name is
    let through), the job ids ``held`` now, and whether the replica is ``stopping``."""
    try:
        document = json.loads(body)
        v1 = document["computeModuleJobV1"] if isinstance(document, dict) else None
    except KeyError:
        v1 = None
    except (ValueError, RecursionError) as exc:
        return _unreadable(body, exc, held)
    if not isinstance(v1, dict):
        return Refused(_no_job_id(body))
    job_id = v1.get("jobId")
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)  # ids are strings in the protocol; a number still names the job
    if not isinstance(job_id, str) or not job_id:
        return Refused(_no_job_id(body))
    if job_id in held:
        return Refused(f"job {job_id} was handed out again while still running here; ignoring the duplicate")
    return _route(job_id, v1.get("queryType"), _secrets(v1), functions, stopping)


def _route(job_id: str, function: object, secrets: tuple[str, ...], functions: Collection[str],
           stopping: bool) -> Accepted | Immediate:
    """To the pool, or answered here when no worker could run it."""
    error: JobError
    if not isinstance(function, str) or not function:
        error = InvalidInput("the job has no queryType, so no function can run it")
    elif stopping:
        error = ShuttingDown("cmworker is shutting down; this job was never started")
    elif functions and function not in functions:
        known = sorted(functions)
        error = UnknownFunction(f"no function named {function!r}; this app has: {', '.join(known)}",
                                function=function, known=known)
    else:
        return Accepted(job_id, function, secrets)
    return Immediate(job_id, str(function), error, secrets)


def _secrets(v1: dict[str, Any]) -> tuple[str, ...]:
    values = (v1.get(key) for key in _CREDENTIALS)
    return tuple(value.removeprefix("Bearer ") for value in values if isinstance(value, str) and value)


def _unreadable(body: bytes, exc: Exception, held: Container[str]) -> Immediate | Refused:
    """A body that is not JSON to Python may still name its job: answer it rather than leave it held.

    A RecursionError here (a query nested ~1,000 deep) once ended the poll thread and with it the
    replica (found by tests/test_fuzz.py).
    """
    found = _JOB_ID.search(body)
    job_id = found.group(1).decode("utf-8", "replace") if found else ""
    if not job_id or job_id in held:
        return Refused(_no_job_id(body))
    if isinstance(exc, RecursionError):
        reason = "it is nested more deeply than Python's JSON parser allows (about 1,000 levels)"
    elif isinstance(exc, UnicodeDecodeError):
        reason = f"it is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position {exc.start})"
    else:
        reason = f"it is not valid JSON ({exc})"
    return Immediate(job_id, "", InvalidInput(f"the job cannot be read: {reason}"))


def _no_job_id(body: bytes) -> str:
    return f"the runtime sent a job without a usable jobId; it cannot be answered: {body!r:.300}"
