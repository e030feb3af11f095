"""An app whose fork hook runs in every new worker before cmworker's own code, and forges a Ready message
naming another process (the pid in $CMWORKER_TEST_VICTIM) on the worker's socket."""

import os
import socket
import time

import cmworker
from cmworker.pool import messages as m


def _forge():
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                sock = socket.socket(fileno=os.dup(int(name)))
                sock.sendall(b"".join(bytes(p) for p in m.frame(m.Ready(int(os.environ["CMWORKER_TEST_VICTIM"])))))
                sock.detach()
        except OSError:
            continue


def _hold_the_template():
    # In the template, right after each fork and before it tells the parent the worker's pid: with
    # $CMWORKER_TEST_HOLD_SPAWNED set, the forged Ready reaches the parent first.
    if os.environ.get("CMWORKER_TEST_HOLD_SPAWNED"):
        time.sleep(0.05)


os.register_at_fork(after_in_child=_forge, after_in_parent=_hold_the_template)


@cmworker.function
def never(context, event):
    return None
