"""Jobs that hang, crash and grow, for the stack, deadline and memory diagnostics (tests/test_diagnostics.py).

The tests look for these functions' names and lines in the answers: keep each stuck line marked
``# stuck here`` (both lines of a loop that may be caught on either).
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import psutil

import cmworker
from cmworker import Context, MemoryLimitExceeded

MiB = 2**20
libc = ctypes.CDLL(None)
libc_holding_gil = ctypes.PyDLL(None)  # a PyDLL call keeps the GIL while it runs


def _touched(size):
    block = bytearray(size)
    block[::4096] = b"x" * len(block[::4096])  # resident, not just reserved
    return block


@cmworker.function
def nap(context, event):
    time.sleep(3600)  # stuck here


@cmworker.function
def spin(context, event):
    n = 0
    while True:  # stuck here
        n += 1  # stuck here


@cmworker.function
def c_loop(context, event):
    libc.signal(signal.SIGTERM, ctypes.c_void_p(1))  # SIG_IGN, set in C
    while True:
        libc_holding_gil.sleep(3600)  # stuck here


@cmworker.function
def waits_for_thread(context, event):
    lock = threading.Lock()
    lock.acquire()

    def blocked_helper():
        lock.acquire()  # the helper's stuck line

    helper = threading.Thread(target=blocked_helper, daemon=True)
    helper.start()
    helper.join()  # stuck here


@cmworker.function
def deaf(context, event):
    """Blocks every signal it can (the dump signal too), then sleeps."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP})
    time.sleep(3600)  # stuck here


@cmworker.function
def segfault(context, event):
    ctypes.string_at(0)  # stuck here


@cmworker.function
def abort(context, event):
    libc.abort()  # stuck here


@cmworker.function
def grow(context, event):
    kept = []
    while True:
        kept.append(_touched(8 * MiB))  # stuck here
        time.sleep(0.001)


@cmworker.function
def dumps_own_stack(context, event):
    """Writes its own stack to stderr, as one debugging a job does, then answers: the lines are its output."""
    import faulthandler

    print("before the dump", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=False)
    print("after the dump", file=sys.stderr, flush=True)
    return "fine"


@cmworker.function
def time_left(context: Context, event):
    first = context.remaining()
    time.sleep(event["sleep"])
    return {"first": first, "second": context.remaining(), "soft": context.remaining(soft=True),
            "module": cmworker.remaining(), "deadline": context.deadline, "now": time.time()}


@cmworker.function
def time_left_dict(context, event):
    return {"deadline": context.get("deadline"), "softDeadline": context.get("softDeadline"),
            "remaining": cmworker.remaining(), "now": time.time()}


@cmworker.function
def hold(context, event):
    block = _touched(event["mib"] * MiB)
    rss = psutil.Process().memory_info().rss
    del block
    return {"rss": rss}


@cmworker.function
def child_holds(context, event):
    code = (f"b = bytearray({event['mib']} * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            f"import time; time.sleep({event['sleep']})")
    own = _touched(event.get("own_mib", 0) * MiB)  # held by the worker itself meanwhile
    subprocess.run([sys.executable, "-c", code], check=True)
    del own
    return {"pid": os.getpid()}


@cmworker.function
def soft_grow(context, event):
    kept = []
    try:
        while True:
            kept.append(_touched(4 * MiB))
            time.sleep(0.002)
    except MemoryLimitExceeded as exc:
        grown = len(kept) * 4
        kept.clear()
        return {"caught": type(exc).__name__, "soft": exc.soft, "limit": exc.limit_bytes, "grown_mib": grown}


_leaked = []


@cmworker.function
def leak(context, event):
    _leaked.append(_touched(event["mib"] * MiB))
    return {"pid": os.getpid()}


@cmworker.function
def whoami(context, event):
    return {"pid": os.getpid()}


@cmworker.function
def held_up_by_grandchild(context, event):
    """Forks a child that ignores SIGTERM and keeps the worker's socket and pipes open, and waits for it."""
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    os.waitpid(child, 0)  # stuck here
