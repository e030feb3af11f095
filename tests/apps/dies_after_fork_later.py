"""An app whose workers start fine until a test creates the file ``$CMWORKER_TEST_DIE_MARK``; from then
on every new worker dies as soon as it is forked (the crash-loop breaker's case, after start-up)."""

import os

import cmworker

MARK = os.environ.get("CMWORKER_TEST_DIE_MARK", "")


def _child() -> None:
    if MARK and os.path.exists(MARK):
        os._exit(7)


os.register_at_fork(after_in_child=_child)


@cmworker.function
def echo(context, event):
    return event


@cmworker.function
def exit_now(context, event):
    os._exit(3)
