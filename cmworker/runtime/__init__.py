"""The embedded compute-module runtime: a faithful local emulator of Foundry's runtime service.

``EmbeddedRuntime`` (in ``cmworker.runtime.embedded``) serves the module endpoints to one or more
replicas and a query API to callers; ``cmworker runtime`` runs it in the foreground and ``cmworker
call`` / ``cmworker.Client`` query it. The HTTP contract is in docs/runtime.md.

This package is imported when the command line is built, so it loads nothing heavy (TLS, HTTP) until
``EmbeddedRuntime`` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cmworker.runtime.embedded import EmbeddedRuntime

__all__ = ["EmbeddedRuntime"]


def __getattr__(name: str) -> Any:
    if name == "EmbeddedRuntime":
        from cmworker.runtime.embedded import EmbeddedRuntime

        return EmbeddedRuntime
    raise AttributeError(f"module 'cmworker.runtime' has no attribute {name!r}")
