"""Pipeline mode's entry point: ``@cmworker.pipeline`` and the ``PipelineContext`` it receives.

A pipeline-mode module gets no queries: it runs one long-lived loop over its inputs. The app marks that
loop with ``@cmworker.pipeline``; ``cmworker pipeline APP`` runs it in a process of its own under a
supervising parent (``cmworker.pipeline``), restarts it when it crashes, and asks it to stop on
SIGTERM. The loop sees that request through its context::

    @cmworker.pipeline
    def main(ctx: cmworker.PipelineContext) -> None:
        with cmworker.Executor(workers=2) as pool:
            while not ctx.stopping:
                records = fetch(ctx.resources()["input"], ctx.token())
                ...
                ctx.wait(5.0)  # sleeps, but returns at once when asked to stop

Nothing here touches the network: ``resources()`` and ``token()`` read the files Foundry mounts.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cmworker.resources import PipelineResource, pipeline_resources, pipeline_token

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class PipelineEntry:
    name: str
    fn: Callable[[PipelineContext], Any]


_entry: PipelineEntry | None = None


def pipeline(fn: F) -> F:
    """Mark ``fn(context)`` as the app's pipeline loop (one per app)."""
    global _entry
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    if _entry is not None and _entry.fn is not fn:
        raise ValueError(f"an app has one @cmworker.pipeline entry: {_entry.name!r} is one already, "
                         f"so {name!r} cannot be")
    _entry = PipelineEntry(name, fn)
    return fn


def pipeline_entry() -> PipelineEntry | None:
    """The app's ``@cmworker.pipeline`` function, once the app is imported."""
    return _entry


def forget_pipeline_entry() -> None:
    """Forget the entry (tools and tests that load several apps in one process)."""
    global _entry
    _entry = None


class PipelineContext:
    """What the pipeline loop is given: whether it is asked to stop, its resources and token.

    ``attempt``: 0 on the first start, ``n`` after the loop was restarted ``n`` times.
    """

    def __init__(self, attempt: int, stop_fd: int) -> None:
        self.attempt = attempt
        self._stop_fd = stop_fd  # readable once a stop was asked for (never read, so it stays so)

    @property
    def stopping(self) -> bool:
        """Whether the supervisor asked the loop to stop (SIGTERM): finish the record in hand and return."""
        return self.wait(0)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, returning early when a stop is asked for; whether one was."""
        readable, _, _ = select.select([self._stop_fd], [], [], max(seconds, 0.0))
        return bool(readable)

    def resources(self) -> dict[str, PipelineResource]:
        """The module's inputs and outputs by alias (``cmworker.resources.pipeline_resources``)."""
        return pipeline_resources()

    def token(self) -> str:
        """The job token (``cmworker.resources.pipeline_token``), read afresh."""
        return pipeline_token()

    def __repr__(self) -> str:
        return f"PipelineContext(attempt={self.attempt}, stopping={self.stopping}, pid={os.getpid()})"
