"""Every error cmworker raises or reports, as one small tree.

    CmworkerError
    ├── ConfigError              a setting is wrong; the message names key, value and file
    ├── AppLoadError             the user's app could not be imported
    ├── PoolUnhealthy            workers keep dying before they take a job; respawning stopped
    ├── RuntimeUnavailable       the compute-module runtime cannot be reached or refused us
    ├── NotProvided              a variable or file the execution mode provides is missing (named)
    ├── AuthFailed               Foundry's token endpoint refused or failed the credentials exchange
    └── JobError                 a job ended with an error answer; each leaf is one payload ``kind``
        ├── RemoteException          "exception"                the function raised
        ├── UnknownFunction          "unknown_function"         no function of that name
        ├── InvalidInput             "invalid_input"            the query does not fit the function
        ├── JobTimeout               "timeout"                  ran past its (soft or hard) timeout
        ├── MemoryLimitExceeded      "memory_limit"             its process tree used too much memory
        ├── WorkerDied               "worker_died"              its process died without answering
        ├── ResultNotSerializable    "result_not_serializable"  the return value cannot be encoded
        ├── ResultTooLarge           "result_too_large"         the encoded result is over the limit
        ├── ShuttingDown             "shutdown"                 cmworker stopped before the job finished
        ├── StreamFailed             "stream_failed"            a streaming function raised midway
        └── JobDropped               "dropped"                  the runtime dropped the job (restart)

An error answer travels as JSON (the body of ``POST results/{jobId}``)::

    {"error": "<one clear sentence>", "kind": "<kind>", ...details}
    {"exception": "<message>: <traceback>", "kind": "exception", "type": "<ExceptionClass>"}

``JobError.to_payload()`` and ``error_from_payload()`` are the only two places that know this shape;
both go through the kind registry that each leaf joins by declaring ``kind``.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, ClassVar

__all__ = [
    "AppLoadError",
    "AuthFailed",
    "CmworkerError",
    "ConfigError",
    "InvalidInput",
    "JobDropped",
    "JobError",
    "JobTimeout",
    "MemoryLimitExceeded",
    "NotProvided",
    "PoolUnhealthy",
    "RemoteException",
    "ResultNotSerializable",
    "ResultTooLarge",
    "RuntimeUnavailable",
    "ShuttingDown",
    "StreamFailed",
    "UnknownFunction",
    "WorkerDied",
    "error_from_payload",
    "user_frames",
]


class CmworkerError(Exception):
    """Base of every exception cmworker raises."""


class ConfigError(CmworkerError):
    """A configuration value is wrong. The message names the key, the value and its source."""


class AppLoadError(CmworkerError):
    """The user's app could not be imported (the message carries the import traceback)."""


class PoolUnhealthy(CmworkerError):
    """Fresh workers keep dying before they take a job, so the pool stopped respawning them."""


class RuntimeUnavailable(CmworkerError):
    """The compute-module runtime cannot be reached, or it rejected our credentials."""


class NotProvided(CmworkerError):
    """A variable or file the execution mode provides is missing: the message names it and the mode
    (application permissions, pipeline mode) that provides it."""


class AuthFailed(CmworkerError):
    """Foundry's OAuth token endpoint refused the exchange or could not be reached; ``status`` is the
    HTTP status when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


_KINDS: dict[str, type[JobError]] = {}


class JobError(CmworkerError):
    """A job ended without a result. ``kind`` names the leaf; ``details`` are its structured facts.

    Details are JSON values (``timeout_s``, ``limit_bytes``, ``rss_bytes``, ``signal``, ``exit_code``,
    ``pid``, ``output``…); they are also readable as attributes: ``err.timeout_s``. The details a leaf
    documents are declared on it (annotations without a value): each is an attribute of every instance,
    ``None`` where it does not apply (a worker killed by a signal has no ``exit_code``), however the
    error was made: raised, rebuilt from its payload, or unpickled.
    """

    kind: ClassVar[str] = "error"
    documented: ClassVar[frozenset[str]] = frozenset()  # the details declared on the class and its bases

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.documented = cls.documented | set(inspect.get_annotations(cls))
        if "kind" in cls.__dict__:
            if cls.kind in _KINDS:
                raise TypeError(f"payload kind {cls.kind!r} is already taken by {_KINDS[cls.kind].__name__}")
            _KINDS[cls.kind] = cls

    # ``message`` is positional-only so that a payload may carry a detail of any name, "message" too.
    def __init__(self, message: str, /, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; guards against recursion before __init__ ran.
        details = self.__dict__.get("details")
        if details is not None and name in details:
            return details[name]
        if name in type(self).documented:
            return None
        raise AttributeError(f"{type(self).__name__!s} has no attribute or detail {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))

    def to_payload(self) -> dict[str, Any]:
        """The JSON object that answers the job."""
        return {"error": self.message, "kind": self.kind, **self.details}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_payload(), default=str).encode()


def _rebuild(cls: type[JobError], message: str, details: dict[str, Any]) -> JobError:
    return cls(message, **details)


class RemoteException(JobError):
    """The function raised. ``remote_type`` is the exception's class name, ``remote_traceback`` its text."""

    kind = "exception"

    def __init__(self, message: str, /, *, type: str | None = None, traceback: str = "", **details: Any) -> None:
        super().__init__(message, **details)
        self.remote_type = type
        self.remote_traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, {**self.details, "type": self.remote_type,
                                                       "traceback": self.remote_traceback}))

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.message}" if self.remote_type else self.message

    @classmethod
    def from_exception(cls, exc: BaseException, traceback_text: str) -> RemoteException:
        try:
            message = str(exc)
        except BaseException:  # an exception whose __str__ raises (SystemExit too) still gets answered
            message = f"<unprintable {type(exc).__name__}>"
        return cls(message, type=type(exc).__name__, traceback=traceback_text)

    def to_payload(self) -> dict[str, Any]:
        # The official SDK answers ``{"exception": f"{exc}: {traceback}"}``; callers parse that field,
        # so it keeps its exact shape and the kind and class name ride alongside.
        return {"exception": f"{self.message}: {self.remote_traceback}", "kind": self.kind,
                "type": self.remote_type, **self.details}


class UnknownFunction(JobError):
    kind = "unknown_function"
    function: str | None
    known: list[str] | None  # the functions the app has


class InvalidInput(JobError):
    kind = "invalid_input"
    field: str | None  # the path of the field that does not fit, when a typed event was built
    expected: str | None  # the data type that field expects


class JobTimeout(JobError):
    """Raised inside a job at its soft timeout (catch it to clean up); answered as ``timeout``."""

    kind = "timeout"
    timeout_s: float | None
    soft: bool | None  # True when raised inside the job at its soft timeout
    pid: int | None  # the worker the parent killed (a hard timeout)
    stack: str | None  # the Python stack of every thread of the worker just before the kill
    where: str | None  # the innermost frame of the user's code in it: "solve() at /app/app.py:42"


class MemoryLimitExceeded(JobError):
    """Raised inside a job that passed its soft memory limit (catch it to free memory or return a partial
    result); answered as ``memory_limit``, as is a job killed at its hard limit."""

    kind = "memory_limit"
    limit_bytes: int | None
    rss_bytes: int | None  # what the job's process tree used when it was killed
    pid: int | None
    soft: bool | None  # True when raised inside the job at its soft memory limit
    stack: str | None  # the Python stack of every thread of the worker just before the kill
    where: str | None  # the innermost frame of the user's code in it


class WorkerDied(JobError):
    kind = "worker_died"
    signal: str | None  # its name ("SIGSEGV") when a signal ended the worker
    exit_code: int | None  # when the worker exited
    pid: int | None
    output: str | None  # the job's last output lines
    likely_oom: bool | None  # True when the kernel's out-of-memory killer did it
    stack: str | None  # the Python stack at a crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT)
    where: str | None  # the innermost frame of the user's code in it


class ResultNotSerializable(JobError):
    kind = "result_not_serializable"
    type: str | None  # the result's class name


class ResultTooLarge(JobError):
    kind = "result_too_large"
    size_bytes: int | None
    limit_bytes: int | None
    items_sent: int | None  # for a stream: the items sent before the one too large


class ShuttingDown(JobError):
    kind = "shutdown"
    pid: int | None  # when the job was running


class StreamFailed(JobError):
    kind = "stream_failed"
    items_sent: int | None
    type: str | None  # the class name of what the function raised
    traceback: str | None


class JobDropped(JobError):
    kind = "dropped"
    replica: int | None  # the replica the runtime handed the job to


# The official SDK's answer to an unknown query type, recognised so callers get a typed error from it too.
_SDK_UNKNOWN_QUERY = {"error": "Unknown query type"}


def unreadable_job(exc: ValueError | RecursionError) -> InvalidInput:
    """The answer to a job body that cannot be parsed as JSON, naming why: the same words whether the
    parent or the worker found it out."""
    if isinstance(exc, RecursionError):
        reason = "it is nested more deeply than Python's JSON parser allows (about 1,000 levels)"
    elif isinstance(exc, UnicodeDecodeError):
        reason = f"it is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position {exc.start})"
    else:
        reason = f"it is not valid JSON ({exc})"
    return InvalidInput(f"the job cannot be read: {reason}")


def error_from_payload(payload: Any) -> JobError | None:
    """The error a job answer carries, or ``None`` when the answer is a result.

    Understands cmworker's payloads (any registered ``kind``) and the official SDK's two error shapes:
    ``{"exception": "..."}`` and ``{"error": "Unknown query type"}``.
    """
    if not isinstance(payload, dict):
        return None
    kind = payload.get("kind")
    if kind == RemoteException.kind or (kind is None and set(payload) == {"exception"}):
        text = payload.get("exception")
        if not isinstance(text, str):
            return None
        message, _, traceback_text = text.partition(": Traceback")
        if traceback_text:
            traceback_text = "Traceback" + traceback_text
        details = {k: v for k, v in payload.items() if k not in ("exception", "kind", "type")}
        return RemoteException(message, type=payload.get("type"), traceback=traceback_text, **details)
    if kind is None:
        if payload == _SDK_UNKNOWN_QUERY:
            return UnknownFunction("Unknown query type")
        return None
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    error = payload.get("error")
    if cls is None or not isinstance(error, str):
        return None
    details = {k: v for k, v in payload.items() if k not in ("error", "kind")}
    return cls(error, **details)


_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_frames(traceback_text: str) -> str:
    """A formatted traceback with cmworker's own frames (and importlib's) left out, for a person to read:
    what is left starts at the user's code. Text that is not a traceback comes back unchanged."""
    out: list[str] = []
    skipping = False
    for line in traceback_text.splitlines():
        if line.startswith('  File "'):
            path = line[len('  File "'):].split('"', 1)[0]
            skipping = path.startswith((_OWN_DIR, "<frozen importlib")) or f"{os.sep}importlib{os.sep}" in path
            if not skipping:
                out.append(line)
        elif line.startswith("    ") and skipping:
            continue
        else:
            skipping = False
            out.append(line)
    return "\n".join(out) + ("\n" if traceback_text.endswith("\n") else "")
