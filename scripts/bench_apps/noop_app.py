"""Functions for scripts/bench_pool.py: a no-op, and jobs that die, hang or allocate on purpose.

The same functions serve cmworker (loaded as an app file) and the peer pools (imported as the module
``noop_app`` and called as ``fn(context, event)``), so every pool runs identical code. Jobs that die
write ``time.monotonic()`` to ``event["stamp"]`` just before dying: CLOCK_MONOTONIC is system-wide,
so the benchmark can subtract it from the moment it got the answer.
"""

import ctypes
import faulthandler
import mmap
import os
import signal
import time

import cmworker


def _stamp(event):
    """Write the time of death to the file named by the event, as late as possible before dying."""
    fd = os.open(event["stamp"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, repr(time.monotonic()).encode())
    os.close(fd)


@cmworker.function
def echo(context, event):
    return event


@cmworker.function
def die_exit(context, event):
    _stamp(event)
    os._exit(3)


@cmworker.function
def die_segfault(context, event):
    faulthandler.disable()  # no traceback dump: the crash itself is what is measured
    _stamp(event)
    faulthandler._sigsegv()


@cmworker.function
def sleep_forever(context, event):
    time.sleep(10**6)


@cmworker.function
def busy_ignoring_sigterm(context, event):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


@cmworker.function
def allocate_fast(context, event):
    start = time.monotonic()
    data = b"\x01" * event["bytes"]
    return {"bytes": len(data), "seconds": time.monotonic() - start}


@cmworker.function
def allocate_hugepages(context, event):
    """Like allocate_fast, but the memory is backed by transparent huge pages, which fault in much faster."""
    size = event["bytes"]
    start = time.monotonic()
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    view = (ctypes.c_char * size).from_buffer(region)
    ctypes.memset(view, 1, size)
    seconds = time.monotonic() - start
    del view
    region.close()
    return {"bytes": size, "seconds": seconds}
