"""Child side: the process the pipeline loop runs in (``python -m cmworker.pipeline_mode.runner``).

It is a fresh interpreter started by the supervisor, in a session (and process group) of its own. It
logs SLS lines on stderr, which the supervisor relays; imports the app; and calls its
``@cmworker.pipeline`` function with a ``PipelineContext``. SIGTERM only records that a stop was asked
for (a byte on a pipe the context watches): the loop decides when to return. The process is a child
subreaper, so whatever the loop starts and abandons stays below it and dies with it.

Exit status: 0 the loop returned, 1 it raised, ``LOAD_FAILED`` the app could not be loaded or has no
pipeline entry (starting it again cannot help).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import os
import signal
import sys
from typing import NoReturn

LOAD_FAILED = 78  # EX_CONFIG
_PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> NoReturn:
    """``runner APP ATTEMPT SYS_PATH_JSON LOG_LEVEL LOGGER_LEVELS_JSON``."""
    app, attempt = argv[1], int(argv[2])
    sys.path[:] = json.loads(argv[3])
    from cmworker import logs

    logs.configure("sls", argv[4], stream=sys.stderr, logger_levels=[tuple(p) for p in json.loads(argv[5])])
    stop_r, stop_w = os.pipe()
    os.set_blocking(stop_w, False)
    signal.signal(signal.SIGTERM, lambda signum, frame: _record_stop(stop_w))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides what Ctrl-C means
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # A crash (SIGSEGV, SIGABRT...) writes every thread's stack to stderr first: the supervisor takes it
    # out of the relayed lines and logs it with the crash (``pipeline_crashed``), where it was.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    sys.exit(_run(app, attempt, stop_r))


def _record_stop(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"x")


def _run(app: str, attempt: int, stop_fd: int) -> int:
    import structlog

    from cmworker.app import sdk_logging
    from cmworker.app.pipeline import PipelineContext, pipeline_entry
    from cmworker.app.registry import load_app
    from cmworker.errors import AppLoadError

    logger = structlog.get_logger("cmworker.pipeline", origin="cmworker.pipeline")
    sdk_logging.install()
    try:
        load_app(app)
    except AppLoadError as exc:
        logger.critical("pipeline_app_failed", error=str(exc))
        return LOAD_FAILED
    entry = pipeline_entry()
    if entry is None:
        logger.critical("pipeline_app_failed", error=f"app {app!r} has no @cmworker.pipeline function")
        return LOAD_FAILED
    structlog.contextvars.bind_contextvars(function=entry.name)
    logger.info("pipeline_loop_started", attempt=attempt, pid=os.getpid())
    try:
        entry.fn(PipelineContext(attempt, stop_fd))
    except BaseException:  # SystemExit and KeyboardInterrupt included: the loop ended by raising
        logger.exception("pipeline_loop_raised", attempt=attempt)
        return 1
    logger.info("pipeline_loop_returned", attempt=attempt)
    return 0


if __name__ == "__main__":
    main(sys.argv)
