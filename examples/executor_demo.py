"""cmworker.Executor in one screen: heavy work in parallel, and two calls that would break another pool.

    python examples/executor_demo.py

Runs a CPU-heavy function over a few inputs, plus one call that crashes its process (a segfault) and one
that never ends, with a 1-second timeout. Each future gets its own outcome; the executor keeps working.
"""

from __future__ import annotations

import ctypes
import time
from concurrent.futures import Future
from typing import Any

import cmworker


def count_primes(limit: int) -> int:
    """CPU-heavy on purpose: a plain sieve of Eratosthenes."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit, i)))
    return sum(sieve)


def crash() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, the way a buggy C extension dies


def spin() -> None:
    while True:  # never returns, and never checks for anything
        pass


def outcome(future: Future[Any]) -> str:
    try:
        return f"ok: {future.result()}"
    except cmworker.JobTimeout as exc:
        return f"JobTimeout: {exc}"
    except cmworker.WorkerDied as exc:
        return f"WorkerDied (signal {exc.signal}): {exc}"


def main() -> None:
    with cmworker.Executor(max_workers=2, timeout="1s") as executor:
        started = time.monotonic()
        limits = [2_000_000, 3_000_000, 4_000_000]
        heavy = {n: executor.submit(count_primes, n) for n in limits}
        crashed = executor.submit(crash)
        stuck = executor.submit(spin)

        for n, future in heavy.items():
            print(f"count_primes({n:,}) -> {outcome(future)}")
        print(f"crash() -> {outcome(crashed)}")
        print(f"spin() -> {outcome(stuck)}")
        # The same executor, right after: the crashed and the killed workers were replaced.
        print(f"afterwards: {list(executor.map(count_primes, [10, 100, 1000]))}")
        print(f"all of it took {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
