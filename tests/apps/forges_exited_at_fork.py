"""An app whose fork hook, in every new worker, forges the template's Exited message for each of the
worker's siblings on the template's control socket (still open in the child for a moment after fork)."""

import os
import socket
import time

import cmworker
from cmworker.pool import messages as m


def _forge():
    template = os.getppid()
    with open(f"/proc/{template}/task/{template}/children") as f:
        siblings = [int(pid) for pid in f.read().split() if int(pid) != os.getpid()]
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_SEQPACKET:  # the control socket, not this worker's own
                for pid in siblings:
                    sock.send(m.pack_packet(m.Exited(pid, 9, 0, 0.0)))
        except OSError:
            pass
        finally:
            sock.close()


os.register_at_fork(after_in_child=_forge)


@cmworker.function
def neighbour(context, event):
    time.sleep(event["sleep"])
    return {"neighbour": event["n"], "pid": os.getpid()}


@cmworker.function
def exit_now(context, event):
    os._exit(3)


@cmworker.function
def echo(context, event):
    return {"echo": event}
