"""Functions for scripts/soak.py: the everyday jobs of a replica and the ones that go wrong on purpose.

Each answers in a way the soak can check exactly: ``noop`` echoes its event, ``cpu`` returns a sum the
soak computes too, ``stream`` yields numbered items, and the failing ones fail one way only (a
segfault, a hang past the 1 s timeout, memory past the 64 MiB limit, an exception).
"""

import faulthandler
import time

import cmworker


@cmworker.function
def noop(context, event):
    return event


@cmworker.function
def cpu(context, event):
    """A few milliseconds of pure-Python work."""
    return {"n": event["n"], "sum": sum(i * i for i in range(event["n"]))}


@cmworker.function
def segfault(context, event):
    faulthandler.disable()  # the crash itself is the point: no traceback dump in the logs
    faulthandler._sigsegv()


@cmworker.function(timeout="1s")
def hang(context, event):
    time.sleep(10**6)


@cmworker.function(memory_limit="64MiB", timeout="20s")
def hog(context, event):
    """Allocates 8 MiB every 5 ms and holds it: over the limit within a fraction of a second."""
    held = []
    while True:
        held.append(b"\x01" * (8 * 2**20))
        time.sleep(0.005)


@cmworker.function
def fail(context, event):
    raise ValueError(f"soak job {event['i']} fails on purpose")


@cmworker.function(streaming=True)
def stream(context, event):
    for k in range(event["items"]):
        yield {"i": event["i"], "k": k}
