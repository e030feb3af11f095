"""The job context: what a function receives as its first argument.

Like the official SDK, cmworker passes a plain dict unless the first parameter is annotated::

    {"jobId", "tempCredsAuthToken", "authHeader", "userId",     # from the job itself
     "sources", "source_configs",                                 # always present, maybe empty
     "CLIENT_ID", "CLIENT_SECRET",                                # only when both are set
     "deadline", "softDeadline"}                                  # only when the job has them

``deadline`` and ``softDeadline`` are Unix timestamps (float seconds) of the job's hard and soft
timeouts; ``Context.remaining()`` and ``cmworker.remaining()`` give the seconds left (``app/deadlines.py``).

``sources`` is the JSON object in the file named by ``$SOURCE_CREDENTIALS`` (the sources' secrets);
``source_configs`` maps each source in the file named by ``$SOURCE_CONFIGURATIONS_PATH`` to its
``sourceConfiguration``; ``CLIENT_ID``/``CLIENT_SECRET`` come from the environment variables of those
names. A function whose first parameter is annotated ``cmworker.Context`` gets the same facts as
attributes, in an object whose ``repr`` never shows a secret; one annotated with the SDK's
``QueryContext`` gets that class, so code written against the SDK keeps its types.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cmworker.app import deadlines

__all__ = ["Context", "context_factory", "job_context"]

SOURCE_CREDENTIALS_ENV = "SOURCE_CREDENTIALS"
SOURCE_CONFIGURATIONS_ENV = "SOURCE_CONFIGURATIONS_PATH"

_log = logging.getLogger("cmworker.context")  # a log origin users may filter on: not the module path
_warned: set[str] = set()  # files already reported unreadable: a broken file is not logged once per job


@dataclass(frozen=True, repr=False)
class Context:
    """Facts about the job being run that are not part of its query.

    The attribute names are the SDK's (``QueryContext``), so code that reads ``context.jobId`` moves
    over unchanged. ``authHeader`` and ``tempCredsAuthToken`` are credentials of the caller; treat them,
    ``CLIENT_SECRET`` and ``sources`` as secrets — ``repr(context)`` shows only whether they are set.
    """

    jobId: str | None = None
    """The runtime's id of this job."""
    userId: str | None = None
    """The user who started the job, when the runtime says."""
    authHeader: str | None = None
    """``Bearer <token>`` of the caller, to call other Foundry services on their behalf (some modes only)."""
    tempCredsAuthToken: str | None = None
    """A short-lived token for the Foundry data sidecar."""
    sources: dict[str, Any] = field(default_factory=dict)
    """The secrets of each source configured for the compute module, by source name."""
    source_configs: dict[str, Any] = field(default_factory=dict)
    """The configuration of each source configured for the compute module, by source name."""
    CLIENT_ID: str | None = None
    """Client id of the module's third-party application, when it runs with the application's permissions."""
    CLIENT_SECRET: str | None = None
    """Client secret of that application."""
    deadline: float | None = None
    """When the job's hard timeout kills it (Unix time, seconds), if it has one."""
    soft_deadline: float | None = None
    """When its soft timeout raises ``cmworker.JobTimeout`` inside it (Unix time), if it has one."""

    def remaining(self, soft: bool = False) -> float | None:
        """Seconds left until the hard deadline (``soft=True``: the soft one), never below 0; ``None``
        when the job has no such deadline."""
        deadline = self.soft_deadline if soft else self.deadline
        return None if deadline is None else max(0.0, deadline - time.time())

    def __repr__(self) -> str:
        shown = [f"jobId={self.jobId!r}", f"userId={self.userId!r}"]
        for name in ("authHeader", "tempCredsAuthToken", "CLIENT_SECRET"):
            if getattr(self, name):
                shown.append(f"{name}=<redacted>")
        if self.CLIENT_ID:
            shown.append(f"CLIENT_ID={self.CLIENT_ID!r}")
        # Source names help when debugging which sources are mounted; their contents stay out.
        if self.sources:
            shown.append(f"sources=<{', '.join(sorted(self.sources))}>")
        if self.source_configs:
            shown.append(f"source_configs=<{', '.join(sorted(self.source_configs))}>")
        return f"{type(self).__name__}({', '.join(shown)})"


def job_context(base: Mapping[str, Any]) -> dict[str, Any]:
    """The SDK-shaped context dict: the job's own keys from ``base`` plus sources and client credentials."""
    return {**base, **_extras(), **deadlines.context_keys()}


def context_factory(annotation: Any) -> Callable[[dict[str, Any]], Any] | None:
    """How to build the first argument for a parameter annotated ``annotation`` from the context dict.

    ``None`` when the annotation is neither ``Context`` (or a subclass) nor the SDK's ``QueryContext``.
    """
    # Partials of module functions rather than lambdas, so that a FunctionSpec holding one still pickles.
    if isinstance(annotation, type) and issubclass(annotation, Context):
        return functools.partial(_build_context, annotation)
    if _is_sdk_query_context(annotation):
        # Pass only what its constructor takes: a later SDK may add or drop fields.
        accepted = frozenset(getattr(annotation, "__dataclass_fields__", ()))
        return functools.partial(_build_sdk_context, annotation, accepted)
    return None


def _build_context(cls: type[Context], context: dict[str, Any]) -> Context:
    return cls(jobId=context.get("jobId"), userId=context.get("userId"), authHeader=context.get("authHeader"),
               tempCredsAuthToken=context.get("tempCredsAuthToken"), sources=context.get("sources") or {},
               source_configs=context.get("source_configs") or {}, CLIENT_ID=context.get("CLIENT_ID"),
               CLIENT_SECRET=context.get("CLIENT_SECRET"), deadline=context.get("deadline"),
               soft_deadline=context.get("softDeadline"))


def _build_sdk_context(cls: type, accepted: frozenset[str], context: dict[str, Any]) -> Any:
    return cls(**{key: value for key, value in context.items() if key in accepted})


def _is_sdk_query_context(annotation: Any) -> bool:
    # Recognised by name, so that cmworker never imports the SDK (whose import has side effects).
    return (isinstance(annotation, type) and annotation.__name__ == "QueryContext"
            and annotation.__module__.split(".")[0] == "compute_modules")


# The extras are read once per process, like the SDK does; a file that is named but not there yet is
# read again on the next job, because the platform may write it a little after the container starts.
_cached_extras: dict[str, Any] | None = None


def _extras() -> dict[str, Any]:
    global _cached_extras
    if _cached_extras is not None:
        return _cached_extras
    extras, complete = read_extras(os.environ)
    if complete:
        _cached_extras = extras
    return extras


def reset_extras() -> None:
    """Forget the cached sources and credentials, and which unreadable files were already reported
    (tests change the environment)."""
    global _cached_extras
    _cached_extras = None
    _warned.clear()


def read_extras(environ: Mapping[str, str]) -> tuple[dict[str, Any], bool]:
    """``(extras, complete)``: the context keys that come from the environment, and whether every file
    the environment names could be read."""
    sources, sources_read = _json_object(environ.get(SOURCE_CREDENTIALS_ENV), SOURCE_CREDENTIALS_ENV)
    configs, configs_read = _json_object(environ.get(SOURCE_CONFIGURATIONS_ENV), SOURCE_CONFIGURATIONS_ENV)
    extras: dict[str, Any] = {
        "sources": sources,
        "source_configs": {name: c.get("sourceConfiguration") if isinstance(c, dict) else None
                           for name, c in configs.items()},
    }
    client_id, client_secret = environ.get("CLIENT_ID"), environ.get("CLIENT_SECRET")
    if client_id and client_secret:
        extras["CLIENT_ID"] = client_id
        extras["CLIENT_SECRET"] = client_secret
    return extras, sources_read and configs_read


def _json_object(path: str | None, variable: str) -> tuple[dict[str, Any], bool]:
    if not path:
        return {}, True
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return {}, False
    except (OSError, ValueError) as exc:
        # Never log the content: these files hold secrets. The path and the error's class are enough.
        _warn_once(variable, f"cannot read ${variable} ({path}): {type(exc).__name__}")
        return {}, False
    if not isinstance(data, dict):
        _warn_once(variable, f"${variable} ({path}) does not hold a JSON object")
        return {}, False
    return data, True


def _warn_once(variable: str, message: str) -> None:
    if variable not in _warned:
        _warned.add(variable)
        _log.warning("%s; the context has no %s until it can be read", message,
                     "sources" if variable == SOURCE_CREDENTIALS_ENV else "source_configs")
