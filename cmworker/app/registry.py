"""The user's app: the ``@cmworker.function`` registry and loading an app by name.

An app is a module (``app``), a ``module:attribute`` (the attribute is a function, or a dict or list of
functions), or the path of a ``.py`` file (its directory goes on ``sys.path``). Importing it runs the
``@function`` decorators, which fill the registry the workers dispatch on.

Each function's type hints are read once (``FunctionSpec.call_types``, see ``cmworker.app.schema``): at
decoration, or — for an annotation naming a class defined further down the module — when ``load_app``
finishes. ``load_app`` runs in the worker template, so every forked worker inherits the analysis and
``prepare`` only applies it: for an untyped function that is one dict merge per job.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar, overload

from cmworker.app.context import job_context
from cmworker.app.pipeline import pipeline_entry
from cmworker.app.schema import CallTypes, UnsupportedType, analyse_call
from cmworker.errors import AppLoadError, InvalidInput, user_frames
from cmworker.units import parse_duration, parse_size

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class FunctionSpec:
    """A registered function and the limits it declared (``cmworker.toml`` overrides them)."""

    name: str
    fn: Callable[..., Any]
    streaming: bool = False
    timeout: float | None = None
    soft_timeout: float | None = None
    memory_limit: int | None = None
    edits: tuple[Any, ...] = ()  # Ontology SDK object types the function edits (its ontologyProvenance)
    soft_memory_limit: int | None = None
    max_worker_memory: int | None = None

    @cached_property
    def call_types(self) -> CallTypes:
        """How the function's context and event arguments are built, as its type hints say (read once)."""
        return analyse_call(self.fn, self.name)

    def prepare(self, context: dict[str, Any], query: Any) -> tuple[Any, Any]:
        """The ``(context, event)`` arguments for one call, built in the worker from the job.

        ``context`` is the job's ``jobId``/``userId``/``authHeader``/``tempCredsAuthToken``; the SDK's
        extras (sources, client credentials) are added here. Raises ``InvalidInput`` (naming the field)
        when the query does not fit the function's types, and never anything else.
        """
        try:
            call = self.call_types
        except Exception as exc:
            # load_app reports this at start-up; a registry used without it must still answer the job
            # rather than let the exception kill the worker.
            raise InvalidInput(f"function {self.name!r} cannot take jobs: its type hints cannot be used: "
                               f"{exc}", function=self.name) from None
        full = job_context(context)
        return (full if call.context is None else call.context(full),
                query if call.event is None else call.event.build(query))

    def declared_limits(self) -> dict[str, float | int | None]:
        """The limits the function declared, by name, in the form ``Config.limits_for`` takes."""
        return {"timeout": self.timeout, "soft_timeout": self.soft_timeout, "memory_limit": self.memory_limit,
                "soft_memory_limit": self.soft_memory_limit, "max_worker_memory": self.max_worker_memory}


_registry: dict[str, FunctionSpec] = {}
_loading = False  # load_app is importing an app


def registry() -> Mapping[str, FunctionSpec]:
    """Every function registered so far, by name."""
    return _registry


@contextlib.contextmanager
def isolated_registry() -> Iterator[None]:
    """Whatever is registered inside the block (by ``@function`` or ``load_app``) is forgotten on leaving
    it: the registry is then exactly what it was on entry. For tests and tools that load several apps
    in one process; a served app's registry lives as long as its process."""
    saved = dict(_registry)
    try:
        yield
    finally:
        _registry.clear()
        _registry.update(saved)


@overload
def function(fn: F, /) -> F: ...
@overload
def function(
    *, name: str | None = None, streaming: bool = False, timeout: float | str | None = None,
    soft_timeout: float | str | None = None, memory_limit: int | str | None = None,
    edits: Iterable[Any] | None = None,
    soft_memory_limit: int | str | None = None, max_worker_memory: int | str | None = None,
) -> Callable[[F], F]: ...
def function(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, streaming: bool = False,
    timeout: float | str | None = None, soft_timeout: float | str | None = None,
    memory_limit: int | str | None = None, soft_memory_limit: int | str | None = None,
    max_worker_memory: int | str | None = None, edits: Iterable[Any] | None = None,
) -> Any:
    """Register ``fn(context, event)`` as a compute-module function, bare or with options.

    ``timeout``/``soft_timeout`` take seconds or strings like ``"5m"``; ``memory_limit``,
    ``soft_memory_limit`` and ``max_worker_memory`` bytes or ``"2GiB"``.
    ``edits``: the Ontology SDK object types the function edits, as in the SDK's ``@function(edits=...)``.
    """

    def register(f: F) -> F:
        spec = FunctionSpec(
            name=name or f.__name__,
            fn=f,
            streaming=streaming,
            timeout=None if timeout is None else parse_duration(timeout),
            soft_timeout=None if soft_timeout is None else parse_duration(soft_timeout),
            memory_limit=None if memory_limit is None else parse_size(memory_limit),
            edits=tuple(edits or ()),
            soft_memory_limit=None if soft_memory_limit is None else parse_size(soft_memory_limit),
            max_worker_memory=None if max_worker_memory is None else parse_size(max_worker_memory),
        )
        # Read the hints now, so that a bad one fails the import as in the SDK. A NameError is a class
        # defined further down the module: load_app reads the hints again once it exists.
        with contextlib.suppress(NameError):
            spec.call_types  # noqa: B018
        _check_unique(spec)
        _registry[spec.name] = spec
        return f

    return register if fn is None else register(fn)


def _check_unique(spec: FunctionSpec) -> None:
    """Two functions of an app registered under one name would leave one of them silently unreachable.

    Checked while ``load_app`` imports an app; elsewhere (a notebook or a test defining a function
    again) the later definition replaces the earlier, as a redefined Python function does."""
    earlier = _registry.get(spec.name)
    if not _loading or earlier is None or earlier.fn is spec.fn or _where(earlier.fn) == _where(spec.fn):
        return  # the same function (or its module imported again): registered once
    raise AppLoadError(f"two functions are registered as {spec.name!r}: {_where(earlier.fn)} and "
                       f"{_where(spec.fn)}; rename one, or give one a name with @function(name=...)")


def _where(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", repr(fn))
    return f"{name} at {code.co_filename}:{code.co_firstlineno}" if code is not None else name


def load_app(spec: str) -> Mapping[str, FunctionSpec]:
    """Import the app named by ``spec`` and return the registry; ``AppLoadError`` says why it failed."""
    module_name, _, attribute = spec.partition(":")
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise AppLoadError(f"app file {path} does not exist")
        sys.path.insert(0, os.path.dirname(path))
        module_name = os.path.splitext(os.path.basename(path))[0]
    elif "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    global _loading
    try:
        _loading = True
        module = importlib.import_module(module_name)
    except BaseException as exc:
        # From the user's code on: cmworker's and importlib's frames before it are no help to them.
        raise AppLoadError(f"importing app {spec!r} failed:\n{user_frames(traceback.format_exc())}") from exc
    finally:
        _loading = False
    if attribute:
        try:
            target = getattr(module, attribute)
        except AttributeError:
            raise AppLoadError(f"app module {module_name!r} has no attribute {attribute!r}") from None
        for fn in _functions_in(target, spec):
            if not any(s.fn is fn for s in _registry.values()):
                try:
                    function(fn)
                except UnsupportedType as exc:
                    raise AppLoadError(f"app {spec!r}: {exc}") from None
    if not _registry and pipeline_entry() is None:
        raise AppLoadError(f"app {spec!r} registers no functions: decorate them with @cmworker.function "
                           "(or its loop with @cmworker.pipeline)")
    _check_type_hints(spec)
    return _registry


def _check_type_hints(app: str) -> None:
    """Read every function's hints now, in the template, so a bad one stops the app before any job."""
    problems = []
    for spec in _registry.values():
        try:
            spec.call_types  # noqa: B018 - cached for the workers forked from this process
        except UnsupportedType as exc:
            problems.append(str(exc))
        except Exception as exc:
            problems.append(f"function {spec.name!r}: {type(exc).__name__}: {exc}")
    if problems:
        raise AppLoadError(f"app {app!r} has type hints cmworker cannot use:\n  " + "\n  ".join(problems))


def _functions_in(target: Any, spec: str) -> Iterable[Callable[..., Any]]:
    if callable(target):
        return [target]
    if isinstance(target, Mapping):
        return list(target.values())
    if isinstance(target, Iterable):
        return list(target)
    raise AppLoadError(f"{spec!r} is neither a function nor a collection of functions")
