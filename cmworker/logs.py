"""Logging, configured in one place: SLS ``service.1`` JSON lines for the Foundry Logs tab, or console text.

One structlog pipeline serves the parent, the template and the workers (each configures it again after
it starts or forks). Standard-library ``logging`` records — from cmworker's own modules, from libraries
and from user code — are routed through the same processors, so every line has the same shape.

An SLS line::

    {"type": "service.1", "level": "INFO", "time": "2026-11-22T10:00:00.123456Z", "origin": "cmworker.poller",
     "thread": "MainThread", "message": "job_finished", "safe": true,
     "params": {"session_id": ..., "process_id": 12, "job_id": ..., "function": ..., ...},
     "unsafeParams": {...}, "stacktrace": "..."}

``params`` carry the fields cmworker itself chose and vouches for; values that came from user code (the
text a job printed, fields a job logged through ``get_logger``) go to ``unsafeParams`` and the line is
marked ``"safe": false``. Secrets (the module token, each job's credentials, source credentials,
``CLIENT_SECRET``) are registered with ``add_secret`` / ``add_job_secret`` and replaced by ``<redacted>``
wherever they would appear in a line, in whatever spelling (``cmworker.redaction``): every renderer
checks the finished line, and only when a secret may be in it renders the line again from redacted
fields, so that the JSON stays whole.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii
from types import TracebackType
from typing import Any, TextIO

import structlog

from cmworker.redaction import REDACTED, SECRETS
from cmworker.units import human_duration, human_size

# SLS knows these six levels only; Python's WARNING and CRITICAL must be renamed, never passed through.
SLS_LEVELS = {"trace": "TRACE", "debug": "DEBUG", "info": "INFO", "warning": "WARN", "warn": "WARN",
              "error": "ERROR", "critical": "FATAL", "fatal": "FATAL", "exception": "ERROR"}
_PY_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
              "WARNING": logging.WARNING, "ERROR": logging.ERROR, "FATAL": logging.CRITICAL,
              "CRITICAL": logging.CRITICAL}
# Fields cmworker sets itself; anything else a caller passes lands in unsafeParams unless marked safe.
SAFE_PARAMS = frozenset({
    "session_id", "process_id", "job_id", "function", "kind", "pid", "worker_pid", "stream", "queued_s",
    "wall_s", "cpu_s", "peak_rss_bytes", "result_bytes", "jobs", "workers", "respawns", "held",
    "parent_rss_bytes", "dropped_lines", "status", "attempt", "signal", "exit_code", "timeout_s",
    "limit_bytes", "rss_bytes", "count", "jobs_by_outcome", "workers_alive", "interval_s", "path", "where",
})
# Fields of an SLS line that may carry text from outside cmworker, and so a secret.
_CONTENT = ("origin", "thread", "message", "params", "unsafeParams", "stacktrace")
_format = "sls"
_session_id = os.environ.get("COMPUTE_SESSION_ID")
_encoder = json.JSONEncoder(default=str)
_second_text: tuple[int, str] = (-1, "")


@dataclass(frozen=True)
class _Installed:
    """What ``configure`` installed, for ``FixedLine``'s shortcut."""

    renderer: SlsRenderer
    threshold: int
    writer: structlog.WriteLogger


_installed: _Installed | None = None


def add_secret(value: str | None) -> None:
    """Never print ``value`` (for the life of the process): every line has it replaced by ``<redacted>``."""
    SECRETS.add(value)


def add_job_secret(value: str | None) -> None:
    """Never print ``value``, one of a job's credentials: kept among the newest job secrets, long after
    the job was answered (see ``cmworker.redaction``)."""
    SECRETS.add(value, job=True)


def remove_secret(value: str) -> None:
    """Print ``value`` again (tests, and code that registered it by mistake)."""
    SECRETS.remove(value)


def redact(text: str) -> str:
    return SECRETS.redact(text)


def excerpt(data: bytes | str, limit: int) -> str:
    """At most ``limit`` characters of ``data`` for a log line: redacted before it is cut, so that the cut
    cannot leave part of a secret standing."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return redact(text)[:limit]


def scrub(value: Any) -> Any:
    """``value`` as the SLS encoder will write it, with every secret redacted: strings (keys too), numbers
    whose digits spell one (they become the string ``<redacted>``), and what ``str`` makes of the rest."""
    if isinstance(value, str):
        return SECRETS.redact(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return REDACTED if SECRETS.found(_encoder.encode(value)) else value
    if isinstance(value, dict):
        return {(scrub(k) if isinstance(k, (str, int, float)) else k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return SECRETS.redact(str(value))


def _holds_secret(text: str) -> bool:
    """Whether a secret is in an SLS line, from its origin on: type, level and time are cmworker's own."""
    return bool(SECRETS.found(text[max(text.find(', "origin": '), 0):]))


def _encode_line(line: dict[str, Any]) -> str:
    """The SLS line; when a secret may be in it, encoded again from redacted fields (not patched as text:
    a secret made of JSON's own characters, or digits in a number, would break the line)."""
    text: str = _encoder.encode(line)
    if _holds_secret(text):
        for key in _CONTENT:
            if key in line:
                line[key] = scrub(line[key])
        text = _encoder.encode(line)
    return text


def _session_and_process(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.setdefault("session_id", _session_id)
    event.setdefault("process_id", os.getpid())
    return event


def _level(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    level = event.get("level") or method
    event["level"] = SLS_LEVELS.get(str(level).lower(), "INFO")
    return event


def _origin(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event.get("_record")
    if "origin" not in event:
        event["origin"] = record.name if record is not None else "cmworker"
    return event


class SlsRenderer:
    """Renders an event dict as one SLS ``service.1`` JSON line."""

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        message = str(event.pop("event", ""))
        safe = bool(event.pop("safe", True))
        line: dict[str, Any] = {
            "type": "service.1",
            "level": event.pop("level", "INFO"),
            "time": _now(),
            "origin": event.pop("origin", "cmworker"),
            "thread": threading.current_thread().name,
            "message": message,
            "safe": safe,
        }
        stack = _stacktrace(event)
        event.pop("_record", None)
        event.pop("_from_structlog", None)
        unsafe_keys = set(event.pop("unsafe", ()))
        params = {k: v for k, v in event.items() if k in SAFE_PARAMS and k not in unsafe_keys}
        unsafe = {k: v for k, v in event.items() if k not in params}
        line["params"] = params
        if unsafe:
            line["unsafeParams"] = unsafe
            line["safe"] = False
        if stack:
            line["stacktrace"] = stack
        return _encode_line(line)


class ConsoleRenderer:
    """Readable lines for a terminal: time, level, message, then the fields (coloured on a TTY)."""

    _COLOURS = {"FATAL": "\x1b[31;1m", "ERROR": "\x1b[31m", "WARN": "\x1b[33m", "INFO": "\x1b[32m",
                "DEBUG": "\x1b[2m", "TRACE": "\x1b[2m"}

    def __init__(self, colours: bool) -> None:
        self.colours = colours

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        message = str(event.pop("event", ""))
        level = event.pop("level", "INFO")
        stack = _stacktrace(event)
        for key in ("_record", "_from_structlog", "origin", "session_id", "process_id", "safe", "unsafe"):
            event.pop(key, None)
        below = None
        if message == "job_finished":
            extra, below = _JOB_NOTES.pop(str(event.get("job_id")), ({}, None))
            event.update(extra)
        fields = " ".join(f"{k.removesuffix('_s').removesuffix('_bytes')}={_human(k, v)}"
                          for k, v in event.items() if v is not None)
        stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        tag = f"{level:<5}"
        if self.colours:
            tag = f"{self._COLOURS.get(level, '')}{tag}\x1b[0m"
        text = f"{stamp} {tag} {message}" + (f"  {fields}" if fields else "")
        if below and stack:  # a killed or crashed job's stack goes under its line with the rest of it
            below, stack = f"{below.rstrip()}\nits stack:\n{stack.rstrip()}", None
        if stack:
            text += "\n" + stack.rstrip()
        if below:
            text += "\n" + "\n".join(f"    {line}" for line in below.rstrip().splitlines())
        return redact(text)


# Console only (``cmworker dev``): what a job's ``job_finished`` line should also show, by job id —
# fields to add or replace (None leaves one out) and text to print under it (a traceback, last output).
_JOB_NOTES: dict[str, tuple[dict[str, Any], str | None]] = {}


def note_job(job_id: str, fields: dict[str, Any], below: str | None = None) -> None:
    """Set what the console shows with the ``job_finished`` line of ``job_id`` (``cmworker dev``); nothing
    when lines are not rendered for a console (SLS lines stay exactly what they are)."""
    processors = structlog.get_config()["processors"]
    if processors and isinstance(processors[-1], ConsoleRenderer):
        _JOB_NOTES[job_id] = (fields, below)


def _human(key: str, value: Any) -> str:
    """A field as a person reads it: seconds and bytes in units, a mapping as ``k=v`` pairs."""
    if isinstance(value, bool):
        return str(value)
    if key.endswith("_s") and isinstance(value, int | float):
        return human_duration(value)
    if key.endswith("_bytes") and isinstance(value, int):
        return human_size(value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items()) or "none"
    return str(value)


def _stacktrace(event: MutableMapping[str, Any]) -> str | None:
    exc_info = event.pop("exc_info", None)
    stack = event.pop("exception", None) or event.pop("stack", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if isinstance(exc_info, tuple) and exc_info[0] is not None:
            return "".join(traceback.format_exception(*exc_info))
    return str(stack) if stack else None


def _now(now: float | None = None) -> str:
    """ISO-8601 UTC with microseconds (of ``now``, default the present); the date and time part is
    formatted once per second (hot path), and kept with its second as one tuple, which threads swap whole."""
    global _second_text
    if now is None:
        now = time.time()
    second = int(now)
    cached = _second_text
    if cached[0] != second:
        cached = _second_text = (second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{int((now - second) * 1e6):06d}Z"


def _chain() -> list[Any]:
    return [structlog.contextvars.merge_contextvars, _level, _origin, _session_and_process]


RECORD_FIELDS = "cmworker_fields"


def _record_fields(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Fields a standard-library record carries in its ``cmworker_fields`` attribute (a dict), as user
    fields (``unsafeParams``): how a logging library's own parameters reach the line (the SDK's
    ``params``, see ``cmworker.app.sdk_logging``)."""
    record = event.get("_record")
    fields = getattr(record, RECORD_FIELDS, None)
    if isinstance(fields, dict) and fields:
        for key, value in fields.items():
            event.setdefault(key, value)
        event["unsafe"] = [*event.get("unsafe", ()), *fields]
    return event


def configure(format: str = "sls", level: str = "INFO", *, stream: TextIO | None = None,
              logger_levels: Iterable[tuple[str, str]] = ()) -> None:
    """Configure structlog and stdlib logging for this process. ``format``: "sls" or "console"."""
    global _session_id
    _session_id = os.environ.get("COMPUTE_SESSION_ID")
    out = stream or sys.stdout
    renderer: Any = SlsRenderer() if format == "sls" else ConsoleRenderer(colours=out.isatty())
    threshold = _PY_LEVELS.get(level.upper(), logging.INFO)
    global _installed
    processors = [*_chain(), renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _installed = _Installed(renderer, threshold, structlog.WriteLogger(file=out)) if format == "sls" else None
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[_record_fields, *_chain()],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    for name, logger_level in logger_levels:
        logging.getLogger(name).setLevel(_PY_LEVELS.get(logger_level.upper(), logging.INFO))
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """What Python would print to stderr as the process dies, logged as any line is (redacted, SLS)."""
    logging.getLogger("cmworker").critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # as Python's own hook: a thread may end itself so
        return
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("cmworker").error("uncaught %s in %s", args.exc_type.__name__, name, exc_info=args.exc_value)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger; inside a job it carries the job's ``job_id`` and ``function``."""
    # Initial values are applied when the logger is first used, so module-level loggers made before
    # configure() still follow it; ``logger`` becomes the line's ``origin``.
    return structlog.get_logger(name, origin=name or "cmworker.user", **initial)


class FixedLine:
    """One kind of line the parent writes for every job (``job_finished``), rendered without structlog's
    per-call machinery, later, by a log thread, in batches (``flush_deferred`` writes them at once).

    The text is exactly the ``SlsRenderer``'s for the same call (tests/test_logs.py compares them); the
    shortcut is taken only with the SLS format, fields cmworker sets itself (all safe, no stack) and the
    configuration ``configure`` installed. Otherwise, as under ``structlog.testing.capture_logs`` or on a
    console, the call goes to ``fallback``, an ordinary structlog logger, at once.

    Why defer: in the middle of a burst of jobs, with every CPU busy, one line rendered and written on its
    own took ~65 µs of the parent's CPU (measured with ``thread_time``; ~12 µs in a quiet loop), ~18 of
    them the write. Rendered ``_DEFERRED.interval`` later, dozens at a time, the code and data stay warm
    and one write carries them all; the call itself only records the time, the thread and the fields.
    """

    def __init__(self, fallback: Any, origin: str, message: str) -> None:
        self.fallback = fallback
        self.message = message
        self.origin = origin
        self._origin = f", \"origin\": {encode_basestring_ascii(origin)}, \"thread\": "
        self._params = f", \"message\": {encode_basestring_ascii(message)}, \"safe\": true, \"params\": "

    def __call__(self, method: str, **params: Any) -> None:
        installed = _installed
        processors = structlog.get_config()["processors"]  # capture_logs() changes this very list
        if installed is None or not processors or processors[-1] is not installed.renderer \
                or not SAFE_PARAMS.issuperset(params):
            getattr(self.fallback, method)(self.message, **params)
            return
        level = SLS_LEVELS[method]
        if _PY_LEVELS[level] < installed.threshold:
            return
        params.setdefault("session_id", _session_id)
        params.setdefault("process_id", os.getpid())
        _DEFERRED.add(installed.writer, (self, level, time.time(), threading.current_thread().name, params))


_Line = tuple[FixedLine, str, float, str, dict[str, Any]]  # (kind, level, time, thread, params)


def _render(line: _Line) -> str:
    kind, level, when, thread, params = line
    text = (f"{{\"type\": \"service.1\", \"level\": \"{level}\", \"time\": \"{_now(when)}\"{kind._origin}"
            f"{encode_basestring_ascii(thread)}{kind._params}{_encoder.encode(params)}}}")
    if _holds_secret(text):  # as the SlsRenderer would do it, to the byte
        return _encode_line({"type": "service.1", "level": level, "time": _now(when), "origin": kind.origin,
                             "thread": thread, "message": kind.message, "safe": True, "params": params})
    return text


class _Deferred:
    """Deferred ``FixedLine``s: one daemon thread renders and writes what gathered, ``interval`` seconds
    after the first of them; it sleeps, with no wake-ups at all, while there is none. ``flush`` writes what
    is pending at once (the poller calls it as it stops; atexit too)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pending: list[tuple[structlog.WriteLogger, _Line]] = []
        self._lock = threading.Lock()         # the pending list
        self._writing = threading.Lock()      # one batch written at a time, in order
        self._arrived = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, writer: structlog.WriteLogger, line: _Line) -> None:
        with self._lock:
            self._pending.append((writer, line))
            first = len(self._pending) == 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cmworker-log", daemon=True)
                self._thread.start()
        if first:
            self._arrived.set()

    def _run(self) -> None:
        while True:
            self._arrived.wait()
            time.sleep(self.interval)
            self._arrived.clear()
            with contextlib.suppress(Exception):  # a line that cannot be written must not end the thread
                self.flush()

    def flush(self) -> None:
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, []
            batch: list[str] = []
            for i, (writer, line) in enumerate(pending):
                batch.append(_render(line))
                if i + 1 == len(pending) or pending[i + 1][0] is not writer:
                    writer.msg("\n".join(batch))
                    batch = []


_DEFERRED = _Deferred(interval=0.05)
atexit.register(_DEFERRED.flush)


def flush_deferred() -> None:
    """Write every deferred line now."""
    _DEFERRED.flush()
