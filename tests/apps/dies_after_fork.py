"""An app that imports fine but whose every worker dies as soon as it is forked."""

import os

import cmworker

os.register_at_fork(after_in_child=lambda: os._exit(7))


@cmworker.function
def never(context, event):
    return None
