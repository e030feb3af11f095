"""A catalogue of functions that misbehave in every way the pool must survive."""

import faulthandler
import os
import signal
import subprocess
import sys
import time

import cmworker
from cmworker import JobTimeout

PY = sys.executable


@cmworker.function
def echo(context, event):
    return {"echo": event, "job": context["jobId"]}


@cmworker.function
def neighbour(context, event):
    """The well-behaved job that runs beside each misbehaving one; with "started", it first creates
    that file (a test then knows it runs, not only that the runtime handed it out)."""
    if event.get("started"):
        open(event["started"], "w").close()
    time.sleep(event["sleep"])
    return {"neighbour": event["n"]}


@cmworker.function
def pid(context, event):
    return os.getpid()


@cmworker.function
def segfault(context, event):
    faulthandler.disable()  # keep the test output quiet: the crash itself is the point
    faulthandler._sigsegv()


@cmworker.function
def exit3(context, event):
    print("about to exit", flush=True)
    print("last words", file=sys.stderr, flush=True)
    os._exit(3)


@cmworker.function
def sigkill_self(context, event):
    os.kill(os.getpid(), signal.SIGKILL)


@cmworker.function
def sys_exit(context, event):
    sys.exit(4)


@cmworker.function
def sleep_forever(context, event):
    time.sleep(10**6)


@cmworker.function
def busy_ignoring_sigterm(context, event):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


@cmworker.function
def grandchild_sleeps(context, event):
    """Starts a grandchild that would sleep forever, writes its pid, then behaves as asked."""
    child = subprocess.Popen([PY, "-c", "import time; time.sleep(10**6)"])
    with open(event["pidfile"], "w") as f:
        f.write(str(child.pid))
    if event.get("then") == "hang":
        time.sleep(10**6)
    return "left a grandchild behind"


@cmworker.function
def grandchild_allocates(context, event):
    code = f"import time; b = b'\\x01' * {event['bytes']}; time.sleep(10**6)"
    child = subprocess.Popen([PY, "-c", code])
    with open(event["pidfile"], "w") as f:
        f.write(str(child.pid))
    time.sleep(10**6)


@cmworker.function
def allocate_fast(context, event):
    data = b"\x01" * event["bytes"]
    return len(data)


@cmworker.function
def allocate_slowly(context, event):
    chunks = []
    while True:
        chunks.append(b"\x01" * event["chunk"])
        time.sleep(event["pause"])


@cmworker.function
def unencodable(context, event):
    return {"value": object()}


@cmworker.function
def too_large(context, event):
    return "x" * event["size"]


class _Unpicklable(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.handle = lambda: None  # lambdas do not pickle by reference


@cmworker.function
def raise_unpicklable(context, event):
    import threading

    exc = _Unpicklable("carries a lock")
    exc.lock = threading.Lock()
    raise exc


@cmworker.function
def raise_value_error(context, event):
    raise ValueError(f"bad value {event}")


@cmworker.function(soft_timeout=0.2)
def cleans_up_on_soft_timeout(context, event):
    try:
        time.sleep(10**6)
    except JobTimeout:
        return "cleaned up"


@cmworker.function(streaming=True)
def stream(context, event):
    for i in range(event["n"]):
        yield {"i": i}
    if event.get("fail"):
        raise RuntimeError("stream broke")


@cmworker.function
def print_lines(context, event):
    for i in range(event["n"]):
        print(f"line {i}")
    return event["n"]


@cmworker.function
def leak_credentials(context, event):
    """Careless user code printing the job's credentials; the logs must not carry them."""
    print("auth:", context["authHeader"], "creds:", context["tempCredsAuthToken"])
    return "printed"


@cmworker.function
def log_things(context, event):
    import logging

    cmworker.get_logger("app.audit").info("order_checked", order=event["order"])
    logging.getLogger("app.legacy").warning("legacy warning about %s", event["order"])
    return "logged"


@cmworker.function
def my_credentials(context, event):
    return {"authHeader": context["authHeader"], "tempCredsAuthToken": context["tempCredsAuthToken"]}


@cmworker.function
def raw_bytes_then_die(context, event):
    """Invalid UTF-8 on fd 1, then a last line with no newline, then death."""
    os.write(1, b"bad bytes \xff\xfe here\n")
    os.write(2, b"no newline at the end")
    os._exit(5)


@cmworker.function
def timed(context, event):
    """Sleeps, and says when it ran (time.monotonic: the same clock in every process of the machine)."""
    start = time.monotonic()
    time.sleep(event["sleep"])
    return {"n": event["n"], "start": start, "end": time.monotonic()}
