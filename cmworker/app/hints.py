"""What a type hint means: its schema data type, and how a JSON value is converted to fit it.

``_analyse`` turns one hint into a node (a ``_Type``): ``data_type()`` is the node's schema data type,
``convert(value)`` coerces one JSON value to the type or raises ``_Bad`` saying what did not fit, and
containers add their place to the path as the error passes out. ``cmworker.app.schema`` builds the
function schemas and the typed events from these nodes; the underscored names it imports are shared
with it only, not public.

Python type → schema data type, and what a JSON value may be to fit it::

    str                     string        a string; a number becomes its text
    int                     integer       an integer, an integral float, or a string holding one
    float                   float         a number, or a string holding one
    bool                    boolean       true or false, or the strings "true" / "false"
    bytes                   binary        a string, encoded as UTF-8 (the SDK does not base64-decode)
    date                    date          an ISO-8601 date string
    datetime                timestamp     "2024-01-31T12:00:00Z" (fraction optional) or with an offset;
                                          becomes a naive datetime in UTC, as the SDK gives it
    Decimal                 decimal       a number, or a string holding one
    Long, Short, Byte       long, …       as int      } NewTypes of these names (cmworker's below, or
    Double                  double        as float    } the SDK's) ; any other NewType is its base type
    list[X], Iterable[X]    list          an array
    set[X]                  set           an array
    dict[K, V]              map           an object; its keys coerced to K (str, a number, a date…)
    X | None, Optional[X]   optionalType  null, or as X
    TypedDict, dataclass,   anonymousCustomType{fields}   an object: missing fields that have a
      annotated class                       default keep it, missing Optional fields become None
    Any, None, an Enum,     anonymousCustomType{}         (the SDK's answer) the value passes
      a class without fields                              through; an Enum is looked up by value

Beyond the SDK, which rejects them: ``Sequence[X]`` and ``tuple[X, ...]`` are lists, ``frozenset[X]``
a set, ``Mapping[K, V]`` and a bare ``dict`` maps, and ``Iterator[X]``/``Generator[X, …]`` as a return
type (a streaming function) a list of X. Any other hint (``Union[int, str]``, ``Literal``…) raises
``UnsupportedType``. A query that does not fit is refused with ``InvalidInput`` naming the field's path
(``EventType.build``), e.g. ``field 'items[2].when': 'abc' is not a datetime``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, NewType

__all__ = [
    "Byte",
    "Double",
    "Long",
    "Short",
    "UnsupportedType",
]

# Integer and float widths the schema can name. Python has one int and one float, so these are markers;
# the SDK declares NewTypes of the same names, and either spelling is recognised.
Long = NewType("Long", int)
Short = NewType("Short", int)
Byte = NewType("Byte", int)
Double = NewType("Double", float)


class UnsupportedType(TypeError):
    """A type hint with no schema data type, or a class cmworker cannot build from a query."""


# ---------------------------------------------------------------------------------------------------
# Coercing one JSON value. Each coercer returns the value as its type or raises TypeError/ValueError/
# ArithmeticError; the node that calls it turns that into a message naming the value.
# ---------------------------------------------------------------------------------------------------

def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # the SDK calls str() on whatever came; numbers are the only sensible case
    raise TypeError


def _to_int(value: Any) -> int:
    if isinstance(value, bool):  # True is an int to Python, never a count to a caller
        raise TypeError
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError  # the SDK truncates 2.7 to 2; losing data silently is worse than refusing
    if isinstance(value, str):
        return int(value)
    raise TypeError


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int | float | str):
        return float(value)
    raise TypeError


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    # Map keys arrive as text. The SDK's bool("false") is True; reading the word is the only safe way.
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "false"):
            return word == "true"
    raise ValueError


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")  # what the SDK does: the text's bytes, no base64 decoding
    raise TypeError


def _to_date(value: Any) -> date:
    if isinstance(value, str):
        return date.fromisoformat(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    raise TypeError


# The SDK reads timestamps with exactly these two formats and returns naive datetimes in UTC.
_SDK_TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ")


def _to_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is None else value.astimezone(timezone.utc).replace(tzinfo=None)
    if not isinstance(value, str):
        raise TypeError
    try:
        parsed = datetime.fromisoformat(value)  # C-fast; on 3.11+ it reads "Z" and any fraction
    except ValueError:
        parsed = None
    if parsed is not None:
        if parsed.tzinfo is None:
            raise ValueError  # no zone: the caller's local time is unknowable here (the SDK refuses too)
        return parsed.astimezone(timezone.utc).replace(tzinfo=None)
    for pattern in _SDK_TIMESTAMP_FORMATS:  # Python 3.10's fromisoformat knows no "Z"
        try:
            return datetime.strptime(value, pattern)
        except ValueError:
            pass
    raise ValueError


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        # JSON "1.1" arrives as the float nearest 1.1; its repr is that short text again, whereas
        # Decimal(1.1) (the SDK) is the float's exact binary expansion, 1.100000000000000088817…
        return Decimal(repr(value))
    if isinstance(value, int | str):
        return Decimal(value)
    raise TypeError


def _show(value: Any) -> str:
    """A value as an error message quotes it: short, and never a whole payload."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple | set | frozenset):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Bad(Exception):
    """A value that does not fit its type. Containers add their segment to ``path`` as it passes out,
    so the happy path never builds a path string."""

    def __init__(self, problem: str, expected: str, *, missing: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.expected = expected
        self.missing = missing
        self.path: list[str] = []  # innermost segment first


# ---------------------------------------------------------------------------------------------------
# The type nodes: one per analysed type, each knowing its schema data type and how to coerce a value.
# ---------------------------------------------------------------------------------------------------

class _Type:
    __slots__ = ()

    def data_type(self) -> dict[str, Any]:
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        raise NotImplementedError


class _Scalar(_Type):
    __slots__ = ("coerce", "noun", "tag")

    def __init__(self, tag: str, noun: str, coerce: Callable[[Any], Any]) -> None:
        self.tag, self.noun, self.coerce = tag, noun, coerce

    def data_type(self) -> dict[str, Any]:
        return {"type": self.tag, self.tag: {}}

    def convert(self, value: Any) -> Any:
        try:
            return self.coerce(value)
        except (TypeError, ValueError, ArithmeticError):
            raise _Bad(f"{_show(value)} is not {self.noun}", self.tag) from None


class _Opaque(_Type):
    """A type the schema cannot describe but the SDK accepts: an object with no known fields."""

    __slots__ = ("build", "noun")

    def __init__(self, build: Callable[[Any], Any] | None = None, noun: str = "") -> None:
        self.build, self.noun = build, noun

    def data_type(self) -> dict[str, Any]:
        return {"type": "anonymousCustomType", "anonymousCustomType": {"fields": {}}}

    def convert(self, value: Any) -> Any:
        if self.build is None:
            return value
        try:
            return self.build(value)
        except Exception:
            raise _Bad(f"{_show(value)} is not {self.noun}", "anonymousCustomType") from None


class _OntologyEdit(_Type):
    """The union of the Ontology SDK's edit classes, a function's edits as its result (passed through)."""

    __slots__ = ()
    MEMBERS = frozenset({"AddObject", "ModifyObject", "DeleteObject", "AddLink", "RemoveLink"})

    def data_type(self) -> dict[str, Any]:
        return {"ontologyEdit": {}, "type": "ontologyEdit"}  # the SDK's key order, for identical JSON

    def convert(self, value: Any) -> Any:
        return value


class _Optional(_Type):
    __slots__ = ("inner",)

    def __init__(self, inner: _Type) -> None:
        self.inner = inner

    def data_type(self) -> dict[str, Any]:
        return {"type": "optionalType", "optionalType": {"wrappedType": self.inner.data_type()}}

    def convert(self, value: Any) -> Any:
        # The SDK hands an Optional field's value over unconverted (an Optional[date] stays a string);
        # cmworker converts it like the type it wraps, so the annotation tells the truth.
        return None if value is None else self.inner.convert(value)


class _Collection(_Type):
    __slots__ = ("build", "element", "tag")

    def __init__(self, tag: str, element: _Type, build: Callable[[list[Any]], Any]) -> None:
        self.tag, self.element, self.build = tag, element, build

    def data_type(self) -> dict[str, Any]:
        return {"type": self.tag, self.tag: {"elementsType": self.element.data_type()}}

    def convert(self, value: Any) -> Any:
        # A string or an object is iterable too, but never meant as a list (the SDK iterates them).
        if not isinstance(value, list | tuple | set | frozenset):
            raise _Bad(f"{_show(value)} is not a list", self.tag)
        convert = self.element.convert
        items = []
        for index, item in enumerate(value):
            try:
                items.append(convert(item))
            except _Bad as bad:
                bad.path.append(f"[{index}]")
                raise
        if self.build is list:
            return items
        try:
            return self.build(items)
        except TypeError as exc:  # a set of unhashable elements
            raise _Bad(f"its elements cannot be put in a {self.tag} ({exc})", self.tag) from None


class _Map(_Type):
    __slots__ = ("build", "keys", "values")

    def __init__(self, keys: _Type, values: _Type, build: Callable[[dict[Any, Any]], Any] = dict) -> None:
        self.keys, self.values, self.build = keys, values, build

    def data_type(self) -> dict[str, Any]:
        return {"type": "map", "map": {"keysType": self.keys.data_type(), "valuesType": self.values.data_type()}}

    def convert(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Bad(f"{_show(value)} is not an object", "map")
        convert_key, convert_value = self.keys.convert, self.values.convert
        result = {}
        for key, item in value.items():
            try:
                typed_key = convert_key(key)
            except _Bad as bad:
                raise _Bad(f"key {bad.problem}", bad.expected) from None
            try:
                result[typed_key] = convert_value(item)
            except _Bad as bad:
                bad.path.append(f"[{json.dumps(key)}]" if isinstance(key, str) else f"[{key!r}]")
                raise
        return result if self.build is dict else self.build(result)


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    type: _Type
    required: bool   # the schema's "required": the class gives it no default
    optional: bool   # its type is Optional, so a missing value is None (as the SDK does)


class _Record(_Type):
    """A class whose annotated fields are the inputs: a TypedDict, a dataclass, or an annotated class."""

    __slots__ = ("build", "fields", "name")

    def __init__(self, name: str, fields: tuple[_Field, ...], build: Callable[..., Any] | None) -> None:
        self.name, self.fields, self.build = name, fields, build  # build None: a TypedDict, a plain dict

    def data_type(self) -> dict[str, Any]:
        return {"type": "anonymousCustomType",
                "anonymousCustomType": {"fields": {f.name: f.type.data_type() for f in self.fields}}}

    def convert(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Bad(f"{_show(value)} is not an object ({self.name})", "anonymousCustomType")
        arguments: dict[str, Any] = {}
        for field in self.fields:
            if field.name in value:
                try:
                    arguments[field.name] = field.type.convert(value[field.name])
                except _Bad as bad:
                    bad.path.append("." + field.name)
                    raise
            elif field.required:
                if not field.optional:
                    missing = _Bad("is required but missing", field.type.data_type()["type"], missing=True)
                    missing.path.append("." + field.name)
                    raise missing
                arguments[field.name] = None
            # else: left out, so the class's own default applies
        if self.build is None:
            return arguments
        try:
            return self.build(**arguments)
        except Exception as exc:  # __post_init__ or __init__ validation: the input is at fault
            raise _Bad(f"{self.name}(...) raised {type(exc).__name__}: {exc}", "anonymousCustomType") from None


_STRING = _Scalar("string", "a string", _to_str)
_SCALARS: dict[Any, _Scalar] = {
    str: _STRING,
    int: _Scalar("integer", "an integer", _to_int),
    float: _Scalar("float", "a number", _to_float),
    bool: _Scalar("boolean", "a boolean", _to_bool),
    bytes: _Scalar("binary", "a string (binary)", _to_bytes),
    date: _Scalar("date", "a date", _to_date),
    datetime: _Scalar("timestamp", "a datetime", _to_datetime),
    Decimal: _Scalar("decimal", "a decimal", _to_decimal),
}
# NewTypes by (name, base): ours above and the SDK's are different objects with the same meaning.
_WIDTHS: dict[tuple[str, type], _Scalar] = {
    ("Long", int): _Scalar("long", "an integer", _to_int),
    ("Short", int): _Scalar("short", "an integer", _to_int),
    ("Byte", int): _Scalar("byte", "an integer", _to_int),
    ("Double", float): _Scalar("double", "a number", _to_float),
}
# Map keys must be one of these (or a subclass, such as a str Enum), as in the SDK.
_KEY_CLASSES = (str, int, float, bool, bytes, date, datetime, Decimal)


# ---------------------------------------------------------------------------------------------------
# Analysis: type hint → node.
# ---------------------------------------------------------------------------------------------------

def _analyse(hint: Any, where: str, seen: tuple[type, ...], for_input: bool) -> _Type:
    """The node for ``hint``; ``where`` names its place for errors, ``seen`` the records it is inside."""
    hint = _strip_annotated(hint)
    if hint is None or hint is type(None) or hint is Any:
        return _Opaque()
    if isinstance(hint, NewType):
        width = _WIDTHS.get((hint.__name__, hint.__supertype__))  # type: ignore[arg-type]
        return width if width is not None else _analyse(hint.__supertype__, where, seen, for_input)
    if _is_union(hint):
        members = typing.get_args(hint)
        if {getattr(m, "__name__", None) for m in members} >= _OntologyEdit.MEMBERS:
            return _OntologyEdit()
        if len(members) == 2 and type(None) in members:
            inner = members[0] if members[1] is type(None) else members[1]
            return _Optional(_analyse(inner, where, seen, for_input))
        raise UnsupportedType(f"{where}: {_name(hint)} is not supported; the only union is `X | None`")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is not None:
        return _generic(hint, origin, args, where, seen, for_input)
    if hint is dict:
        return _Map(_STRING, _Opaque())  # the SDK refuses a bare dict; an object of anything is its meaning
    scalar = _SCALARS.get(hint)
    if scalar is not None:
        return scalar
    if isinstance(hint, type):
        return _class(hint, where, seen, for_input)
    raise UnsupportedType(f"{where}: {_name(hint)} has no schema data type")


def _generic(hint: Any, origin: Any, args: tuple[Any, ...], where: str, seen: tuple[type, ...],
             for_input: bool) -> _Type:
    def element(suffix: str) -> _Type:
        return _analyse(args[0], where + suffix, seen, for_input)

    if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
        # A bare typing.List is the class list, which the SDK describes as an object without fields.
        return _Collection("list", element("[]"), list) if args else _Opaque()
    if origin in (set, frozenset, collections.abc.Set):
        return _Collection("set", element("[]"), set if origin is set else frozenset) if args else _Opaque()
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _Collection("list", element("[]"), tuple)
    if origin in (dict, collections.abc.Mapping):
        if not args:
            return _Map(_STRING, _Opaque())
        return _Map(_key(args[0], where), _analyse(args[1], where + "[…]", seen, for_input))
    raise UnsupportedType(f"{where}: {_name(hint)} has no schema data type")


def _key(hint: Any, where: str) -> _Type:
    base = _strip_annotated(hint)
    while isinstance(base, NewType) and (base.__name__, base.__supertype__) not in _WIDTHS:
        base = base.__supertype__
    if isinstance(base, NewType) or (isinstance(base, type) and issubclass(base, _KEY_CLASSES)):
        return _analyse(hint, where + " key", (), True)
    raise UnsupportedType(f"{where}: map keys must be str, int, float, bool, bytes, date, datetime or "
                          f"Decimal (or a subclass, such as a str Enum), not {_name(hint)}")


def _class(cls: type, where: str, seen: tuple[type, ...], for_input: bool) -> _Type:
    if issubclass(cls, enum.Enum):
        values = ", ".join(repr(member.value) for member in cls)
        return _Opaque(cls, f"one of {values if len(values) <= 60 else values[:57] + '...'}")
    is_dataclass = dataclasses.is_dataclass(cls)
    is_typeddict = typing.is_typeddict(cls)
    hints = _field_hints(cls)
    if not hints and not is_dataclass and not is_typeddict:
        return _Opaque()  # int subclasses, dict subclasses, object…: the SDK calls them empty objects
    if cls in seen:
        raise UnsupportedType(f"{where}: {cls.__qualname__} contains itself; a recursive type has no schema")
    if is_dataclass:
        # Fields the constructor does not take are set by the class itself: not inputs, but outputs.
        names = {f.name for f in dataclasses.fields(cls) if f.init or not for_input}  # type: ignore[arg-type]
        hints = {name: hint for name, hint in hints.items() if name in names}
    if issubclass(cls, dict):
        optional_keys: frozenset[str] = getattr(cls, "__optional_keys__", frozenset())
        required = {name: name not in optional_keys for name in hints}
        build: Callable[..., Any] | None = None if is_typeddict else cls
    else:
        required = _constructor_requires(cls, hints, where, for_input)
        build = cls
    fields = []
    for name, hint in hints.items():
        node = _analyse(hint, f"{where}.{name}", (*seen, cls), for_input)
        fields.append(_Field(name, node, required[name], isinstance(node, _Optional)))
    return _Record(cls.__qualname__, tuple(fields), build)


def _constructor_requires(cls: type, hints: Mapping[str, Any], where: str, for_input: bool) -> dict[str, bool]:
    """Which fields the class's constructor requires; for an input, also that it takes each field by
    name and wants nothing else (the SDK demands the same, more strictly)."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        if for_input:
            raise UnsupportedType(f"{where}: the constructor of {cls.__qualname__} has no readable signature") \
                from None
        return dict.fromkeys(hints, True)
    if for_input:
        by_name = {p.name: p for p in parameters.values()
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        refused = [name for name in hints if name not in by_name and not takes_any]
        wanted = [p.name for p in parameters.values() if p.default is p.empty and p.name not in hints
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if refused or wanted:
            raise UnsupportedType(
                f"{where}: {cls.__qualname__}(...) must take its annotated fields as keyword arguments and "
                f"nothing else" + (f"; it does not take {', '.join(refused)}" if refused else "")
                + (f"; it also requires {', '.join(wanted)}" if wanted else ""))
    required = {}
    for name in hints:
        parameter = parameters.get(name)
        required[name] = parameter is None or parameter.default is parameter.empty
    return required


def _field_hints(cls: type) -> dict[str, Any]:
    """The class's annotated fields with their resolved types, ClassVars left out."""
    try:
        # Resolved in the class's own module (the SDK resolves in an empty namespace, so string
        # annotations, as under `from __future__ import annotations`, never work there).
        hints = typing.get_type_hints(cls)
    except NameError:
        raise
    except Exception as exc:
        raise UnsupportedType(f"the annotations of {cls.__qualname__} cannot be read: {exc}") from exc
    if sys.version_info < (3, 11):  # 3.10 leaves `list["Node"]` and typing_extensions.NotRequired as they are
        module = sys.modules.get(cls.__module__)
        scope = ({} if module is None else vars(module), {**vars(cls), cls.__name__: cls})
        hints = {name: _resolve_names(hint, *scope) for name, hint in hints.items()}
    return {name: hint for name, hint in hints.items() if typing.get_origin(hint) is not typing.ClassVar}


def _resolve_names(hint: Any, globalns: dict[str, Any], localns: dict[str, Any]) -> Any:
    """``hint`` with the forward references left inside built-in generics evaluated, as 3.11 does."""
    if getattr(typing.get_origin(hint), "_name", None) in ("Required", "NotRequired"):
        return _resolve_names(typing.get_args(hint)[0], globalns, localns)  # typing_extensions' TypedDict
    if isinstance(hint, str | typing.ForwardRef):
        name = hint if isinstance(hint, str) else hint.__forward_arg__
        try:
            return eval(name, globalns, localns)  # what typing.get_type_hints does with a string
        except Exception as exc:
            raise UnsupportedType(f"the annotation {name!r} cannot be resolved: {exc}") from exc
    if isinstance(hint, types.GenericAlias):
        args = tuple(_resolve_names(arg, globalns, localns) for arg in hint.__args__)
        return hint if args == hint.__args__ else types.GenericAlias(hint.__origin__, args)  # type: ignore[arg-type]
    if _is_union(hint):
        args = tuple(_resolve_names(arg, globalns, localns) for arg in typing.get_args(hint))
        return hint if args == typing.get_args(hint) else typing.Union[args]  # noqa: UP007 - built from a tuple
    return hint


def _strip_annotated(hint: Any) -> Any:
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _is_union(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return origin is typing.Union or origin is types.UnionType


def _name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__qualname__
    return repr(hint).replace("typing.", "")
