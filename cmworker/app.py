"""The user's app: the ``@cmworker.function`` registry and loading an app by name.

An app is a module (``app``), a ``module:attribute`` (the attribute is a function, or a dict or list of
functions), or the path of a ``.py`` file (its directory goes on ``sys.path``). Importing it runs the
``@function`` decorators, which fill the registry the workers dispatch on.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from cmworker.errors import AppLoadError
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

    def prepare(self, context: dict[str, Any], query: Any) -> tuple[Any, Any]:
        """The ``(context, event)`` arguments for one call, built in the worker from the job.

        Raises ``InvalidInput`` (naming the field) when the query does not fit the function's types.
        """
        return context, query


_registry: dict[str, FunctionSpec] = {}


def registry() -> Mapping[str, FunctionSpec]:
    """Every function registered so far, by name."""
    return _registry


@overload
def function(fn: F, /) -> F: ...
@overload
def function(
    *, name: str | None = None, streaming: bool = False, timeout: float | str | None = None,
    soft_timeout: float | str | None = None, memory_limit: int | str | None = None,
) -> Callable[[F], F]: ...
def function(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, streaming: bool = False,
    timeout: float | str | None = None, soft_timeout: float | str | None = None,
    memory_limit: int | str | None = None,
) -> Any:
    """Register ``fn(context, event)`` as a compute-module function, bare or with options.

    ``timeout``/``soft_timeout`` take seconds or strings like ``"5m"``; ``memory_limit`` bytes or ``"2GiB"``.
    """

    def register(f: F) -> F:
        spec = FunctionSpec(
            name=name or f.__name__,
            fn=f,
            streaming=streaming,
            timeout=None if timeout is None else parse_duration(timeout),
            soft_timeout=None if soft_timeout is None else parse_duration(soft_timeout),
            memory_limit=None if memory_limit is None else parse_size(memory_limit),
        )
        _registry[spec.name] = spec
        return f

    return register if fn is None else register(fn)


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
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        raise AppLoadError(f"importing app {spec!r} failed:\n{traceback.format_exc()}") from exc
    if attribute:
        try:
            target = getattr(module, attribute)
        except AttributeError:
            raise AppLoadError(f"app module {module_name!r} has no attribute {attribute!r}") from None
        for fn in _functions_in(target, spec):
            if not any(s.fn is fn for s in _registry.values()):
                function(fn)
    if not _registry:
        raise AppLoadError(f"app {spec!r} registers no functions: decorate them with @cmworker.function")
    return _registry


def _functions_in(target: Any, spec: str) -> Iterable[Callable[..., Any]]:
    if callable(target):
        return [target]
    if isinstance(target, Mapping):
        return list(target.values())
    if isinstance(target, Iterable):
        return list(target)
    raise AppLoadError(f"{spec!r} is neither a function nor a collection of functions")
