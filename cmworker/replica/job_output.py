"""What jobs (and the worker template) write, re-emitted by the parent as log lines tagged with their job.

A worker's own log records arrive as SLS JSON lines and pass through with their level, parameters and
origin; any other line is plain text, logged at INFO from stdout and at WARN from stderr.
"""

from __future__ import annotations

import json

from cmworker import logs
from cmworker.pool.supervisor import OutputLine

job_output = logs.get_logger("cmworker.job")
_SLS_PREFIX = '{"type": "service.1"'
_PY_METHOD = {"TRACE": "debug", "DEBUG": "debug", "INFO": "info", "WARN": "warning", "ERROR": "error",
              "FATAL": "critical"}


class OutputRelay:
    """The pool's ``on_output`` (it runs on the pool thread)."""

    def __init__(self) -> None:
        # Bound once, with the configuration in force now, as the poller's own loggers are: resolving a
        # lazy logger on every call cost ~8 us of the ~50 us a log line takes.
        self._log = job_output.bind()

    def __call__(self, line: OutputLine) -> None:
        """Re-emit what a job (or the template) wrote, tagged with its job; worker log lines pass through."""
        context = {"job_id": line.job_id, "function": line.function, "pid": line.pid}
        if line.dropped:
            self._log.warning("output_dropped", dropped_lines=line.dropped, **context)
            return
        if line.text.startswith(_SLS_PREFIX):
            try:
                record = json.loads(line.text)
                params = {**record.get("params", {}), **{k: v for k, v in context.items() if v is not None}}
                unsafe = record.get("unsafeParams", {})
                method = _PY_METHOD.get(record.get("level"), "info")
                getattr(self._log, method)(record.get("message", ""), **params, **unsafe, unsafe=list(unsafe),
                                           origin=record.get("origin", "cmworker.job"),
                                           safe=record.get("safe", False),
                                           stack=record.get("stacktrace"))
                return
            except (ValueError, TypeError, AttributeError):
                pass
        emit = self._log.info if line.stream == "stdout" else self._log.warning
        emit(line.text, stream=line.stream, safe=False, **context)
