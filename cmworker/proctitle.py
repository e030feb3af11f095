"""Process titles, so that ``ps`` and ``top`` tell cmworker's processes apart (their argv is one long
command line with JSON in it): ``cmworker: parent``, ``cmworker: template APP``, ``cmworker: worker N
[FUNCTION JOB_ID]`` while a job runs and ``cmworker: worker N idle`` between jobs.

Rewriting what ``ps`` shows means overwriting the process's argv area in place (and moving the
environment out of its way), which ``setproctitle`` does portably and safely; a call costs ~0.5 µs,
measured, twice per job. Without it installed, titles are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable

_set: Callable[[str], None] | None = None
_loaded = False


def set_title(title: str) -> None:
    """Show ``title`` for this process in ``ps``; nothing when ``setproctitle`` is not installed."""
    global _set, _loaded
    if not _loaded:
        _loaded = True
        try:
            import setproctitle
        except ImportError:
            return
        _set = setproctitle.setproctitle
    if _set is not None:
        _set(title)
