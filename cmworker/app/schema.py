"""What a function's type hints mean: its function schema, and how a query becomes its typed event.

A function ``f(context, event: Order) -> Receipt`` declares its inputs through the class of its second
parameter: each field of ``Order`` (a TypedDict, a dataclass, or a class whose constructor takes its
annotated fields) is one input, and the return annotation is the output. One analysis serves both
uses, so they cannot disagree:

* the schema posted to the runtime (``infer_schema``, ``app_schemas``, ``cmworker schema APP``), the
  same JSON the official SDK infers for the same function;
* the coercion of each job's JSON query into an ``Order`` (``EventType.build``), which
  ``FunctionSpec.prepare`` runs in the worker before the function.

The meaning of each type hint, and how a JSON value is converted to fit it, is ``cmworker.app.hints``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from cmworker.app.context import context_factory
from cmworker.app.hints import (
    _SCALARS,
    _STRING,
    UnsupportedType,
    _analyse,
    _Bad,
    _Collection,
    _name,
    _Record,
    _show,
    _strip_annotated,
)
from cmworker.errors import InvalidInput

__all__ = [
    "CallTypes",
    "EventType",
    "Spec",
    "UnsupportedType",
    "analyse_call",
    "app_schemas",
    "infer_schema",
    "load_type_ids",
    "ontology_provenance",
    "output_data_type",
]


# ---------------------------------------------------------------------------------------------------
# Functions: which parameter is which, the typed event, the output.
# ---------------------------------------------------------------------------------------------------

class EventType:
    """The class of a function's event parameter: one schema input per field, and the query's coercion."""

    __slots__ = ("_record",)

    def __init__(self, record: _Record) -> None:
        self._record = record

    @property
    def name(self) -> str:
        return self._record.name

    def inputs(self) -> list[dict[str, Any]]:
        """The schema's ``inputs``: one entry per field, in declaration order."""
        return [{"name": f.name, "required": f.required, "constraints": [], "dataType": f.type.data_type()}
                for f in self._record.fields]

    def build(self, query: Any) -> Any:
        """The event for ``query``; ``InvalidInput`` naming the field when the query does not fit.

        A null query is read as an empty object, so a function whose fields all have defaults can be
        called without one.
        """
        if query is None:
            query = {}
        elif not isinstance(query, dict):
            raise InvalidInput(f"the query must be a JSON object with the fields of {self.name}, not "
                               f"{_show(query)}", field=None, expected="anonymousCustomType")
        try:
            return self._record.convert(query)
        except _Bad as bad:
            raise _invalid(bad) from None
        except RecursionError:
            raise InvalidInput("the query is nested too deeply", field=None) from None


def _invalid(bad: _Bad) -> InvalidInput:
    path = "".join(reversed(bad.path)).removeprefix(".")
    if not path:
        message = f"the query: {bad.problem}"
    elif bad.missing:
        message = f"field '{path}' is required but missing"
    else:
        message = f"field '{path}': {bad.problem}"
    return InvalidInput(message, field=path or None, expected=bad.expected)


@dataclasses.dataclass(frozen=True)
class CallTypes:
    """How a function's two arguments are made from a job, as its type hints say.

    ``context`` builds the first argument from the SDK-shaped context dict (``None``: pass the dict);
    ``event`` is the class of the second (``None``: pass the query as it came).
    """

    context: Callable[[dict[str, Any]], Any] | None
    event: EventType | None


_UNTYPED = CallTypes(None, None)
_EMPTY = inspect.Parameter.empty
_PLAIN_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def analyse_call(fn: Callable[..., Any], name: str | None = None) -> CallTypes:
    """Read ``fn``'s first two positional parameters: the context, then the event.

    The parameters are taken by position, as the worker calls ``fn(context, event)``; the SDK finds the
    context by the name ``context`` instead, which agrees for every function written as documented.
    Raises ``UnsupportedType`` for hints cmworker cannot honour, and ``NameError`` for an annotation
    naming something not defined (yet: the decorator retries later for classes defined below it).
    """
    label = f"function {name or getattr(fn, '__name__', repr(fn))!r}"
    parameters, _ = _parameters(fn)
    if not parameters:
        return _UNTYPED
    namespace = _namespace(fn)
    context = _context_builder(_resolve(parameters[0].annotation, namespace), label)
    event = None
    if len(parameters) > 1:
        hint = _strip_annotated(_resolve(parameters[1].annotation, namespace))
        # Only a class with fields describes inputs. Anything else (dict, Any, list[int]…) means "the
        # query as it is": the SDK gives such functions no inputs too, where it accepts them at all.
        if isinstance(hint, type) and hint not in _SCALARS and hint is not dict:
            node = _analyse(hint, f"{label}: {hint.__qualname__}", (), True)
            if isinstance(node, _Record):
                event = EventType(node)
    return _UNTYPED if context is None and event is None else CallTypes(context, event)


def output_data_type(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """The schema data type of ``fn``'s return annotation; ``string`` when it has none, like the SDK."""
    label = f"function {name or getattr(fn, '__name__', repr(fn))!r}"
    _, returns = _parameters(fn)
    hint = _strip_annotated(_resolve(returns, _namespace(fn)))
    if hint is _EMPTY:
        # Foundry refuses a function without an output type; the SDK says string, and so does cmworker.
        return _STRING.data_type()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (collections.abc.Iterator, collections.abc.Generator) and args:
        return _Collection("list", _analyse(args[0], f"{label} returns", (), False), list).data_type()
    return _analyse(hint, f"{label} returns", (), False).data_type()


def _parameters(fn: Callable[..., Any]) -> tuple[list[inspect.Parameter], Any]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have none: treat as untyped
        return [], _EMPTY
    positional = []
    for parameter in signature.parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            break
        positional.append(parameter)
    return positional[:2], signature.return_annotation


def _namespace(fn: Callable[..., Any]) -> dict[str, Any]:
    """The globals that ``fn``'s string annotations are written against."""
    target: Any = inspect.unwrap(fn)
    # A function, a bound method, a functools.partial, or an object whose class defines __call__.
    for candidate in (target, getattr(target, "__func__", None), getattr(target, "func", None),
                      vars(type(target)).get("__call__")):
        namespace = getattr(candidate, "__globals__", None)
        if isinstance(namespace, dict):
            return namespace
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    return vars(module) if module is not None else {}


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    if isinstance(annotation, str):
        # What inspect.get_annotations(eval_str=True) does, but for one annotation at a time, so that
        # an unresolvable return annotation cannot stop a function's event from being typed.
        return eval(annotation, namespace, {})
    return annotation


def _context_builder(hint: Any, label: str) -> Callable[[dict[str, Any]], Any] | None:
    hint = _strip_annotated(hint)
    if hint is _EMPTY or hint is Any or hint is object or hint in _PLAIN_MAPPINGS \
            or typing.get_origin(hint) in _PLAIN_MAPPINGS:
        return None
    factory = context_factory(hint)
    if factory is None:
        raise UnsupportedType(f"{label}: its first parameter receives the job context; annotate it as "
                              f"cmworker.Context or dict, or leave it unannotated (not {_name(hint)})")
    return factory


# ---------------------------------------------------------------------------------------------------
# Schemas.
# ---------------------------------------------------------------------------------------------------

class Spec(Protocol):
    """What a schema is inferred from: a ``cmworker.app.registry.FunctionSpec`` is one. Named by its
    shape, because the registry imports this module to read its functions' hints."""

    @property
    def name(self) -> str: ...

    @property
    def fn(self) -> Callable[..., Any]: ...

    @property
    def call_types(self) -> CallTypes: ...


def infer_schema(spec: Spec, type_ids: Mapping[str, str] | None = None, *, strict: bool = False) -> dict[str, Any]:
    """The function schema of ``spec``, as ``POST schemas`` carries it and as the SDK infers it.

    ``type_ids`` maps object type API names to their type ids (``load_type_ids``), for the
    ``ontologyProvenance`` of a function declaring ``edits``; ``strict``: an edited type missing from it
    is an error (as in the SDK's build-time inference) instead of being left out (as at its run time).
    """
    call = spec.call_types
    return {
        "functionName": spec.name,
        "inputs": call.event.inputs() if call.event is not None else [],
        "output": {"type": "single", "single": {"dataType": output_data_type(spec.fn, spec.name)}},
        "ontologyProvenance": ontology_provenance(spec.name, getattr(spec, "edits", ()), type_ids or {}, strict),
    }


ONTOLOGY_METADATA_CONFIG = "ontology_metadata_config.json"


def load_type_ids(path: str | None = None) -> dict[str, str]:
    """The ``apiNameToTypeId`` table of an ontology metadata config file (the SDK's
    ``ontology_metadata_config.json``, by default the one in the working directory, if any: empty without
    one). ``OSError`` or ``ValueError`` when the file named cannot be read."""
    import json
    import os

    if path is None:
        path = os.path.join(os.getcwd(), ONTOLOGY_METADATA_CONFIG)
        if not os.path.isfile(path):
            return {}
    with open(path, encoding="utf-8") as handle:
        table = json.load(handle).get("apiNameToTypeId", {})
    if not isinstance(table, dict):
        raise UnsupportedType(f"{path}: apiNameToTypeId is not an object")
    return {str(k): str(v) for k, v in table.items()}


def ontology_provenance(name: str, edits: Iterable[Any], type_ids: Mapping[str, str],
                        strict: bool) -> dict[str, Any] | None:
    """The object types a function edits, by type id; ``None`` for a function that declares no edits.

    An edit is an Ontology SDK object type class: its ``api_name()`` is looked up in ``type_ids``.
    """
    edits = list(edits)
    if not edits:
        return None
    objects: dict[str, Any] = {}
    for edit in edits:
        api_name = getattr(edit, "api_name", None)
        if not callable(api_name):
            continue
        type_id = type_ids.get(api_name())
        if type_id:
            objects[type_id] = {}
        elif strict:
            raise UnsupportedType(f"function {name!r} edits {api_name()!r}, which has no type id in the "
                                  f"ontology metadata config (apiNameToTypeId)")
    return {"editedObjects": objects, "editedLinks": {}}


def app_schemas(functions: Mapping[str, Spec] | Iterable[Spec], type_ids: Mapping[str, str] | None = None,
                *, strict: bool = False) -> list[dict[str, Any]]:
    """The schemas of every function, in registration order; ``UnsupportedType`` lists every failure."""
    specs = list(functions.values()) if isinstance(functions, Mapping) else list(functions)
    schemas, problems = [], []
    for spec in specs:
        try:
            schemas.append(infer_schema(spec, type_ids, strict=strict))
        except (UnsupportedType, NameError) as exc:
            problems.append(str(exc) if isinstance(exc, UnsupportedType) else f"function {spec.name!r}: {exc}")
    if problems:
        raise UnsupportedType("\n".join(problems))
    return schemas
