"""cmworker: run Python functions in a Foundry compute module, one crash-isolated worker per job.

The public surface is re-exported here; everything else is private to its module. Workers import this
package too, so nothing here may pull in the HTTP stack or the pool's parent side: ``Client``,
``Executor`` and ``main`` are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cmworker._version import __version__
from cmworker.app.context import Context
from cmworker.app.deadlines import remaining
from cmworker.app.pipeline import PipelineContext, pipeline
from cmworker.app.registry import function
from cmworker.errors import (
    AppLoadError,
    AuthFailed,
    CmworkerError,
    ConfigError,
    InvalidInput,
    JobDropped,
    JobError,
    JobTimeout,
    MemoryLimitExceeded,
    NotProvided,
    PoolUnhealthy,
    RemoteException,
    ResultNotSerializable,
    ResultTooLarge,
    RuntimeUnavailable,
    ShuttingDown,
    StreamFailed,
    UnknownFunction,
    WorkerDied,
)
from cmworker.logs import get_logger

if TYPE_CHECKING:
    from cmworker.executor import Executor
    from cmworker.runtime.client import Client
    from cmworker.script import main

# The decorator, the context, remaining() (the running job's time left), Client, Executor, main() and
# the error tree of cmworker.errors.
__all__ = [
    "AppLoadError", "AuthFailed", "Client", "CmworkerError", "ConfigError", "Context", "Executor", "InvalidInput",
    "JobDropped", "JobError", "JobTimeout", "MemoryLimitExceeded", "NotProvided", "PipelineContext",
    "PoolUnhealthy", "RemoteException", "ResultNotSerializable", "ResultTooLarge", "RuntimeUnavailable",
    "ShuttingDown", "StreamFailed", "UnknownFunction", "WorkerDied", "__version__", "function", "get_logger",
    "main", "pipeline", "remaining",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from cmworker.runtime.client import Client

        return Client
    if name == "Executor":
        from cmworker.executor import Executor

        return Executor
    if name in ("auth", "resources"):  # submodules: auth loads requests, so only when asked for
        import importlib

        return importlib.import_module(f"cmworker.{name}")
    if name == "main":
        from cmworker.script import main

        return main
    raise AttributeError(f"module 'cmworker' has no attribute {name!r}")
