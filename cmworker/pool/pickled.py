"""The executor's job body (``MODE_PICKLE``): written by ``cmworker.executor``, read by ``cmworker.pool.worker``.

This module is the one place that knows the format; both sides import it, and it imports neither.

    call body    pickle.dumps((fn, args, kwargs))   or, when plain pickle cannot do it right, cloudpickle.dumps
    result       cloudpickle.dumps(value)                      (Result)
    failure      cloudpickle.dumps((exception, traceback))     (Failure; see worker._pickled_failure)

``fn`` is either the callable itself (any callable; unpickled afresh for every call) or, for a plain
Python function, a ``FunctionBytes``: that function pickled on its own, *once* per function object in the
parent, with a digest of those bytes. A worker unpickles each digest once and keeps the function in a
per-process cache, so every later call that carries the same bytes runs the same function object.

Why (issue 8): cloudpickle sends a function that cannot be imported by name — defined in ``__main__``, a
lambda, a closure — by value, together with the module globals it refers to. Unpickled for every call,
each call would get a fresh copy of those globals, and a module-level cache the function fills would be
empty again at every call. With the bytes made once and the function kept by digest, the worker holds
one copy of those globals for as long as it lives.

The consequence callers see: such a function, and the globals and closure cells it captures, are
snapshotted at its first submission (much as a forked worker sees the parent's state at the time of the
fork); later changes to them in the parent do not reach the workers. Arguments are pickled per call, so
pass what changes as an argument. Other callables (bound methods, ``functools.partial``, objects with
``__call__``) are pickled with every call, as ``concurrent.futures.ProcessPoolExecutor`` does.

A chunk of ``Executor.map`` is the call ``run_chunk(fn, chunk)``; its ``fn`` is resolved the same way.

Speed: a call is first pickled with the C pickler, which costs a third of cloudpickle's fixed overhead per
call. That is only right when nothing in it must go by value: it falls back to cloudpickle when the C
pickler refuses (a lambda or a local class among the arguments), when the bytes name ``__main__`` outside
the function's own ``FunctionBytes`` (an instance of a class defined in a script: by reference the worker
could not find it), and whenever a module is registered with ``cloudpickle.register_pickle_by_value``.
(Objects of a module made at run time, which the worker cannot import, need that registration.)
"""

from __future__ import annotations

import collections
import hashlib
import pickle
import threading
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

__all__ = ["CallWriter", "FunctionBytes", "dump_call", "dump_chunk", "load_call", "resolve", "run_chunk"]

# How many distinct functions a worker keeps unpickled. A program that makes a new closure per call
# would otherwise grow every worker without bound; past this, the least recently used one is dropped
# (and unpickled afresh, with fresh globals, if it comes back).
WORKER_CACHE_SIZE = 256
_MAIN = b"__main__"


class FunctionBytes:
    """A function pickled on its own, and the digest the worker's cache knows it by."""

    __slots__ = ("data", "digest", "mains")

    def __init__(self, digest: bytes, data: bytes, mains: int = 0) -> None:
        self.digest = digest
        self.data = data
        self.mains = mains  # how often "__main__" occurs in data (see CallWriter.dump); the parent's concern

    def __reduce__(self) -> tuple[Any, ...]:
        return (FunctionBytes, (self.digest, self.data))

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> FunctionBytes:
        data = cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
        return cls(hashlib.blake2b(data, digest_size=16).digest(), data, data.count(_MAIN))


# -- parent side -------------------------------------------------------------------------------------

# Keyed weakly by the function object: an entry lives exactly as long as the function does, so an id()
# reused by a later function can never pick up a stale entry.
_sent: weakref.WeakKeyDictionary[types.FunctionType, FunctionBytes] = weakref.WeakKeyDictionary()
_sent_lock = threading.Lock()


def _reference(fn: Callable[..., Any]) -> Any:
    """What stands for ``fn`` in a body: its ``FunctionBytes`` when it is a plain function, else itself."""
    if not isinstance(fn, types.FunctionType):
        return fn
    ref = _sent.get(fn)  # a dict lookup: safe without the lock, which only orders the writers
    if ref is None:
        ref = FunctionBytes.of(fn)  # outside the lock: pickling may run user code (__reduce__)
        with _sent_lock:
            ref = _sent.setdefault(fn, ref)
    return ref


def _dump(call: tuple[Any, tuple[Any, ...], dict[str, Any]]) -> bytes:
    ref = call[0]
    if not cloudpickle.list_registry_pickle_by_value():
        try:
            body = pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass  # a lambda, a local class...: cloudpickle sends those by value
        else:
            if body.count(_MAIN) <= (ref.mains if isinstance(ref, FunctionBytes) else 0):
                return body
    by_value: bytes = cloudpickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
    return by_value


def dump_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The body of one call. Raises whatever pickling raises when something cannot be pickled."""
    return _dump((_reference(fn), args, kwargs))


class CallWriter:
    """Writes the bodies of many calls of one function (``map``): the function is looked up once."""

    __slots__ = ("ref",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.ref = _reference(fn)

    def dump(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """The body of one call. Raises whatever pickling raises when something cannot be pickled."""
        return _dump((self.ref, args, kwargs))


def dump_chunk(fn: Callable[..., Any], chunk: Sequence[tuple[Any, ...]]) -> bytes:
    """The body of one ``map`` chunk: ``run_chunk(fn, chunk)``, answered with the list of results."""
    return dump_call(run_chunk, (_reference(fn), tuple(chunk)), {})


# -- worker side -------------------------------------------------------------------------------------

_functions: collections.OrderedDict[bytes, Callable[..., Any]] = collections.OrderedDict()


def resolve(fn: Any) -> Any:
    """The callable a body names: a ``FunctionBytes`` is unpickled once per worker, then reused."""
    if not isinstance(fn, FunctionBytes):
        return fn
    found = _functions.get(fn.digest)
    if found is not None:
        _functions.move_to_end(fn.digest)
        return found
    loaded: Callable[..., Any] = pickle.loads(fn.data)
    _functions[fn.digest] = loaded
    if len(_functions) > WORKER_CACHE_SIZE:
        _functions.popitem(last=False)
    return loaded


def load_call(body: bytes | bytearray | memoryview) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """``(fn, args, kwargs)`` from a call body (the older form, with the callable inline, reads the same)."""
    fn, args, kwargs = pickle.loads(body)
    return resolve(fn), args, kwargs


def run_chunk(fn: Any, chunk: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Runs in the worker: one ``map`` chunk, in order; the first exception fails the whole chunk."""
    function = resolve(fn)
    return [function(*args) for args in chunk]
