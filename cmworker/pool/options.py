"""The pool's settings, in one frozen object carried from ``Config`` (or the Executor's arguments) to the
template.

Every default is declared once. A setting that ``cmworker.config`` declares (``limits.kill_grace``,
``worker_nice``, ``logging.level``, ...) takes its default from that declaration; the few that only the
pool knows (``prefetch``, ``startup_timeout``, ``python``) are declared here. The template is handed
the same object, as JSON through ``to_json``/``from_json``, so no layer copies settings by hand.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# The declarations, not the loader: the template builds its options from JSON and need not import
# argparse, difflib and tomllib to do it (~20 ms of every template start).
from cmworker.settings import CGROUPS, KILL_GRACE, LOG_LEVEL, LOGGER_LEVELS, MAX_JOBS_PER_WORKER, WORKER_NICE

if TYPE_CHECKING:
    from cmworker.config import Config


@dataclass(frozen=True)
class PoolOptions:
    """What a pool is: its workers, the app they serve, and how they are run.

    ``app`` is what the template imports (``None``: no app, as for the Executor, whose jobs carry their
    functions); ``preload`` are modules it imports first. ``prefetch`` sends a busy worker its next job
    ahead (the Executor's mode). ``startup_timeout`` bounds ``Pool.start``; ``python`` is the
    interpreter the template runs in. ``untraceable``: the template and its workers are made
    non-dumpable (``processes.forbid_tracing``), as a replica's pool is: jobs of different users share
    it; an Executor's are the caller's own, left debuggable.
    """

    workers: int
    app: str | None = None
    preload: Sequence[str] = ()
    log_level: str = LOG_LEVEL.fixed_default
    logger_levels: Sequence[tuple[str, str]] = LOGGER_LEVELS.fixed_default
    kill_grace: float = KILL_GRACE.fixed_default
    max_jobs_per_worker: int = MAX_JOBS_PER_WORKER.fixed_default
    worker_nice: int = WORKER_NICE.fixed_default
    cgroups: str = CGROUPS.fixed_default
    prefetch: bool = False
    untraceable: bool = False
    startup_timeout: float = 120.0
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"a pool needs at least one worker, not {self.workers}")
        # Tuples whatever the caller passed (a list, or JSON arrays): the object stays hashable and
        # compares equal after a round trip through JSON.
        object.__setattr__(self, "preload", tuple(self.preload))
        object.__setattr__(self, "logger_levels", tuple((str(n), str(lv)) for n, lv in self.logger_levels))

    @classmethod
    def from_config(cls, config: Config) -> PoolOptions:
        """The options of ``cmworker run``'s pool (the app and every pool setting from ``config``)."""
        return cls(workers=config.workers, app=config.app, log_level=config.log_level,
                   logger_levels=config.logger_levels, kill_grace=config.kill_grace,
                   max_jobs_per_worker=config.max_jobs_per_worker, worker_nice=config.worker_nice,
                   cgroups=config.cgroups, untraceable=True)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PoolOptions:
        fields: dict[str, Any] = json.loads(text)
        return cls(**fields)
