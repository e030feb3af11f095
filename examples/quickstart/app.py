"""The Quick start app: one function for each outcome a caller can see."""

import ctypes
import time

import cmworker


@cmworker.function
def add(context, event):
    """A plain success: {"a": 1, "b": 2} -> {"sum": 3}."""
    return {"sum": event["a"] + event["b"]}


@cmworker.function
def divide(context, event):
    """Raises ZeroDivisionError when b is 0: the caller gets the exception, the worker lives on."""
    return event["a"] / event["b"]


@cmworker.function(timeout="1s")
def nap(context, event):
    """Sleeps for event["seconds"]; past its 1 s timeout cmworker kills it and says so."""
    time.sleep(event["seconds"])
    return "rested"


@cmworker.function
def crash(context, event):
    """Dereferences a null pointer: the worker segfaults, the caller gets worker_died."""
    ctypes.string_at(0)


@cmworker.function(memory_limit="256MiB")
def hog(context, event):
    """Allocates event["mib"] MiB; above its 256 MiB limit cmworker kills it."""
    block = bytearray(event["mib"] * 2**20)
    block[::4096] = b"\x01" * len(block[::4096])  # touch every page so it is really resident
    return len(block)
