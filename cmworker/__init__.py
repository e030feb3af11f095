"""cmworker: run Python functions in a Foundry compute module, one crash-isolated worker per job.

The public surface is re-exported here; everything else is private to its module. Workers import this
package too, so nothing here may pull in the HTTP stack: ``Client`` is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cmworker._version import __version__
from cmworker.app import function
from cmworker.context import Context
from cmworker.errors import (
    AppLoadError,
    CmworkerError,
    ConfigError,
    InvalidInput,
    JobDropped,
    JobError,
    JobTimeout,
    MemoryLimitExceeded,
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
from cmworker.executor import Executor
from cmworker.logs import get_logger

if TYPE_CHECKING:
    from cmworker.client import Client

__all__ = [
    "AppLoadError",
    "Client",
    "CmworkerError",
    "ConfigError",
    "Context",
    "Executor",
    "InvalidInput",
    "JobDropped",
    "JobError",
    "JobTimeout",
    "MemoryLimitExceeded",
    "PoolUnhealthy",
    "RemoteException",
    "ResultNotSerializable",
    "ResultTooLarge",
    "RuntimeUnavailable",
    "ShuttingDown",
    "StreamFailed",
    "UnknownFunction",
    "WorkerDied",
    "__version__",
    "function",
    "get_logger",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from cmworker.client import Client

        return Client
    raise AttributeError(f"module 'cmworker' has no attribute {name!r}")
