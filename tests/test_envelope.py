"""Reading a job envelope's own fields from its ends (``cmworker.app.envelope``): every shape a runtime
sends is read as ``json.loads`` reads it, any other gives ``None`` (the parent then parses in full), and a
body that the ends read one way and the full parse another is caught by ``disagreement``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmworker.app.envelope import V1, disagreement, read_envelope


def body(*pairs: tuple[str, Any], root_after: str = "") -> bytes:
    """An envelope whose computeModuleJobV1 has ``pairs`` in this order (``query`` among them)."""
    inner = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs)
    return f'{{"type": "computeModuleJobV1", "computeModuleJobV1": {{{inner}}}{root_after}}}'.encode()


def full(data: bytes) -> dict[str, Any]:
    v1: dict[str, Any] = json.loads(data)[V1]
    return v1


CREDS = (("temporaryCredentialsAuthToken", "temp-token-1234"), ("authHeader", "Bearer header-5678"))


@pytest.mark.parametrize("data", [
    body(("jobId", "j1"), ("queryType", "echo"), ("query", {"x": [1, 2]}), *CREDS, ("userId", "u")),
    body(("jobId", "j1"), ("queryType", "echo"), *CREDS, ("query", "a string")),             # creds first
    body(("jobId", "j\u00e9\"q"), ("queryType", "echo"), ("query", 1), *CREDS),              # escapes in the id
    body(("jobId", "j1"), ("queryType", "echo"), ("query", "ends, \"authHeader\": \"x\"}}")),  # lookalike text
    body(("jobId", "j1"), ("queryType", "echo"), ("query", {"a": 1, "authHeader": "inner"}), *CREDS),
    body(("jobId", "j1"), ("queryType", "echo"), ("query", None), ("n", 1.5e3), ("t", True)),
], ids=repr)
def test_every_runtime_shape_is_read_as_the_full_parse_reads_it(data: bytes) -> None:
    fields = read_envelope(data)
    assert fields is not None
    v1 = full(data)
    assert fields == {k: v for k, v in v1.items() if k != "query"}
    assert disagreement(fields, v1) is None


@pytest.mark.parametrize("data", [
    body(("jobId", "first"), ("queryType", "echo"), ("query", 1), ("jobId", "second")),  # a duplicate key
    body(("jobId", 7), ("queryType", "echo"), ("query", 1)),                             # a number
    body(("queryType", "echo"), ("query", 1)),                                           # no id
    body(("queryType", "echo"), ("query", {"jobId": "inner"}), ("jobId", "outer"), *CREDS),  # id after the query
    body(("jobId", "j1"), ("query", 1), ("queryType", "echo")),                          # function after it
    body(("jobId", "j1"), ("queryType", "echo"), ("query", 1), *((f"k{i}", i) for i in range(20))),  # long tail
    b'{"computeModuleJobV1": {"jobId": "a", "queryType": "echo", "query": 1}, "type": "computeModuleJobV1"}',
    body(("jobId", "j1"), ("queryType", "echo"), ("query", 1), *CREDS, ("big", "y" * 70_000)),  # creds out of reach
    body(("jobId", "j1"), ("queryType", "echo"), ("query", 1), ("authHeader", "Bearer own-1234"),  # a member after
         root_after=', "extra": {"k": "v"}'),
    b"[1, 2]", b"not json",
], ids=lambda data: repr(data[:90]))
def test_any_other_shape_is_left_to_the_full_parse(data: bytes) -> None:
    assert read_envelope(data) is None


@pytest.mark.parametrize("data", [
    body(("jobId", "j1"), ("queryType", "echo"), ("query", 1), ("extra", {"nested": 1}), *CREDS),  # not a scalar
], ids=lambda data: repr(data[:90]))
def test_a_field_the_ends_cannot_read_is_one_the_parent_does_not_use(data: bytes) -> None:
    fields = read_envelope(data)
    assert fields is not None and disagreement(fields, full(data)) is None


def test_a_long_credential_is_read() -> None:
    data = body(("jobId", "j1"), ("queryType", "echo"), ("query", 1), ("authHeader", "Bearer " + "t" * 20_000))
    fields = read_envelope(data)
    assert fields is not None and disagreement(fields, full(data)) is None


def test_a_member_after_the_job_that_ends_like_its_tail_is_caught_by_the_comparison() -> None:
    # The ends take the extra member's pair for the job's own credential: a body no runtime sends, told
    # apart only by parsing it all, which the worker does (and compares) before running anything.
    data = body(("jobId", "j1"), ("queryType", "echo"), ("query", 1),
                root_after=', "extra": {"k": 1, "authHeader": "Bearer not-the-jobs"}')
    fields = read_envelope(data)
    assert fields is not None and fields["authHeader"] == "Bearer not-the-jobs"
    assert disagreement(fields, full(data)) == "authHeader"


@pytest.mark.parametrize("data", [
    body(("queryType", "echo"), ("query", 1), ("jobId", "j1"), root_after=', "extra": {"a": 1, "jobId": "other"}'),
    body(("jobId", "j1"), ("query", 1), ("queryType", "echo"), root_after=', "extra": {"queryType": "other"}'),
], ids=["jobId", "queryType"])
def test_a_member_after_the_job_never_names_its_id_or_function(data: bytes) -> None:
    # Its pairs end the body as the job's own tail would: read from there, the answer went to the id it
    # named, or the function it named answered for the job (tests/test_redteam_wire.py).
    assert read_envelope(data) is None


def test_a_tail_past_the_window_is_left_to_the_full_parse() -> None:
    data = body(("jobId", "j1"), ("queryType", "echo"), ("query", "q" * 200_000),
                *((f"k{i}", "v" * 4000) for i in range(15)), *CREDS)
    assert len(data) > 200_000 and read_envelope(data) is None


def test_a_flat_object_query_of_many_scalars_is_read() -> None:
    query = {f"key{i}": i for i in range(50_000)}
    data = body(("jobId", "j1"), ("queryType", "echo"), ("query", query), *CREDS)
    assert read_envelope(data) == {"jobId": "j1", "queryType": "echo", **dict(CREDS)}


scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
keys = st.sampled_from(["jobId", "queryType", "query", "authHeader", "temporaryCredentialsAuthToken", "userId",
                        "x"])


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(keys, values), max_size=8), after=st.sampled_from(["", ', "z": {"k": "v"}',
                                                                                     ', "jobId": "evil"']))
def test_whenever_the_ends_and_the_full_parse_agree_they_agree_on_every_field_the_parent_uses(
        pairs: list[tuple[str, Any]], after: str) -> None:
    data = body(*pairs, root_after=after)
    fields = read_envelope(data)
    if fields is None:
        return
    v1 = full(data)
    if disagreement(fields, v1) is None:
        for key in ("jobId", "queryType", "authHeader", "temporaryCredentialsAuthToken"):
            assert fields.get(key) == v1.get(key)
        assert isinstance(fields["jobId"], str) and isinstance(fields["queryType"], str)
