"""What one job may use: the resolved per-job limits, shared by the configuration, the app and the pool.

Units live in ``cmworker.units``; the OS mechanics that enforce these limits live in
``cmworker.pool.processes``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobLimits:
    """What one job may use. ``None`` means unlimited."""

    timeout: float | None = None          # hard wall-clock limit from dispatch, seconds
    soft_timeout: float | None = None     # JobTimeout raised inside the job first, seconds
    memory_limit: int | None = None       # RSS of the job's process tree, bytes
    max_result_size: int = 32 * 2**20     # encoded result bytes
    soft_memory_limit: int | None = None  # MemoryLimitExceeded raised inside the job first, bytes
    max_worker_memory: int | None = None  # replace the worker after a job that leaves it above this RSS
