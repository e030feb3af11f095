"""Calls for ``tests/test_executor.py``: well-behaved ones, and every way a call can misbehave.

An importable module, so that workers receive these functions by reference. Only the standard library
and cmworker are imported here: every replacement worker unpickles its first call from this module.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from cmworker import JobTimeout

PY = sys.executable
# The pid of the process that imported this module: the template's when it was preloaded into the
# template, the worker's own when the worker imported it to unpickle its first call.
IMPORTED_IN = os.getpid()


def square(x: int) -> int:
    return x * x


def divide(a: float, b: float) -> float:
    return a / b


def pid() -> int:
    return os.getpid()


def imported_before_fork() -> bool:
    return os.getpid() != IMPORTED_IN


def globals_are_the_module() -> bool:
    """True when this function runs as the module's own (sent by reference), not a by-value copy."""
    return globals() is sys.modules[__name__].__dict__


def nap(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def nap_then_touch(seconds: float, path: str) -> float:
    time.sleep(seconds)
    if path:
        touch(path)
    return seconds


def touch(path: str) -> str:
    with open(path, "w"):
        pass
    return path


def length(data: Any) -> int:
    return len(data)


def echo(value: Any) -> Any:
    return value


def _write_pid(pidfile: str, pid: int) -> None:
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(pidfile + ".tmp", pidfile)  # whoever waits for the file never reads half a number


# -- misbehaving -------------------------------------------------------------------------------------


def raise_value_error(x: Any) -> None:
    raise ValueError(f"bad value {x}")


def segfault() -> None:
    faulthandler.disable()  # keep the test output quiet: the crash itself is the point
    faulthandler._sigsegv()


def exit3() -> None:
    print("about to exit", flush=True)
    print("last words", file=sys.stderr, flush=True)
    os._exit(3)


def abort() -> None:
    faulthandler.disable()
    os.abort()


def wait_to_be_killed(pidfile: str) -> None:
    _write_pid(pidfile, os.getpid())
    time.sleep(10**6)


def sys_exit() -> None:
    sys.exit(4)


def keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def sleep_forever() -> None:
    time.sleep(10**6)


def busy_ignoring_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


def stuck_in_c() -> None:
    """Blocks SIGTERM and SIGALRM (the soft timeout's signal), then sleeps inside libc: no Python runs."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGALRM})
    ctypes.CDLL(None).sleep(10**6)


def grandchild(pidfile: str, then: str) -> str:
    """Starts a grandchild that would sleep forever, writes its pid, then hangs or returns."""
    child = subprocess.Popen([PY, "-c", "import time; time.sleep(10**6)"])
    _write_pid(pidfile, child.pid)
    if then == "hang":
        time.sleep(10**6)
    return "left a grandchild behind"


def grandchild_allocates(pidfile: str, size: int) -> None:
    code = f"import time; b = b'\\x01' * {size}; time.sleep(10**6)"
    child = subprocess.Popen([PY, "-c", code])
    _write_pid(pidfile, child.pid)
    time.sleep(10**6)


def allocate_slowly(chunk: int, pause: float) -> None:
    chunks = []
    while True:
        chunks.append(b"\x01" * chunk)
        time.sleep(pause)


def allocate(size: int) -> int:
    data = b"\x01" * size
    return len(data)


def big(size: int) -> bytes:
    return b"x" * size


def return_lock() -> threading.Lock:
    return threading.Lock()


class Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise Unpicklable("carries a lock")


class TwoArgError(Exception):
    """Pickles, but does not unpickle: pickle rebuilds it as ``TwoArgError(*self.args)``, one argument short."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def raise_two_arg_error() -> None:
    raise TwoArgError("needs two arguments to be rebuilt", 2)


def _explode(message: str) -> None:
    raise RuntimeError(message)


class LoadBomb:
    """Pickles fine in the worker; unpickling it in the caller raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ("this result cannot be rebuilt",))


def return_load_bomb() -> LoadBomb:
    return LoadBomb()


def cleans_up_on_soft_timeout() -> str:
    try:
        time.sleep(10**6)
    except JobTimeout:
        return "cleaned up"
    return "not reached"


_HOARD: list[bytes] = []


def hoard(size: int) -> int:
    """Keeps ``size`` bytes in the worker after the call: a worker that takes a while to tear down."""
    _HOARD.append(b"\x01" * size)
    return os.getpid()


def die_on_signal(path: str, how: str) -> None:
    """Waits until ``path`` exists (the test's go), then dies: ``segfault``, ``exit`` (code 7), or
    ``allocate`` past any memory limit until the parent kills it. Gives up after a minute instead."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    if how == "segfault":
        segfault()
    elif how == "exit":
        os._exit(7)
    allocate_slowly(16 * 2**20, 0.001)


_kept: list[bytearray] = []


def grow_until_told(step_mib: int = 4) -> dict[str, Any]:
    """Allocates (and touches) memory until the soft memory limit says stop, then frees it and returns."""
    from cmworker import MemoryLimitExceeded

    kept = []
    try:
        while True:
            kept.append(bytearray(step_mib * 2**20))
            time.sleep(0.002)
    except MemoryLimitExceeded as exc:
        grown = len(kept) * step_mib
        kept.clear()
        return {"caught": exc.soft, "grown_mib": grown}


def keep(mib: int) -> int:
    """Leaves ``mib`` MiB allocated in the worker after it returns; the worker's pid."""
    _kept.append(bytearray(mib * 2**20))
    return os.getpid()
