"""The official SDK's loggers (``compute_modules.logging.get_logger``) written through cmworker's pipeline.

The SDK gives each of its loggers a handler of its own that writes its SLS line to stderr, and leaves
the record to propagate to the root logger as well. Under cmworker the root logger already writes SLS
lines, tagged with the job, so every record came out twice, and the SDK's copy named the wrong thread
and ``process_id: "-1"`` (it learns both from its own job loop, which does not run here).

Adopting the SDK's logging takes its handlers away (the records then reach the root handler only, once)
and carries the parameters a caller gave (``params=``, ``unsafe_params=``, ``bind``) into the line as
user fields. ``setup_logger_formatter`` is accepted and changes nothing: every line is cmworker's.

The adoption must happen whenever the SDK's logging module is imported: at the app's import, or first
inside a job. ``install`` (run by the template before it imports the app) therefore adopts a module
already imported and hooks the import of one that is not; it never imports the SDK itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from cmworker.logs import RECORD_FIELDS

SDK_LOGGING = "compute_modules.logging.common"
# What the SDK puts in a record's params on its own; cmworker sets each of them, correctly.
_SDK_RUNTIME_PARAMS = ("process_id", "job_id", "session_id")


class _CarryParams(logging.Filter):
    """Moves the SDK's ``params``/``unsafeParams`` of a record to where cmworker's formatter reads them."""

    def filter(self, record: logging.LogRecord) -> bool:
        params = getattr(record, "params", None)
        unsafe = getattr(record, "unsafeParams", None)
        fields: dict[str, Any] = {}
        if isinstance(params, dict):
            fields.update((k, v) for k, v in params.items() if k not in _SDK_RUNTIME_PARAMS)
        if isinstance(unsafe, dict):
            fields.update(unsafe)
        if fields:
            setattr(record, RECORD_FIELDS, fields)
        return True


_CARRY = _CarryParams()


def _adopt_logger(logger: logging.Logger) -> logging.Logger:
    logger.handlers.clear()
    logger.propagate = True
    if _CARRY not in logger.filters:
        logger.addFilter(_CARRY)
    return logger


def _sdk_logger(name: str) -> logging.Logger:
    """Stands in for the SDK's own logger factory: the named logger, with no handler of its own."""
    return _adopt_logger(logging.getLogger(name))


def adopt(module: ModuleType) -> None:
    """Adopt the SDK's logging module ``module``: its loggers so far and every one it makes later."""
    manager = getattr(module, "COMPUTE_MODULES_ADAPTER_MANAGER", None)
    for adapter in list(getattr(manager, "adapters", {}).values()):
        logger = getattr(adapter, "logger", None)
        if isinstance(logger, logging.Logger):
            _adopt_logger(logger)
    if hasattr(module, "_create_logger"):
        setattr(module, "_create_logger", _sdk_logger)  # noqa: B010 - a module attribute mypy cannot see


class _AdoptingLoader(importlib.abc.Loader):
    """The SDK module's own loader, with the adoption run right after the module has executed."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        adopt(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != SDK_LOGGING:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _AdoptingLoader(spec.loader)
        return spec


_FINDER = _Finder()


def install() -> None:
    """From now on in this process (and its forks), the SDK's loggers write through cmworker's pipeline."""
    module = sys.modules.get(SDK_LOGGING)
    if module is not None:
        adopt(module)
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
