"""The job intake: what one body handed out by the runtime asks of this replica, decided without acting.

``parse_job`` reads a GET body and answers with one of::

    Accepted   run it: it enters the ledger and goes to the pool
    Immediate  answer it at once with this error, no worker involved: it cannot be read, names no
               function or one the app lacks, or the replica is shutting down (it enters the ledger
               until that answer is posted)
    Refused    give it no answer: it has no usable job id, so none can be posted, or the job is held
               already, and its one answer will come from the run under way; ``problem`` is for the log

Each carries the job's credentials (``secrets``), found even in a body that cannot be parsed: the poll
thread registers them with the log redaction before it logs anything of the job. No ``problem`` quotes
the body, which holds those credentials. The poll thread acts on the decision (``Poller``); nothing
here touches the ledger, the pool or the logs. ``source_secrets`` reads the sources' credentials file, whose every
scalar is a secret too.

The parent does not build the query as Python objects: it reads the job's id, function and credentials
from the ends of the envelope (``app.envelope.read_envelope``), and the worker parses the whole body
once, where the query is needed. A query of a million small objects took the parent's poll thread a
second of parsing under the GIL, while the pool's loop waited for it. A body of another shape is parsed
in full.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Collection, Container, Mapping
from dataclasses import dataclass
from typing import Any

from cmworker.app.context import SOURCE_CREDENTIALS_ENV
from cmworker.app.envelope import CREDENTIALS, fields_from_ends, job_id_from_head
from cmworker.errors import InvalidInput, JobError, ShuttingDown, UnknownFunction, unreadable_job

# The job id of a body that json cannot parse, when it is not first: each "jobId" key with a plain string value.
_JOB_ID = re.compile(rb'"jobId"\s*:\s*"([^"\\]{1,200})"')
# The credentials in such a body, found the same way.
_CREDENTIAL = re.compile(rb'"(?:authHeader|temporaryCredentialsAuthToken)"\s*:\s*("(?:[^"\\]|\\.)*")')
# "<scheme> <credentials>" (RFC 9110 section 11.4); the scheme in any case: "Bearer", "bearer", "Basic"...
_AUTH_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*\s+(\S.*)", re.DOTALL)


@dataclass(frozen=True)
class Accepted:
    job_id: str
    function: str
    secrets: tuple[str, ...] = ()  # its credentials: kept out of every log line from now on


@dataclass(frozen=True)
class Immediate:
    job_id: str
    function: str  # as the ledger records it: "" when the body could not be read
    error: JobError
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    problem: str
    secrets: tuple[str, ...] = ()
    duplicate: bool = False  # it names a job held already: a job all the same, not an empty reply


Intake = Accepted | Immediate | Refused


def parse_job(body: bytes, functions: Collection[str], held: Container[str], stopping: bool = False) -> Intake:
    """Decide what to do with ``body``, given the app's ``functions`` (empty while unknown: any name is
    let through), the job ids ``held`` now, and whether the replica is ``stopping``."""
    fields = fields_from_ends(body)
    if fields is not None:
        secrets = job_secrets(fields, body)
        job_id = fields["jobId"]
        if problem := _unnameable(job_id, body):
            return Refused(problem, secrets)
        if job_id in held:
            return Refused(f"job {job_id} was handed out again while still running here; ignoring the duplicate",
                           secrets, duplicate=True)
        return _route(job_id, fields["queryType"], secrets, functions, stopping)
    try:
        document = json.loads(body)
        v1 = document["computeModuleJobV1"] if isinstance(document, dict) else None
    except KeyError:
        v1 = None
    except (ValueError, RecursionError) as exc:
        return _unreadable(body, exc, held)
    if not isinstance(v1, dict):
        return Refused(_no_job_id(body, "no computeModuleJobV1 object"), job_secrets(None, body))
    secrets = job_secrets(v1, body)
    job_id = v1.get("jobId")
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)  # ids are strings in the protocol; a number still names the job
    if not isinstance(job_id, str) or not job_id:
        return Refused(_no_job_id(body, f"its jobId is {type(job_id).__name__ if job_id else 'missing or empty'}"),
                       secrets)
    if problem := _unnameable(job_id, body):
        return Refused(problem, secrets)
    if job_id in held:
        return Refused(f"job {job_id} was handed out again while still running here; ignoring the duplicate",
                       secrets, duplicate=True)
    return _route(job_id, v1.get("queryType"), secrets, functions, stopping)


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


def job_secrets(v1: Mapping[str, Any] | None, body: bytes) -> tuple[str, ...]:
    """A job's credentials: each value, and an ``authHeader``'s credentials without their scheme. From
    ``computeModuleJobV1`` when it could be parsed, else searched for in the raw body (where a query with
    such a key of its own gives up its value too: more is hidden from the logs, never less)."""
    values: list[object] = []
    if v1 is not None:
        values = [v1.get(key) for key in CREDENTIALS]
    else:
        for name in CREDENTIALS:  # a search for the name, in C, then the regex only where it is
            at = body.find(name.encode())
            while at != -1:
                found = _CREDENTIAL.match(body, at - 1)
                if found is not None:
                    with contextlib.suppress(ValueError):
                        values.append(json.loads(found.group(1)))
                at = body.find(name.encode(), at + 1)
    secrets: list[str] = []
    for value in values:
        if isinstance(value, str) and value:
            secrets.append(value)
            scheme = _AUTH_SCHEME.fullmatch(value)
            if scheme:
                secrets.append(scheme.group(1).strip())
    return tuple(secrets)


def source_secrets(environ: Mapping[str, str]) -> list[str]:
    """Every scalar in the sources' credentials file, none of which may reach a log line: strings, and
    numbers as the file spells them and as Python prints them. Not booleans or null: they say nothing
    secret, and "true" redacted everywhere would ruin every line (so would scalars shorter than
    ``redaction.MIN_LENGTH``, which ``add_secret`` skips)."""
    path = environ.get(SOURCE_CREDENTIALS_ENV)
    try:
        with open(path or "", encoding="utf-8") as f:
            data = json.load(f, parse_int=str, parse_float=lambda text: [text, repr(float(text))],
                             parse_constant=lambda text: None)
    except (OSError, ValueError):
        return []
    found: list[str] = []
    todo: list[Any] = [data]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, str):
            found.append(item)
    return list(dict.fromkeys(found))


class SecretFiles:
    """Files whose contents are secrets and which the platform may write or replace after start-up: the
    sources' credentials (every scalar, ``source_secrets``) and, in pipeline mode, the job token (the
    whole file). ``refresh`` hands each to ``add`` when first found and again whenever its file changes
    (inode, modification time, size); a replaced secret stays registered. With no such file, as on most
    replicas, ``refresh`` costs nothing per job."""

    def __init__(self, environ: Mapping[str, str], add: Callable[[str], None], token_env: str | None = None) -> None:
        self._environ = environ
        self._add = add
        names = [SOURCE_CREDENTIALS_ENV, *([token_env] if token_env else [])]
        self._files = [(name, path) for name in names if (path := environ.get(name))]
        self._seen: dict[str, tuple[int, int, int]] = {}

    def refresh(self) -> None:
        for name, path in self._files:
            try:
                stat = os.stat(path)
            except OSError:
                continue
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if self._seen.get(path) == seen:
                continue
            self._seen[path] = seen
            if name == SOURCE_CREDENTIALS_ENV:
                secrets = source_secrets(self._environ)
            else:
                try:
                    with open(path, encoding="utf-8") as handle:
                        secrets = [handle.read().strip()]
                except (OSError, ValueError):
                    continue
            for secret in secrets:
                self._add(secret)


def _unreadable(body: bytes, exc: ValueError | RecursionError, held: Container[str]) -> Immediate | Refused:
    """A body that is not JSON to Python may still name its job: answer it rather than leave it held.

    A RecursionError here (a query nested ~1,000 deep) once ended the poll thread and with it the
    replica (found by tests/test_fuzz.py).
    """
    secrets = job_secrets(None, body)
    error = unreadable_job(exc)
    why = error.message.removeprefix("the job cannot be read: ")
    job_id = job_id_from_head(body)
    if job_id is None:
        # Not where a runtime puts it: any "jobId" in the body may be the query's own, naming another
        # job, which then got this one's error. Only a body that names one id, once or more, says which.
        found = {match.group(1) for match in _JOB_ID.finditer(body)}
        if len(found) > 1:
            return Refused(_no_job_id(body, f"{why}; it names more than one jobId, and which is its own "
                                            "cannot be told without parsing it"), secrets)
        job_id = found.pop().decode("utf-8", "replace") if found else ""
    if not job_id:
        return Refused(_no_job_id(body, why), secrets)
    if problem := _unnameable(job_id, body):
        return Refused(problem, secrets)
    if job_id in held:
        return Refused(f"job {job_id} was handed out again while still running here; ignoring the duplicate",
                       secrets, duplicate=True)
    return Immediate(job_id, "", error, secrets)


def _unnameable(job_id: str, body: bytes) -> str | None:
    """Why no POST can name this job, if none can. JSON's ``\\ud800`` is a lone surrogate, a string with
    no UTF-8 form: its result URL cannot be written, and the UnicodeEncodeError in a poster thread would
    end the replica (tests/test_redteam_wire.py)."""
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError:
        return _no_job_id(body, "its jobId cannot be written in a URL: it holds a lone surrogate, not Unicode text")
    return None


def _no_job_id(body: bytes, why: str) -> str:
    # Never the body itself: it holds the caller's credentials.
    return f"the runtime sent a job without a usable jobId; it cannot be answered (a body of {len(body)} bytes: {why})"
