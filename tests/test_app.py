"""The typed app model: typed events built from queries, the job context, and when type hints are read.

Coercions are checked three ways: valid queries against the expected objects, each kind of bad query
against the ``InvalidInput`` it must raise (naming the field), and the same queries against the SDK's
own ``convert_payload`` — equal where cmworker means to agree, and different, on purpose and as
listed, where it does not.
"""

import copy
import dataclasses
import datetime
import json
import logging
import os
import pickle
import sys
import timeit
import types
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Optional

import pytest
from compute_modules.context import QueryContext, get_extra_context_parameters
from compute_modules.function_registry.function_payload_converter import convert_payload
from compute_modules.function_registry.function_schema_parser import parse_function_schema
from compute_modules.sources_v2 import _back_compat as sdk_sources

import cmworker
from cmworker import Context, InvalidInput
from cmworker.app import context as context_module
from cmworker.app.registry import FunctionSpec, isolated_registry, load_app, registry
from cmworker.app.schema import UnsupportedType
from cmworker.errors import AppLoadError
from tests.pool_harness import running_pool

# The official SDK's own inference and conversion differ on Python 3.10 (it rejects typing.Any and
# typing_extensions.NotRequired, and accepts hints it refuses on 3.11+): comparisons with it run on 3.11+.
SDK_PARITY = pytest.mark.skipif(sys.version_info < (3, 11), reason="the SDK behaves differently on Python 3.10")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPED_APP = os.path.join(ROOT, "tests", "apps", "typed_app.py")
JOB = {"jobId": "job-1", "tempCredsAuthToken": "temp-secret", "authHeader": "Bearer user-secret", "userId": "u-1"}


@pytest.fixture(autouse=True)
def clean_registry_and_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test sees the registry and the context extras as they were, and no source variables."""
    for name in ("SOURCE_CREDENTIALS", "SOURCE_CONFIGURATIONS_PATH", "CLIENT_ID", "CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    context_module.reset_extras()
    with isolated_registry():
        yield
    context_module.reset_extras()


@pytest.fixture(scope="module")
def loaded() -> tuple[dict[str, FunctionSpec], types.ModuleType]:
    """The typed app, imported afresh so that its decorators run; the registry is left as it was."""
    sys.modules.pop("typed_app", None)
    with isolated_registry():
        specs = {n: s for n, s in load_app(TYPED_APP).items() if s.fn.__module__ == "typed_app"}
        return specs, sys.modules["typed_app"]


@pytest.fixture(scope="module")
def typed(loaded: tuple[dict[str, FunctionSpec], types.ModuleType]) -> dict[str, FunctionSpec]:
    return loaded[0]


@pytest.fixture(scope="module")
def m(loaded: tuple[dict[str, FunctionSpec], types.ModuleType]) -> types.ModuleType:
    """The typed app module itself, for its classes."""
    return loaded[1]


def event(spec: FunctionSpec, query: Any) -> Any:
    return spec.prepare(dict(JOB), query)[1]


def sdk_event(spec: FunctionSpec, query: Any) -> Any:
    """What the SDK's runtime would pass as the event, for the same function and query."""
    fn = spec.fn
    if "context" in fn.__annotations__:  # the SDK accepts only its own QueryContext there
        fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        fn.__annotations__ = {**spec.fn.__annotations__, "context": QueryContext}
    node = parse_function_schema(fn, spec.name, [], {}).class_node
    return convert_payload(copy.deepcopy(query), node) if node is not None else query


ORDER = {
    "order_id": "A-1",
    "placed": "2024-01-02T03:04:05.250Z",
    "items": [{"sku": "x", "qty": 2, "price": "1.50"}, {"sku": "y", "qty": "3", "price": 2, "shipped": None}],
    "due": "2024-02-01",
    "discount": "0.5",
    "tags": ["a", "b"],
}


# ---------------------------------------------------------------------------------------------------
# Valid queries.
# ---------------------------------------------------------------------------------------------------

def test_order_is_built_with_every_coercion(typed: dict[str, FunctionSpec], m: types.ModuleType) -> None:
    assert event(typed["order_total"], ORDER) == m.Order(
        order_id="A-1",
        placed=datetime.datetime(2024, 1, 2, 3, 4, 5, 250000),
        items=[m.LineItem("x", 2, Decimal("1.50")), m.LineItem("y", 3, Decimal(2), None)],
        due=datetime.date(2024, 2, 1),
        note=None,  # missing, Optional, no default: None, as in the SDK
        discount=Decimal("0.5"),
        tags={"a", "b"},
    )


def test_bag_covers_bytes_bools_iterables_and_map_keys(typed: dict[str, FunctionSpec], m: types.ModuleType) -> None:
    query = {"blob": "héllo", "flag": False, "ratios": [1, "2.5"], "by_day": {"2024-01-01": 3},
             "groups": {"a": [1, "2"]}, "maybe_days": {"7": "2024-03-04", "8": None}, "where": {"x": 1}}
    assert event(typed["bag"], query) == m.Bag(
        blob="héllo".encode(), flag=False, ratios=[1.0, 2.5], by_day={datetime.date(2024, 1, 1): 3},
        groups={"a": [1, 2]}, maybe_days={7: datetime.date(2024, 3, 4), 8: None}, where=m.Point(1.0, 0.0))


def test_typeddict_events_are_plain_dicts_without_their_absent_optional_keys(typed: dict[str, FunctionSpec],
                                                                             m: types.ModuleType) -> None:
    built = event(typed["search"], {"text": "hi", "colour": "green", "extra": "ignored"})
    assert built == {"text": "hi", "colour": m.Colour.GREEN} and type(built) is dict
    assert event(typed["search"], {"text": "hi"}) == {"text": "hi", "colour": None}
    assert event(typed["filters"], {}) == {}


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-01-02T03:04:05Z", datetime.datetime(2024, 1, 2, 3, 4, 5)),
    ("2024-01-02T03:04:05.5Z", datetime.datetime(2024, 1, 2, 3, 4, 5, 500000)),
    ("2024-01-02T03:04:05.123456Z", datetime.datetime(2024, 1, 2, 3, 4, 5, 123456)),
    ("2024-01-02T05:04:05+02:00", datetime.datetime(2024, 1, 2, 3, 4, 5)),
])
def test_timestamps_become_naive_utc_datetimes_like_the_sdks(typed: dict[str, FunctionSpec], text: str,
                                                            expected: datetime.datetime) -> None:
    assert event(typed["order_total"], {**ORDER, "placed": text}).placed == expected


def test_a_null_query_is_an_empty_object(typed: dict[str, FunctionSpec], m: types.ModuleType) -> None:
    assert event(typed["count"], None) == m.Count(3)


def test_untyped_function_gets_the_query_itself(typed: dict[str, FunctionSpec]) -> None:
    query = {"anything": [1, "two"]}
    assert event(typed["untyped"], query) is query


@pytest.mark.parametrize("hint", [dict, Any, list[int], Optional[int], str])  # noqa: UP045 - a hint under test
def test_an_event_hint_without_fields_passes_the_query_through(hint: Any) -> None:
    def f(context, event):  # type: ignore[no-untyped-def]
        return event

    f.__annotations__["event"] = hint
    query = [1, {"a": 2}]
    assert FunctionSpec("f", f).prepare(dict(JOB), query)[1] is query


# ---------------------------------------------------------------------------------------------------
# Invalid queries: InvalidInput naming the field's path.
# ---------------------------------------------------------------------------------------------------

def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(base), **changes}


BAG = {"blob": "b", "flag": True, "ratios": [], "by_day": {}, "groups": {}, "maybe_days": {}, "where": None}
ITEM = {"sku": "x", "qty": 1, "price": "1"}

INVALID: list[tuple[str, Any, str, str | None]] = [
    ("order_total", {k: v for k, v in ORDER.items() if k != "order_id"},
     "field 'order_id' is required but missing", "order_id"),
    ("order_total", _with(ORDER, items=[ITEM, {"sku": "y", "qty": 1}]),
     "field 'items[1].price' is required but missing", "items[1].price"),
    ("order_total", _with(ORDER, items=[ITEM, ITEM, {**ITEM, "price": "abc"}]),
     "field 'items[2].price': 'abc' is not a decimal", "items[2].price"),
    ("order_total", _with(ORDER, items=[{**ITEM, "shipped": "abc"}]),
     "field 'items[0].shipped': 'abc' is not a datetime", "items[0].shipped"),
    ("order_total", _with(ORDER, placed="2024-01-02T03:04:05"),
     "field 'placed': '2024-01-02T03:04:05' is not a datetime", "placed"),
    ("order_total", _with(ORDER, due="02/01/2024"), "field 'due': '02/01/2024' is not a date", "due"),
    ("order_total", _with(ORDER, items="x"), "field 'items': 'x' is not a list", "items"),
    ("order_total", _with(ORDER, items=[5]), "field 'items[0]': 5 is not an object (LineItem)", "items[0]"),
    ("order_total", _with(ORDER, items=[{**ITEM, "qty": 2.5}]), "field 'items[0].qty': 2.5 is not an integer",
     "items[0].qty"),
    ("order_total", _with(ORDER, items=[{**ITEM, "qty": None}]), "field 'items[0].qty': null is not an integer",
     "items[0].qty"),
    ("order_total", _with(ORDER, tags=[["nested"]]), "field 'tags[0]': a list is not a string", "tags[0]"),
    ("order_total", _with(ORDER, order_id={"a": 1}), "field 'order_id': an object is not a string", "order_id"),
    ("order_total", _with(ORDER, due="x" * 100),
     "field 'due': '" + "x" * 36 + "... is not a date", "due"),
    ("order_total", _with(ORDER, items=[{**ITEM, "qty": -1}]),
     "the query: Order(...) raised ValueError: quantities cannot be negative", None),
    ("order_total", [ORDER], "the query must be a JSON object with the fields of Order, not a list", None),
    ("bag", _with(BAG, blob=5), "field 'blob': 5 is not a string (binary)", "blob"),
    ("bag", _with(BAG, flag="yes"), "field 'flag': 'yes' is not a boolean", "flag"),
    ("bag", _with(BAG, by_day={"nope": 1}), "field 'by_day': key 'nope' is not a date", "by_day"),
    ("bag", _with(BAG, groups={"a": [1, "x"]}), "field 'groups[\"a\"][1]': 'x' is not an integer", 'groups["a"][1]'),
    ("bag", _with(BAG, where={"y": 1}), "field 'where.x' is required but missing", "where.x"),
    ("search", {"text": "t", "colour": "blue"}, "field 'colour': 'blue' is not one of 'red', 'green'", "colour"),
    ("distance", {"x": True}, "field 'x': true is not a number", "x"),
    ("count", {"upto": None}, "field 'upto': null is not an integer", "upto"),
]


@pytest.mark.parametrize(("function", "query", "message", "field"), INVALID, ids=[i[2][:60] for i in INVALID])
def test_a_query_that_does_not_fit_raises_invalid_input_naming_the_field(
        typed: dict[str, FunctionSpec], function: str, query: Any, message: str, field: str | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        event(typed[function], query)
    payload = caught.value.to_payload()
    assert payload["kind"] == "invalid_input"
    assert payload["error"].startswith(message)
    assert payload["field"] == field
    assert len(payload["error"]) < 200  # never the whole payload


# ---------------------------------------------------------------------------------------------------
# Against the SDK's convert_payload.
# ---------------------------------------------------------------------------------------------------

AGREED: list[tuple[str, Any]] = [
    ("order_total", ORDER),
    ("order_total", _with(ORDER, note="hello", tags=[], discount=1)),
    ("receipt", _with(ORDER, placed="2024-01-02T03:04:05Z")),
    ("search", {"text": "hi", "limit": "3", "colour": None}),
    ("filters", {}),
    ("filters", {"since": "2024-01-01", "owners": ["a", "b"]}),
    ("distance", {"x": 3, "y": "4"}),
    ("distance", {"x": 1.5}),
    ("bag", {"blob": "héllo", "flag": True, "ratios": [1, "2.5"], "by_day": {"2024-01-01": 3},
             "groups": {"a": [1, "2"]}, "maybe_days": {"1": None}, "where": None}),
    ("count", {}),
    ("count", {"upto": 5.0}),
    ("no_fields", {"ignored": 1}),
    ("whoami", {"upto": "2"}),
    ("untyped", {"a": [1, 2]}),
]


@SDK_PARITY
@pytest.mark.parametrize(("function", "query"), AGREED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(AGREED)])
def test_coercion_agrees_with_the_sdks_convert_payload(typed: dict[str, FunctionSpec], function: str,
                                                       query: Any) -> None:
    ours, theirs = event(typed[function], copy.deepcopy(query)), sdk_event(typed[function], query)
    assert ours == theirs
    assert type(ours) is type(theirs)


def _sdk_outcome(spec: FunctionSpec, query: Any) -> Any:
    try:
        return sdk_event(spec, query)
    except Exception as exc:
        return type(exc)


def _outcome(spec: FunctionSpec, query: Any) -> Any:
    try:
        return event(spec, query)
    except InvalidInput:
        return InvalidInput


# (function, query, what to compare, the SDK's outcome, cmworker's outcome): each a deliberate difference.
DIFFERENT: list[tuple[str, str, Any, Callable[[Any], Any] | None, Any, Any]] = [
    ("an Optional value is converted, not passed through", "order_total",
     _with(ORDER, items=[{**ITEM, "shipped": "2024-01-02T03:04:05Z"}]), lambda e: e.items[0].shipped,
     "2024-01-02T03:04:05Z", datetime.datetime(2024, 1, 2, 3, 4, 5)),
    ("a float becomes the Decimal it was written as", "order_total", _with(ORDER, discount=1.1),
     lambda e: e.discount, Decimal(1.1), Decimal("1.1")),  # noqa: RUF032 - the SDK's result
    ("a fractional number is not truncated into an int", "count", {"upto": 2.7}, None, None, InvalidInput),
    ('"false" is False', "bag", _with(BAG, flag="false"), lambda e: e.flag, True, False),
    ("an object is not a string", "order_total", _with(ORDER, order_id={"a": 1}), None, None, InvalidInput),
    ("a string is not a list of its characters", "order_total", _with(ORDER, tags="ab"), None, None, InvalidInput),
    ("null is not an int", "count", {"upto": None}, lambda e: e.upto, None, InvalidInput),
    ("a timestamp with an offset is read", "order_total", _with(ORDER, placed="2024-01-02T03:04:05+00:00"),
     lambda e: e.placed, ValueError, datetime.datetime(2024, 1, 2, 3, 4, 5)),
    ("an Optional class is built", "bag", _with(BAG, where={"x": 2}), lambda e: e.where, {"x": 2}, "Point"),
    ("a null query builds the defaults", "count", None, lambda e: e, None, "Count"),
]


@SDK_PARITY
@pytest.mark.parametrize(("why", "function", "query", "pick", "sdk", "cmworker"), DIFFERENT,
                         ids=[d[0] for d in DIFFERENT])
def test_coercion_differs_from_the_sdk_only_on_purpose(typed: dict[str, FunctionSpec], why: str, function: str,
                                                       query: Any, pick: Callable[[Any], Any] | None, sdk: Any,
                                                       cmworker: Any) -> None:
    spec = typed[function]
    theirs, ours = _sdk_outcome(spec, query), _outcome(spec, query)
    if pick is not None and not isinstance(theirs, type):
        theirs = pick(theirs)
    if pick is not None and ours is not InvalidInput:
        ours = pick(ours)
    if sdk is not None or pick is not None:
        assert theirs == sdk
    if isinstance(cmworker, str):
        assert type(ours).__name__ == cmworker
    else:
        assert ours == cmworker


# ---------------------------------------------------------------------------------------------------
# The context.
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def sources_env(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    secrets = {"my_api": {"token": "s3cr3t"}}
    configs = {"my_api": {"sourceConfiguration": {"url": "https://example"}, "secrets": {"x": "y"}}}
    (tmp_path / "creds.json").write_text(json.dumps(secrets))
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    monkeypatch.setenv("SOURCE_CREDENTIALS", str(tmp_path / "creds.json"))
    monkeypatch.setenv("SOURCE_CONFIGURATIONS_PATH", str(tmp_path / "configs.json"))
    monkeypatch.setenv("CLIENT_ID", "client-id")
    monkeypatch.setenv("CLIENT_SECRET", "client-s3cr3t")
    return {"secrets": secrets, "configs": configs}


def _sdk_context(job: Mapping[str, Any]) -> dict[str, Any]:
    """The dict the SDK's handle_job builds, from its own helpers."""
    sdk_sources.get_mounted_source_secrets.cache_clear()
    sdk_sources.get_mounted_sources.cache_clear()
    return {**job, **get_extra_context_parameters()}


def test_untyped_context_is_the_sdks_dict_without_extras(typed: dict[str, FunctionSpec]) -> None:
    context = typed["untyped"].prepare(dict(JOB), {})[0]
    assert type(context) is dict
    assert context == _sdk_context(JOB) == {**JOB, "sources": {}, "source_configs": {}}


def test_untyped_context_carries_sources_and_client_credentials_like_the_sdks(
        typed: dict[str, FunctionSpec], sources_env: dict[str, Any]) -> None:
    context = typed["untyped"].prepare(dict(JOB), {})[0]
    assert context == _sdk_context(JOB)
    assert context["source_configs"] == {"my_api": {"url": "https://example"}}
    assert context["CLIENT_SECRET"] == "client-s3cr3t"


def test_client_credentials_need_both_variables(typed: dict[str, FunctionSpec],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENT_ID", "only-id")
    assert "CLIENT_ID" not in typed["untyped"].prepare(dict(JOB), {})[0]


def test_context_annotation_gets_a_context_object(typed: dict[str, FunctionSpec],
                                                  sources_env: dict[str, Any]) -> None:
    context = typed["whoami"].prepare(dict(JOB), {})[0]
    assert context == Context(jobId="job-1", userId="u-1", authHeader="Bearer user-secret",
                              tempCredsAuthToken="temp-secret", sources=sources_env["secrets"],
                              source_configs={"my_api": {"url": "https://example"}},
                              CLIENT_ID="client-id", CLIENT_SECRET="client-s3cr3t")


def test_context_repr_shows_no_secret(sources_env: dict[str, Any]) -> None:
    context = FunctionSpec("f", _context_typed(Context)).prepare(dict(JOB), None)[0]
    text = repr(context) + str(context)
    for secret in ("user-secret", "temp-secret", "client-s3cr3t", "s3cr3t", "https://example"):
        assert secret not in text
    assert "job-1" in text and "authHeader=<redacted>" in text and "my_api" in text


def test_sdk_query_context_annotation_gets_the_sdks_class(sources_env: dict[str, Any]) -> None:
    context = FunctionSpec("f", _context_typed(QueryContext)).prepare(dict(JOB), None)[0]
    assert context == QueryContext(**_sdk_context(JOB))


@pytest.mark.parametrize("hint", [dict, dict[str, Any], Mapping[str, Any], Any])
def test_a_mapping_context_annotation_gets_the_plain_dict(hint: Any) -> None:
    assert type(FunctionSpec("f", _context_typed(hint)).prepare(dict(JOB), None)[0]) is dict


def test_a_wrong_context_annotation_fails_at_decoration() -> None:
    with pytest.raises(UnsupportedType, match="function 'f': its first parameter receives the job context"):
        cmworker.function(_context_typed(str))


def test_sources_file_written_after_start_is_read_on_a_later_job(tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "creds.json"
    monkeypatch.setenv("SOURCE_CREDENTIALS", str(path))
    spec = FunctionSpec("f", _context_typed(None))
    assert spec.prepare(dict(JOB), None)[0]["sources"] == {}
    path.write_text('{"late": {"k": "v"}}')
    assert spec.prepare(dict(JOB), None)[0]["sources"] == {"late": {"k": "v"}}


def test_a_broken_sources_file_is_logged_once_without_its_content(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "creds.json"
    path.write_text('{"secret": "s3cr3t"')
    monkeypatch.setenv("SOURCE_CREDENTIALS", str(path))
    spec = FunctionSpec("f", _context_typed(None))
    with caplog.at_level(logging.WARNING, logger="cmworker.context"):
        for _ in range(3):
            assert spec.prepare(dict(JOB), None)[0]["sources"] == {}
    assert len(caplog.records) == 1
    assert "SOURCE_CREDENTIALS" in caplog.text and "s3cr3t" not in caplog.text


def _context_typed(hint: Any) -> Callable[..., Any]:
    def f(context, event):  # type: ignore[no-untyped-def]
        return None

    if hint is not None:
        f.__annotations__["context"] = hint
    return f


# ---------------------------------------------------------------------------------------------------
# When hints are read, and what prepare may raise.
# ---------------------------------------------------------------------------------------------------

def test_an_unusable_event_hint_fails_at_decoration_like_the_sdk() -> None:
    @dataclasses.dataclass
    class Bad:
        x: tuple[int, str]

    def f(context, event: Bad):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(UnsupportedType, match=r"function 'f': .*Bad\.x: tuple\[int, str\]"):
        cmworker.function(f)


def _write_app(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return str(tmp_path / f"{name}.py")


def test_a_class_defined_below_its_function_is_resolved_by_load_app(tmp_path: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_app(tmp_path, monkeypatch, "typed_later", (
        "from __future__ import annotations\n"
        "import dataclasses, cmworker\n"
        "@cmworker.function\n"
        "def f(context, event: Later) -> int:\n"
        "    return event.n\n"
        "@dataclasses.dataclass\n"
        "class Later:\n"
        "    n: int\n"))
    spec = load_app(path)["f"]
    assert spec.prepare(dict(JOB), {"n": "4"})[1].n == 4


def test_load_app_reports_unresolvable_hints_as_an_app_load_error(tmp_path: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_app(tmp_path, monkeypatch, "typed_missing", (
        "from __future__ import annotations\n"
        "import cmworker\n"
        "@cmworker.function\n"
        "def f(context, event: Nowhere):\n"
        "    return 1\n"))
    with pytest.raises(AppLoadError, match="function 'f': NameError: name 'Nowhere' is not defined"):
        load_app(path)


def test_prepare_answers_broken_hints_with_invalid_input_instead_of_raising_anything_else() -> None:
    def f(context, event: "Nowhere"):  # type: ignore[no-untyped-def, name-defined]  # noqa: F821
        return None

    with pytest.raises(InvalidInput, match="function 'f' cannot take jobs"):
        FunctionSpec("f", f).prepare(dict(JOB), {})


def test_load_app_of_an_attribute_reports_bad_hints_as_an_app_load_error(tmp_path: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_app(tmp_path, monkeypatch, "typed_attribute", (
        "from typing import Union\n"
        "import dataclasses\n"
        "@dataclasses.dataclass\n"
        "class Bad:\n"
        "    x: Union[int, str]\n"
        "def f(context, event: Bad):\n"
        "    return 1\n"))
    with pytest.raises(AppLoadError, match=r"function 'f': Bad\.x: Union\[int, str\] is not supported"):
        load_app(f"{path}:f")


def test_a_spec_with_its_hints_read_still_pickles(typed: dict[str, FunctionSpec]) -> None:
    spec = typed["whoami"]
    assert spec.call_types.context is not None
    copy_ = pickle.loads(pickle.dumps(spec))
    assert copy_.prepare(dict(JOB), {"upto": 1})[0] == spec.prepare(dict(JOB), {"upto": 1})[0]


def test_hints_are_read_once_per_function(typed: dict[str, FunctionSpec]) -> None:
    spec = typed["order_total"]
    assert spec.call_types is spec.call_types


def test_untyped_prepare_costs_next_to_nothing(typed: dict[str, FunctionSpec]) -> None:
    spec, job, query = typed["untyped"], dict(JOB), {"a": 1}
    seconds = timeit.timeit(lambda: spec.prepare(job, query), number=20_000) / 20_000
    assert seconds < 20e-6  # ~1 µs measured; the bound only catches an accidental per-job analysis


# ---------------------------------------------------------------------------------------------------
# Through real workers.
# ---------------------------------------------------------------------------------------------------

def test_typed_functions_run_in_the_pool_and_bad_queries_are_answered_invalid_input() -> None:
    with running_pool("typed_app.py", workers=1) as h:
        assert h.payload(h.run("order_total", ORDER)) == "8.50"
        assert h.payload(h.run("whoami", {"upto": 1})) == {"job": "job-1", "user": "", "type": "Count"}
        answer = h.run("order_total", _with(ORDER, due="soon"))
        assert answer.kind == "invalid_input"
        assert h.payload(answer) == {"error": "field 'due': 'soon' is not a date", "kind": "invalid_input",
                                     "field": "due", "expected": "date"}


def test_an_isolated_registry_forgets_what_was_registered_inside_it() -> None:
    def before(context: Any, event: Any) -> str:
        return "before"

    def inside(context: Any, event: Any) -> str:
        return "inside"

    cmworker.function(name="kept")(before)
    with isolated_registry():
        cmworker.function(name="kept")(inside)
        cmworker.function(name="new")(inside)
        assert registry()["kept"].fn is inside and "new" in registry()
    assert registry()["kept"].fn is before and "new" not in registry()
