# ruff: noqa: UP006, UP007, UP035, UP045 - the old typing spellings are among the hints under test
"""Schema inference: the same JSON as the official SDK infers for the same functions, and clear errors.

The SDK's own parser (``parse_function_schema``) is run on the very function objects cmworker
registered (``@cmworker.function`` returns the function itself), and the two schemas are compared as
serialized JSON, so key order counts too. The SDK resolves annotations in an empty namespace, which is
why the apps and the classes here use real annotations, never strings.
"""

import dataclasses
import datetime
import enum
import json
import os
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Dict, List, Literal, NewType, Optional, Set, TypedDict, Union

import pytest
from compute_modules.context import QueryContext
from compute_modules.function_registry import types as sdk_types
from compute_modules.function_registry.function_schema_parser import parse_function_schema

from cmworker.app.hints import Long
from cmworker.app.registry import FunctionSpec, isolated_registry, load_app
from cmworker.app.schema import UnsupportedType, app_schemas, infer_schema, output_data_type

# The official SDK's own inference and conversion differ on Python 3.10 (it rejects typing.Any and
# typing_extensions.NotRequired, and accepts hints it refuses on 3.11+): comparisons with it run on 3.11+.
SDK_PARITY = pytest.mark.skipif(sys.version_info < (3, 11), reason="the SDK behaves differently on Python 3.10")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPED_APP = os.path.join(ROOT, "tests", "apps", "typed_app.py")


@pytest.fixture(scope="module")
def typed_app() -> dict[str, FunctionSpec]:
    """The typed app's functions, imported afresh so that its decorators run; the registry is left as it was."""
    sys.modules.pop("typed_app", None)
    with isolated_registry():
        registry = load_app(TYPED_APP)
        return {name: spec for name, spec in registry.items() if spec.fn.__module__ == "typed_app"}


def sdk_schema(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    """The SDK's inference for ``fn``. The SDK insists that an annotated ``context`` is its own
    QueryContext; the context does not enter the schema, so it sees that annotation instead of ours."""
    if "context" in getattr(fn, "__annotations__", {}):
        clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        clone.__annotations__ = {**fn.__annotations__, "context": QueryContext}
        fn = clone
    schema: dict[str, Any] = parse_function_schema(fn, name, [], {}).function_schema  # type: ignore[assignment]
    return schema


def ours(fn: Callable[..., Any], name: str = "f") -> dict[str, Any]:
    return infer_schema(FunctionSpec(name, fn))


TYPED_FUNCTIONS = ["untyped", "returns_int", "returns_none", "returns_any_map", "order_total", "receipt", "search",
                   "filters", "distance", "bag", "no_fields", "count", "whoami", "echo_typed"]


@SDK_PARITY
@pytest.mark.parametrize("name", TYPED_FUNCTIONS)
def test_schema_of_each_typed_app_function_is_the_sdks(typed_app: dict[str, FunctionSpec], name: str) -> None:
    spec = typed_app[name]
    assert json.dumps(infer_schema(spec)) == json.dumps(sdk_schema(spec.fn, spec.name))


def test_typed_app_covers_every_function(typed_app: dict[str, FunctionSpec]) -> None:
    assert sorted(typed_app) == sorted(TYPED_FUNCTIONS)


def test_untyped_function_has_no_inputs_and_a_string_output() -> None:
    def f(context, event):  # type: ignore[no-untyped-def]
        return event

    assert ours(f) == {"functionName": "f", "inputs": [],
                       "output": {"type": "single", "single": {"dataType": {"type": "string", "string": {}}}},
                       "ontologyProvenance": None}


def test_app_schemas_keeps_registration_order(typed_app: dict[str, FunctionSpec]) -> None:
    assert [s["functionName"] for s in app_schemas(typed_app)] == list(typed_app)
    assert [s["functionName"] for s in app_schemas(typed_app.values())] == list(typed_app)


# ---------------------------------------------------------------------------------------------------
# One field at a time: the data type of each annotation, as input (a field of the event class) and as
# output (the return annotation), against the SDK.
# ---------------------------------------------------------------------------------------------------

class StrColour(str, enum.Enum):
    RED = "red"


class Plain(enum.Enum):
    A = 1


@dataclasses.dataclass
class Inner:
    when: datetime.datetime
    amount: Optional[Decimal] = None


class InnerDict(TypedDict):
    day: datetime.date


HINTS: list[Any] = [
    str, int, float, bool, bytes, datetime.date, datetime.datetime, Decimal,
    sdk_types.Long, sdk_types.Short, sdk_types.Byte, sdk_types.Double,
    list[int], List[str], set[str], Set[bytes], Iterable[float],
    dict[str, int], Dict[int, float], dict[datetime.date, str], dict[datetime.datetime, bool], dict[Decimal, int],
    dict[bool, str], dict[bytes, str], dict[StrColour, int], dict[sdk_types.Long, int],
    Optional[int], Union[None, str], int | None, Optional[List[Optional[Inner]]],
    Inner, InnerDict, list[Inner], dict[str, InnerDict],
    Any, object, list, set, frozenset, tuple, None, type(None), StrColour, Plain,
    Annotated[int, "a note"], Annotated[Optional[Inner], "x"],
]


def _event_with(hint: Any) -> Callable[..., Any]:
    event_class = dataclasses.make_dataclass("Event", [("field", hint)])

    def f(context, event: event_class):  # type: ignore[no-untyped-def, valid-type]
        return None

    return f


def _returning(hint: Any) -> Callable[..., Any]:
    def f(context, event):  # type: ignore[no-untyped-def]
        return None

    f.__annotations__["return"] = hint
    return f


@SDK_PARITY
# The SDK's constructor check compares a dataclass's raw annotations with its resolved hints, so it
# refuses a field annotated None (NoneType) or Annotated[...]; those two are compared as outputs only.
@pytest.mark.parametrize("hint", [h for h in HINTS if h is not None and typing.get_origin(h) is not Annotated],
                         ids=repr)
def test_input_field_data_type_is_the_sdks(hint: Any) -> None:
    fn = _event_with(hint)
    assert json.dumps(ours(fn)) == json.dumps(sdk_schema(fn, "f"))


@SDK_PARITY
@pytest.mark.parametrize("hint", HINTS, ids=repr)
def test_output_data_type_is_the_sdks(hint: Any) -> None:
    fn = _returning(hint)
    assert json.dumps(ours(fn)) == json.dumps(sdk_schema(fn, "f"))


def test_cmworkers_own_long_is_the_sdks_long() -> None:
    assert output_data_type(_returning(Long)) == output_data_type(_returning(sdk_types.Long)) == \
        {"type": "long", "long": {}}


def test_required_follows_defaults_and_typeddict_optional_keys() -> None:
    class Partial(TypedDict, total=False):
        a: int

    @dataclasses.dataclass
    class Defaults:
        a: int
        b: Optional[int]
        c: int = 0
        d: list[int] = dataclasses.field(default_factory=list)

    for cls in (Partial, Defaults):
        def f(context, event: cls):  # type: ignore[no-untyped-def, valid-type]
            return None

        sdk_inputs = sdk_schema(f, "f")["inputs"]
        assert ours(f)["inputs"] == sdk_inputs
    assert [i["required"] for i in ours(f)["inputs"]] == [True, True, False, False]


def test_inputs_come_from_the_second_parameter_whatever_the_first_is_called() -> None:
    def f(ctx, payload: Inner):  # type: ignore[no-untyped-def]
        return None

    assert [i["name"] for i in ours(f)["inputs"]] == ["when", "amount"]


# ---------------------------------------------------------------------------------------------------
# Where the SDK refuses a hint, cmworker gives it the obvious meaning (deliberate differences).
# ---------------------------------------------------------------------------------------------------

UserId = NewType("UserId", str)
LIST_INT = {"type": "list", "list": {"elementsType": {"type": "integer", "integer": {}}}}
ANY_MAP = {"type": "map", "map": {"keysType": {"type": "string", "string": {}},
                                  "valuesType": {"type": "anonymousCustomType", "anonymousCustomType": {"fields": {}}}}}


@pytest.mark.parametrize(("hint", "expected"), [
    (dict, ANY_MAP),
    (Dict, ANY_MAP),
    (Mapping[str, Any], ANY_MAP),
    (Sequence[int], LIST_INT),
    (tuple[int, ...], LIST_INT),
    (frozenset[int], {"type": "set", "set": {"elementsType": {"type": "integer", "integer": {}}}}),
    (UserId, {"type": "string", "string": {}}),
    (List, {"type": "anonymousCustomType", "anonymousCustomType": {"fields": {}}}),
    (Annotated[int, "a note"], {"type": "integer", "integer": {}}),
], ids=repr)
def test_hints_the_sdk_refuses_get_their_obvious_meaning(hint: Any, expected: dict[str, Any]) -> None:
    fn = _event_with(hint)
    if sys.version_info >= (3, 11):
        with pytest.raises((ValueError, IndexError)):
            sdk_schema(fn, "f")
    assert ours(fn)["inputs"][0]["dataType"] == expected


@pytest.mark.parametrize("hint", [Iterator[int], typing.Generator[int, None, None]], ids=repr)
def test_a_generator_return_type_is_a_list_of_its_items(hint: Any) -> None:
    if sys.version_info >= (3, 11):
        with pytest.raises(ValueError):
            sdk_schema(_returning(hint), "f")
    assert output_data_type(_returning(hint)) == LIST_INT


def test_classvars_and_non_init_fields_are_not_inputs_but_are_outputs() -> None:
    @dataclasses.dataclass
    class WithExtras:
        limit: ClassVar[int] = 5
        a: int
        computed: int = dataclasses.field(init=False, default=0)

    def f(context, event: WithExtras) -> WithExtras:  # type: ignore[no-untyped-def]
        return event

    schema = ours(f)
    assert [i["name"] for i in schema["inputs"]] == ["a"]
    assert list(schema["output"]["single"]["dataType"]["anonymousCustomType"]["fields"]) == ["a", "computed"]


def test_string_annotations_resolve_in_the_functions_module(tmp_path: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "future_app.py").write_text(
        "from __future__ import annotations\n"
        "import dataclasses, datetime\n"
        "@dataclasses.dataclass\n"
        "class Ev:\n"
        "    when: datetime.date\n"
        "    later: Later | None = None\n"
        "@dataclasses.dataclass\n"
        "class Later:\n"
        "    n: int\n"
        "def f(context, event: Ev) -> list[Later]:\n"
        "    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "future_app", raising=False)
    import future_app  # type: ignore[import-not-found]

    with pytest.raises(NameError):
        sdk_schema(future_app.f, "f")
    schema = ours(future_app.f)
    assert schema["inputs"][0]["dataType"] == {"type": "date", "date": {}}
    assert schema["inputs"][1]["dataType"]["optionalType"]["wrappedType"]["anonymousCustomType"]["fields"] == \
        {"n": {"type": "integer", "integer": {}}}
    assert schema["output"]["single"]["dataType"]["type"] == "list"


# ---------------------------------------------------------------------------------------------------
# Hints with no meaning: an error that names the function, the place and the type.
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Node:
    children: list["Node"]


class BadInit:
    a: int

    def __init__(self, b: int) -> None:
        self.a = b


@pytest.mark.parametrize(("hint", "words"), [
    (Union[int, str], ["f", "Event.field", "the only union is `X | None`"]),
    (Literal["a", "b"], ["Event.field", "Literal"]),
    (tuple[int, str], ["Event.field", "tuple[int, str]"]),
    (dict[tuple, int], ["map keys must be"]),  # type: ignore[type-arg]
    (dict[Plain, int], ["map keys must be", "Plain"]),
    (list[Callable[[], int]], ["Event.field[]", "Callable"]),
    (Node, ["Node contains itself"]),
    (BadInit, ["BadInit(...) must take its annotated fields", "does not take a", "also requires b"]),
], ids=repr)
def test_unsupported_input_hints_raise_naming_the_place(hint: Any, words: list[str]) -> None:
    with pytest.raises(UnsupportedType) as caught:
        ours(_event_with(hint))
    for word in words:
        assert word in str(caught.value)


def test_unsupported_output_hint_raises_naming_the_function() -> None:
    with pytest.raises(UnsupportedType, match=r"function 'f' returns: Union\[int, str\]"):
        ours(_returning(Union[int, str]))


def test_an_output_class_need_not_be_constructible_from_its_fields() -> None:
    assert output_data_type(_returning(BadInit)) == \
        {"type": "anonymousCustomType", "anonymousCustomType": {"fields": {"a": {"type": "integer", "integer": {}}}}}


def test_app_schemas_reports_every_failing_function() -> None:
    specs = [FunctionSpec("good", _returning(int)), FunctionSpec("bad1", _returning(Union[int, str])),
             FunctionSpec("bad2", _event_with(Literal[1]))]
    with pytest.raises(UnsupportedType) as caught:
        app_schemas(specs)
    assert "'bad1'" in str(caught.value) and "'bad2'" in str(caught.value) and "'good'" not in str(caught.value)


# ---------------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------------

def _cli(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "cmworker", "schema", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env)


def test_schema_command_prints_the_apps_schemas_as_json() -> None:
    done = _cli("tests/apps/typed_app.py")
    assert done.returncode == 0, done.stderr
    schemas = json.loads(done.stdout)
    assert [s["functionName"] for s in schemas] == TYPED_FUNCTIONS
    assert all(set(s) == {"functionName", "inputs", "output", "ontologyProvenance"} for s in schemas)


def test_schema_command_reports_a_bad_app_and_fails(tmp_path: Any) -> None:
    app = tmp_path / "bad_app.py"
    app.write_text("import cmworker\n"
                   "from typing import Union\n"
                   "@cmworker.function\n"
                   "def ok(context, event):\n"
                   "    return 1\n"
                   "def f(context, event) -> Union[int, str]:\n"
                   "    return 1\n"
                   "cmworker.function(f)\n")
    done = _cli(str(app))
    assert done.returncode == 1
    assert done.stdout == ""
    assert "function 'f' returns: Union[int, str] is not supported" in done.stderr


def test_schema_command_without_an_app_says_how_to_name_one(tmp_path: Any) -> None:
    done = _cli(cwd=str(tmp_path))
    assert done.returncode == 1
    assert "no app" in done.stderr


# ---------------------------------------------------------------------------------------------------
# Functions that edit the Ontology (edits=): ontologyProvenance as the SDK makes it.
# ---------------------------------------------------------------------------------------------------

EDITS_APP = os.path.join(ROOT, "tests", "apps", "edits_app.py")
TYPE_IDS = {"Aircraft": "aircraft-type-id", "Flight": "flight-type-id"}


@pytest.fixture(scope="module")
def edits_app() -> dict[str, FunctionSpec]:
    sys.modules.pop("edits_app", None)
    with isolated_registry():
        registry = load_app(EDITS_APP)
        return {name: spec for name, spec in registry.items() if spec.fn.__module__ == "edits_app"}


def sdk_build_time_schema(spec: FunctionSpec, type_ids: dict[str, str]) -> dict[str, Any]:
    """What the SDK's build-time inference writes for the same function and apiNameToTypeId table."""
    from compute_modules.function_registry.function import Function

    schema: dict[str, Any] = Function(spec.fn, list(spec.edits)).get_function_schema(type_ids)  # type: ignore[assignment]
    return schema


@SDK_PARITY
@pytest.mark.parametrize("name", ["ground", "delay", "no_edits"])
def test_schema_with_edits_at_run_time_is_the_sdks(edits_app: dict[str, FunctionSpec], name: str) -> None:
    """Served without a metadata config, as the SDK's own start-up registers it: the edited types unknown."""
    spec = edits_app[name]
    sdk = parse_function_schema(spec.fn, spec.name, list(spec.edits), {}).function_schema
    assert json.dumps(infer_schema(spec)) == json.dumps(sdk)


@SDK_PARITY
@pytest.mark.parametrize("name", ["ground", "delay", "no_edits"])
def test_schema_with_edits_and_a_type_id_table_is_the_sdks(edits_app: dict[str, FunctionSpec], name: str) -> None:
    spec = edits_app[name]
    ours_ = infer_schema(spec, TYPE_IDS, strict=True)
    assert json.dumps(ours_) == json.dumps(sdk_build_time_schema(spec, TYPE_IDS))
    if name == "ground":
        assert ours_["ontologyProvenance"] == {"editedObjects": {"aircraft-type-id": {}, "flight-type-id": {}},
                                               "editedLinks": {}}


def test_an_edited_type_missing_from_the_table_is_an_error_as_in_the_sdk(edits_app: dict[str, FunctionSpec]) -> None:
    partial = {"Aircraft": "aircraft-type-id"}
    with pytest.raises(ValueError, match="Flight"):
        sdk_build_time_schema(edits_app["ground"], partial)
    with pytest.raises(UnsupportedType, match="'ground' edits 'Flight'"):
        infer_schema(edits_app["ground"], partial, strict=True)
    assert infer_schema(edits_app["ground"], partial)["ontologyProvenance"] == \
        {"editedObjects": {"aircraft-type-id": {}}, "editedLinks": {}}


class AddObject: ...
class ModifyObject: ...
class DeleteObject: ...
class AddLink: ...
class RemoveLink: ...


OntologyEdit = Union[AddObject, ModifyObject, DeleteObject, AddLink, RemoveLink]


@SDK_PARITY
@pytest.mark.parametrize("hint", [OntologyEdit, list[OntologyEdit]], ids=repr)
def test_an_ontology_edit_result_type_is_the_sdks(hint: Any) -> None:
    fn = _returning(hint)
    assert json.dumps(ours(fn)) == json.dumps(sdk_schema(fn, "f"))


def test_schema_command_reads_the_metadata_config_in_the_working_directory(tmp_path: Any) -> None:
    (tmp_path / "ontology_metadata_config.json").write_text(json.dumps({"apiNameToTypeId": TYPE_IDS}))
    done = _cli(EDITS_APP, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    provenance = {s["functionName"]: s["ontologyProvenance"] for s in json.loads(done.stdout)}
    both = {"aircraft-type-id": {}, "flight-type-id": {}}
    assert provenance == {"ground": {"editedObjects": both, "editedLinks": {}},
                          "delay": {"editedObjects": {"flight-type-id": {}}, "editedLinks": {}},
                          "no_edits": None}


def test_schema_command_names_an_edited_type_missing_from_the_given_config(tmp_path: Any) -> None:
    config = tmp_path / "meta.json"
    config.write_text(json.dumps({"apiNameToTypeId": {"Aircraft": "a"}}))
    done = _cli(EDITS_APP, "--ontology-metadata-config", str(config))
    assert done.returncode == 1
    assert "edits 'Flight'" in done.stderr
