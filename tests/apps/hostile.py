"""Jobs that attack the pool through their own worker's socket to the parent, as user code can.

The socket is found the way a hostile job would find it: the one socket among the process's open fds.
Each attack writes its frame, then waits to be stopped (returning late would only muddle the test).
"""

import os
import socket
import struct
import sys
import threading
import time

import cmworker
from cmworker.pool import messages as m


def _parent_socket():
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            return socket.socket(fileno=os.dup(int(name)))
    raise RuntimeError("this worker has no socket")


def _own_seq():
    """The number the parent gave this job, read off the worker's stack (its ``run`` message)."""
    frame = sys._getframe()
    while frame is not None:
        run = frame.f_locals.get("run")
        if isinstance(run, m.Run):
            return run.seq
        frame = frame.f_back
    raise RuntimeError("no Run message on the stack")


def _other_workers():
    """The template's other children: the workers running everybody else's jobs."""
    template = os.getppid()
    with open(f"/proc/{template}/task/{template}/children") as f:
        return [int(pid) for pid in f.read().split() if int(pid) != os.getpid()]


def _frame(message):
    return b"".join(bytes(part) for part in m.frame(message))


ATTACKS = {
    "garbage": lambda: struct.pack("!IB", 3, 0xEE) + b"abc",
    "undecodable": lambda: struct.pack("!IB", 2, m.Result.tag) + b"xx",
    "oversized": lambda: struct.pack("!IB", 0xFFFFFFF0, m.Result.tag) + b"x" * 64,
    "forged_exited": lambda: _frame(m.Exited(_other_workers()[0], 9, 0, 0.0)),
    "forged_spawned": lambda: _frame(m.Spawned(1, _other_workers()[0])),
    "forged_template_ready": lambda: _frame(m.TemplateReady(os.getppid(), "{}")),
    "forged_template_failed": lambda: _frame(m.TemplateFailed("forged")),
    "forged_run": lambda: _frame(m.Run("neighbour", b"{}")),
    "second_ready": lambda: _frame(m.Ready(os.getpid())),
    "result_for_another_job": lambda: _frame(m.Result(b'"forged"', 0.0, _own_seq() + 1)),
    "failure_of_unknown_kind": lambda: _frame(m.Failure("ok", b'"forged"', 0.0, _own_seq())),
}


@cmworker.function
def attack(context, event):
    sock = _parent_socket()
    sock.sendall(ATTACKS[event["attack"]]())
    time.sleep(event.get("then_sleep", 60))
    return "never stopped"


@cmworker.function
def answer_twice(context, event):
    """Send its own answer, then let the worker send the real one: one answer too many."""
    _parent_socket().sendall(_frame(m.Result(b'"first"', 0.0, _own_seq())))
    return "second"


@cmworker.function
def frame_after_answer(context, event):
    """Answer normally; a thread left behind writes a copy of that answer once the worker is idle."""
    late = _frame(m.Result(b'"late"', 0.0, _own_seq()))
    sock = _parent_socket()

    def later():
        time.sleep(event["delay"])
        sock.sendall(late)

    threading.Thread(target=later, daemon=True).start()
    return "answered"


@cmworker.function
def neighbour(context, event):
    time.sleep(event["sleep"])
    return {"neighbour": event["n"], "pid": os.getpid()}


@cmworker.function
def echo(context, event):
    return {"echo": event}


@cmworker.function
def pid(context, event):
    return os.getpid()


@cmworker.function
def sleep_then_exit(context, event):
    time.sleep(event["sleep"])
    os._exit(event["code"])


@cmworker.function
def sleep_forever(context, event):
    while True:
        time.sleep(1)


@cmworker.function
def kill_template(context, event):
    os.kill(os.getppid(), 9)
    return "killed"
