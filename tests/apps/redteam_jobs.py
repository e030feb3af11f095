"""Hostile jobs that turn their own worker's process against the jobs after them, or against the pool.

Each function does one hostile thing a job can do from Python and returns (or dies); a test then checks
that the job got exactly one clear answer, that the next job on the same worker is unharmed, and that
nothing of the job outlives it.
"""

import ctypes
import gc
import json
import multiprocessing
import os
import resource
import signal
import sys
import time

import cmworker

_PR_SET_CHILD_SUBREAPER = 36


@cmworker.function
def pid(context, event):
    return os.getpid()


@cmworker.function
def fork_and_return(context, event):
    """Fork, and let both copies return into the worker: the child becomes a second reader of the
    worker's socket unless something stops it. With "wait", the original waits for its copy first."""
    child = os.fork()
    if child and event.get("wait"):
        os.waitpid(child, 0)
    return {"pid": os.getpid(), "copy": child == 0}


@cmworker.function
def fork_and_raise(context, event):
    """The forked copy raises: its failure must not become the job's answer either."""
    if os.fork() == 0:
        raise RuntimeError("raised in the forked copy")
    time.sleep(event.get("sleep", 0.5))
    return "original"


@cmworker.function(streaming=True)
def fork_in_stream(context, event):
    """Fork between two items: the copy goes on iterating, and would send items of its own."""
    yield "before"
    if os.fork() == 0:
        yield "from the copy"
        return
    time.sleep(0.5)
    yield "after"


@cmworker.function
def limits(context, event):
    """The worker's resource limits and interpreter settings, as a job finds them."""
    return {
        "pid": os.getpid(),
        "rlimits": {name: list(resource.getrlimit(getattr(resource, name))) for name in sorted(_RLIMITS)},
        "recursion": sys.getrecursionlimit(),
        "switch": sys.getswitchinterval(),
        "gc": gc.isenabled(),
        "gc_threshold": list(gc.get_threshold()),
        "nonblocking": {str(fd): not os.get_blocking(fd) for fd in (0, 1, 2) if _open(fd)},
    }


_RLIMITS = {"RLIMIT_NOFILE", "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NPROC",
            "RLIMIT_STACK", "RLIMIT_DATA"}


def _open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@cmworker.function
def set_rlimit(context, event):
    """Lower one limit of the worker (its soft value only, or its hard one too)."""
    which = getattr(resource, event["name"])
    _soft, hard = resource.getrlimit(which)
    new = event["value"]
    resource.setrlimit(which, (new, new if event.get("hard") else hard))
    return "lowered"


@cmworker.function
def set_interpreter(context, event):
    sys.setrecursionlimit(60)
    sys.setswitchinterval(1.0)
    gc.disable()
    gc.set_threshold(0)
    return "set"


@cmworker.function
def deep(context, event):
    """Recursion a default interpreter allows."""
    def down(n):
        return 0 if n == 0 else 1 + down(n - 1)
    return down(event["depth"])


@cmworker.function
def nonblocking(context, event):
    """Put the worker's own ends (stdout, stderr, and its socket to the parent) in non-blocking mode."""
    for fd in [*_fds_of_kind("socket:"), 1, 2]:
        os.set_blocking(fd, False)
    return "nonblocking"


@cmworker.function
def big(context, event):
    """A result, and lines of output, too big for one write to a pipe or socket."""
    if event.get("print"):
        print("x" * event["print"])
    return "y" * event["size"]


def _fds_of_kind(prefix):
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith(prefix):
                found.append(int(name))
        except OSError:
            continue
    return found


@cmworker.function
def unreap_then_orphan(context, event):
    """Stop being a subreaper, then leave a double-forked grandchild in its own session: without the
    flag it is re-parented to the template, outside the job's tree."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    if event.get("orphan", True):
        return _orphan(event["mark"])
    return "unset"


@cmworker.function
def subreaper(context, event):
    libc = ctypes.CDLL(None, use_errno=True)
    flag = ctypes.c_int(0)
    libc.prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    return flag.value


def _orphan(mark):
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        if os.fork() == 0:
            os.chdir(mark)
            os.setsid()
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            while True:
                time.sleep(3600)
        os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    with os.fdopen(r, "rb") as f:
        return int(f.read())


@cmworker.function
def mp_pool(context, event):
    """A multiprocessing pool of the given start method; its helper processes (a forkserver, the resource
    tracker) are the job's too."""
    ctx = multiprocessing.get_context(event["method"])
    with ctx.Pool(1) as p:
        return p.map(abs, [-1, -2])


@cmworker.function
def signal_template(context, event):
    os.kill(os.getppid(), getattr(signal, event["signal"]))
    time.sleep(event.get("sleep", 0))
    return os.getppid()


@cmworker.function
def exit3(context, event):
    time.sleep(event.get("sleep", 0))
    os._exit(3)


@cmworker.function
def process_attributes(context, event):
    """Lower the worker's priority, pin it to one CPU, and set it a parent-death signal."""
    os.nice(5)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    ctypes.CDLL(None, use_errno=True).prctl(4, 1 - _dumpable(), 0, 0, 0)  # PR_SET_DUMPABLE
    return "set"


def _dumpable():
    return ctypes.CDLL(None, use_errno=True).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE


@cmworker.function
def attributes(context, event):
    deathsig = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(deathsig), 0, 0, 0)  # PR_GET_PDEATHSIG
    return {"pid": os.getpid(), "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "cpus": sorted(os.sched_getaffinity(0)), "deathsig": deathsig.value, "dumpable": _dumpable(),
            "policy": os.sched_getscheduler(0)}


@cmworker.function
def clobber_socket(context, event):
    """Close the worker's socket to the parent, or put /dev/null in its place, and return; "close_all"
    closes every fd above 2, as daemonizing code does."""
    if event["how"] == "close_all":
        os.closerange(3, 65536)
        return "closed all"
    fd = _worker_socket()
    if event["how"] == "close":
        os.close(fd)
    else:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
    return event["how"]


def _worker_socket():
    """The fd the worker answers on, read off its stack as a hostile job could."""
    frame = sys._getframe()
    while frame is not None:
        sock = frame.f_locals.get("sock")
        if sock is not None and hasattr(sock, "fileno"):
            return sock.fileno()
        frame = frame.f_back
    raise RuntimeError("no socket on the stack")


_ESCAPES = {"SystemExit": lambda: SystemExit(0), "KeyboardInterrupt": KeyboardInterrupt,
            "GeneratorExit": GeneratorExit}


class _ExitingItems(dict):
    """A dict whose items, which the JSON encoder asks a dict subclass for, raise a BaseException."""

    escape = "SystemExit"

    def items(self):
        raise _ESCAPES[self.escape]()


class _ExitingStr(Exception):
    escape = "SystemExit"

    def __str__(self):
        raise _ESCAPES[self.escape]()


@cmworker.function
def result_escapes(context, event):
    """A result whose encoding raises what ``except Exception`` does not catch."""
    value = _ExitingItems(a=1)
    value.escape = event["escape"]
    return value


@cmworker.function
def raise_unprintable(context, event):
    """An exception whose ``__str__`` raises what ``except Exception`` does not catch."""
    exc = _ExitingStr()
    exc.escape = event["escape"]
    raise exc


def _replica():
    """The pool's parent: the worker's grandparent, read from the template's /proc entry."""
    with open(f"/proc/{os.getppid()}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@cmworker.function
def signal_replica(context, event):
    os.kill(_replica(), getattr(signal, event["signal"]))
    return event["signal"]


def _can_read_memory(target):
    try:
        with open(f"/proc/{target}/mem", "rb"):
            return True
    except PermissionError:
        return False


@cmworker.function
def read_memory_of_others(context, event):
    """Can this job open the memory of the replica, the template, and a sibling worker (where other jobs'
    credentials are)? Run as a user without CAP_SYS_PTRACE, it is the kernel's answer for that user."""
    template = os.getppid()
    with open(f"/proc/{template}/task/{template}/children") as f:
        siblings = [int(p) for p in f.read().split() if int(p) != os.getpid()]
    targets = {"replica": _replica(), "template": template, "sibling": siblings[0]}
    return {name: _can_read_memory(pid) for name, pid in targets.items()}


@cmworker.function
def signal_siblings(context, event):
    """Signal every other worker of the template (the workers running other jobs)."""
    template = os.getppid()
    with open(f"/proc/{template}/task/{template}/children") as f:
        siblings = [int(p) for p in f.read().split() if int(p) != os.getpid()]
    for sibling in siblings:
        os.kill(sibling, getattr(signal, event["signal"]))
    return len(siblings)


@cmworker.function
def nap(context, event):
    time.sleep(event["sleep"])
    return {"slept": event["sleep"], "pid": os.getpid()}


@cmworker.function
def move_worker(context, event):
    """Move the worker into a sibling worker's process group ("sibling"), or into a session of its own
    ("setsid", which needs it to leave its own group first)."""
    template = os.getppid()
    with open(f"/proc/{template}/task/{template}/children") as f:
        siblings = [int(p) for p in f.read().split() if int(p) != os.getpid()]
    os.setpgid(0, siblings[0])
    if event["to"] == "setsid":
        os.setsid()
    return {"pgrp": os.getpgrp(), "sid": os.getsid(0)}


@cmworker.function
def groups(context, event):
    return {"pid": os.getpid(), "pgrp": os.getpgrp(), "sid": os.getsid(0)}


@cmworker.function
def flood(context, event):
    """Megabytes without a newline on stdout and stderr, then an answer."""
    chunk = "z" * 2**20
    for _ in range(event["mib"]):
        sys.stdout.write(chunk)
        sys.stderr.write(chunk)
    return "flooded"


@cmworker.function
def own_proc_settings(context, event):
    """What the worker's own /proc files say: its OOM score, and (touching ``mib`` first) its peak."""
    if event.get("mib"):
        block = bytearray(event["mib"] * 2**20)
        block[::4096] = b"x" * len(block[::4096])
    with open("/proc/self/oom_score_adj") as f:
        return {"oom_score_adj": int(f.read()), "uid": os.getuid()}


@cmworker.function
def long_line(context, event):
    """One JSON line of ``kib`` KiB on stdout, as a big structured log line is."""
    print(json.dumps({"event": "big", "data": "y" * (event["kib"] * 1024 - 40)}), flush=True)
    return "printed"


@cmworker.function
def long_lines(context, event):
    for _ in range(event["count"]):
        print(json.dumps({"event": "big", "data": "y" * (event["kib"] * 1024 - 40)}))
    return "printed"
