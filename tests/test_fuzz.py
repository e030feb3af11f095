"""Fuzzing with hypothesis: job bodies through a served app, configuration files, the runtime's HTTP APIs.

1. Job bodies: a real ``cmworker run`` (one worker) serves tests/apps/typed_app.py against the embedded
   runtime. The runtime hands out real jobs (held, answerable), but the bytes of each GET body come
   from the test (``pool_harness.JobBodies`` wraps the replica's app): valid envelopes around random queries, wrong
   types, deep nesting, truncation, bytes that are not UTF-8. Every job whose body names its id must
   be answered exactly once, and an error answer must name the cause; a body with no usable id cannot
   be answered by anyone, but must not stop the replica. After each example a probe job is answered.
2. Configuration: random TOML documents, raw bytes, flags and environment values through
   ``load_config`` give a ``Config`` or a ``ConfigError`` that names the key — never another exception.
3. The embedded runtime's two HTTP APIs: random requests (methods, paths, headers, framing, bodies,
   even bytes that are not TLS) get an HTTP answer or a deliberate close, never a 500 or a hang, and
   the runtime still serves afterwards.

Examples are derandomized (the same inputs on every run) and few, so the file runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cmworker.app.envelope import FULL_PARSE_BELOW
from cmworker.config import Config, load_config
from cmworker.errors import ConfigError
from cmworker.runtime.embedded import EmbeddedRuntime
from cmworker.runtime.server import JOB_PATH, QUERY_API, RESULTS_PATH, SCHEMAS_PATH
from cmworker.settings import SETTINGS
from tests.pool_harness import ServedBodies, served_bodies

pytestmark = pytest.mark.timeout(180)



def fuzz(examples: int, *, shrink: bool = True) -> settings:
    """Derandomized (the same examples on every run), no deadline, no example database.

    ``shrink=False`` for the examples that each cost a job round trip: a failure is reported as found.
    """
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(derandomize=True, deadline=None, database=None, max_examples=examples, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])

WAIT = 30.0
SERVED_EXAMPLES = 30


# ---------------------------------------------------------------------------------------------------
# 1. Job bodies through a served app
# ---------------------------------------------------------------------------------------------------

class Served(ServedBodies):
    def run(self, make: Callable[[str], bytes]) -> tuple[str, Any]:
        """Hand out one job with the body ``make(job_id)``, then a probe; the case's (id, snapshot)."""
        job_id = self.case(make)
        return job_id, self.rt.record.job(job_id)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served_bodies(tmp_path_factory.mktemp("served"), "typed_app.py", "untyped", "fuzz_case", {"probe": True},
                       Served) as served:
        yield served


def envelope(job_id: str, query_type: Any = "untyped", query: Any = None, **v1: Any) -> dict[str, Any]:
    return {"type": "computeModuleJobV1",
            "computeModuleJobV1": {"jobId": job_id, "queryType": query_type, "query": query, **v1}}


def answered_once(served: Served, job_id: str) -> Any:
    """The job's one answer, decoded (asserts exactly one accepted POST)."""
    [snap] = served.rt.store.wait_finished([job_id], WAIT)
    assert snap is not None and snap.answer is not None, f"job {job_id} was not answered:\n{served.tail()}"
    assert served.rt.record.accepted(job_id) == 1, served.rt.record.result_posts(job_id)
    try:
        return json.loads(snap.answer)
    except ValueError:  # a streaming function's chunks: one JSON value after another
        return _concatenated(snap.answer.decode())


def _concatenated(text: str) -> list[Any]:
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


def error_of(payload: Any) -> tuple[str, str] | None:
    if isinstance(payload, dict) and "kind" in payload:
        return payload["kind"], payload.get("error") or payload.get("exception") or ""
    return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
# Surrogates are valid in JSON text (as \ud800 escapes) but are not Unicode characters.
odd_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()), max_size=20)


@fuzz(SERVED_EXAMPLES, shrink=False)
@given(query=json_values | odd_text)
def test_any_json_query_to_an_untyped_function_is_echoed_or_refused_by_name(served: Served, query: Any) -> None:
    job_id, _ = served.run(lambda jid: json.dumps(envelope(jid, "untyped", query)).encode())
    payload = answered_once(served, job_id)
    error = error_of(payload)
    if error is None:
        assert payload["event"] == query
    else:  # lone surrogates cannot be encoded as UTF-8: the result is refused, saying so
        assert error[0] == "result_not_serializable" and "surrogate" in error[1], payload


TYPED = ("order_total", "search", "filters", "distance", "bag", "no_fields", "count", "whoami")


@fuzz(SERVED_EXAMPLES, shrink=False)
@given(function=st.sampled_from(TYPED), query=json_values)
def test_a_query_of_the_wrong_shape_for_a_typed_function_is_answered_invalid_input(
        served: Served, function: str, query: Any) -> None:
    job_id, _ = served.run(lambda jid: json.dumps(envelope(jid, function, query)).encode())
    payload = answered_once(served, job_id)
    error = error_of(payload)
    if error is not None:
        assert error[0] == "invalid_input" and error[1], payload


@fuzz(SERVED_EXAMPLES, shrink=False)
@given(query_type=st.none() | st.integers() | st.booleans() | st.lists(st.text(max_size=3), max_size=2)
       | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2) | st.just("") | st.text(max_size=12),
       extra=st.dictionaries(st.sampled_from(["userId", "authHeader", "temporaryCredentialsAuthToken", "type"]),
                             json_values, max_size=3))
def test_a_wrong_or_missing_query_type_is_answered_by_name(served: Served, query_type: Any,
                                                           extra: dict[str, Any]) -> None:
    job_id, _ = served.run(lambda jid: json.dumps(envelope(jid, query_type, {"x": 1}, **extra)).encode())
    payload = answered_once(served, job_id)
    error = error_of(payload)
    if query_type == "untyped":
        return
    assert error is not None, payload
    if not isinstance(query_type, str) or not query_type:
        assert error[0] == "invalid_input" and "queryType" in error[1], payload
    else:
        assert error[0] == "unknown_function" and repr(query_type) in error[1], payload


@fuzz(SERVED_EXAMPLES, shrink=False)
@given(depth=st.integers(min_value=1, max_value=200_000), container=st.sampled_from("[{"))
def test_a_deeply_nested_query_is_answered_and_the_error_says_it_is_too_deep(
        served: Served, depth: int, container: str) -> None:
    inner = "[" * depth + "]" * depth if container == "[" else '{"a":' * depth + "1" + "}" * depth
    job_id, _ = served.run(lambda jid: json.dumps(envelope(jid, "untyped", None))
                           .replace("null}}", inner + "}}").encode())
    payload = answered_once(served, job_id)
    error = error_of(payload)
    if error is not None:
        assert error[0] in ("invalid_input", "result_not_serializable"), payload
        assert "deep" in error[1].lower() or "recursion" in error[1].lower(), payload


@fuzz(SERVED_EXAMPLES, shrink=False)
@given(noise=st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)), where=st.sampled_from(["query", "type"]))
def test_bytes_that_are_not_utf8_in_the_body_are_answered_invalid_input(served: Served, noise: bytes,
                                                                        where: str) -> None:
    def make(jid: str) -> bytes:
        if where == "query":  # inside the query's string
            return json.dumps(envelope(jid, "untyped", "MARK")).encode().replace(b"MARK", noise)
        # inside the envelope's "type", which cmworker does not read
        return json.dumps(envelope(jid, "untyped", {})).encode().replace(b'V1",', b'V1' + noise + b'",', 1)

    job_id, _ = served.run(make)
    payload = answered_once(served, job_id)
    error = error_of(payload)
    assert error is not None and error[0] == "invalid_input" and "UTF-8" in error[1], payload


@fuzz(SERVED_EXAMPLES, shrink=False)
@given(cut=st.floats(min_value=0.0, max_value=1.0, exclude_max=True), query=json_values, big=st.booleans())
def test_a_truncated_body_never_stops_the_replica(served: Served, cut: float, query: Any, big: bool) -> None:
    full = b""
    if big:  # read from its ends, not parsed in full, by the parent
        query = {"pad": "p" * FULL_PARSE_BELOW, "value": query}

    def make(jid: str) -> bytes:
        nonlocal full
        full = json.dumps(envelope(jid, "untyped", query, authHeader="Bearer TRUNCATEDSECRET42")).encode()
        return full[:int(len(full) * cut)]

    job_id, snap = served.run(make)
    time.sleep(0.05)  # its POST, if any, may trail the probe's
    snap = served.rt.record.job(job_id)
    assert snap is not None
    if snap.answer is not None:  # answered: only ever once, and as invalid input naming the cause
        payload = answered_once(served, job_id)
        assert error_of(payload) is not None and error_of(payload)[0] == "invalid_input", payload  # type: ignore[index]
    else:
        assert snap.status == "running"  # held: nobody could answer a body without its id
    assert "TRUNCATEDSECRET42" not in served.log.read_text(errors="replace")


@fuzz(SERVED_EXAMPLES, shrink=False)
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_a_body_of_random_bytes_never_stops_the_replica(served: Served, body: bytes) -> None:
    served.run(lambda jid: body)


@pytest.mark.parametrize("size", [2**20, 20 * 2**20])
def test_a_huge_query_is_echoed(served: Served, size: int) -> None:
    query = {"blob": "x" * size}
    job_id, _ = served.run(lambda jid: json.dumps(envelope(jid, "untyped", query)).encode())
    assert answered_once(served, job_id)["event"] == query


secret_text = st.text(st.sampled_from("ABCDEFGHJKMNPQRSTVWXYZ23456789"), min_size=12, max_size=40)
extra_fields = st.lists(st.tuples(st.sampled_from(["authHeader", "temporaryCredentialsAuthToken"]),
                                  secret_text.map(lambda t: "Bearer " + t) | secret_text)
                        | st.tuples(st.sampled_from(["userId", "x", "jobIdx", "queryType"]),
                                    st.none() | st.integers() | st.just("untyped") | st.text(max_size=8)),
                        max_size=5)


@fuzz(SERVED_EXAMPLES, shrink=False)
@given(query=json_values, extras=extra_fields, order=st.lists(st.integers(0, 99), min_size=8, max_size=8),
       spaced=st.booleans())
def test_a_big_envelope_in_any_arrangement_is_read_as_json_reads_it(served: Served, query: Any,
                                                                     extras: list[tuple[str, Any]],
                                                                     order: list[int], spaced: bool) -> None:
    # Past FULL_PARSE_BELOW the parent reads the envelope from its ends: any order of its fields, extra
    # and repeated keys, credentials before or after the query, compact or spaced JSON.
    padded = {"pad": "p" * FULL_PARSE_BELOW, "value": query}
    sep = (", ", ": ") if spaced else (",", ":")

    sent = b""

    def make(jid: str) -> bytes:
        nonlocal sent
        fields = [("jobId", jid), ("queryType", "untyped"), ("query", padded), *extras]
        fields = [field for _, _, field in sorted(zip(order, range(len(fields)), fields, strict=False))]
        inner = sep[0].join(json.dumps(k) + sep[1] + json.dumps(v) for k, v in fields)
        sent = ('{"type"' + sep[1] + '"computeModuleJobV1"' + sep[0] + '"computeModuleJobV1"' + sep[1]
                + "{" + inner + "}}").encode()
        return sent

    job_id, _ = served.run(make)
    function = json.loads(sent)["computeModuleJobV1"]["queryType"]  # the last one, as json reads it
    payload = answered_once(served, job_id)
    error = error_of(payload)
    if function == "untyped":
        assert error is None and payload["event"] == padded, (payload, sent[:300])
    else:
        assert error is not None and error[0] in ("invalid_input", "unknown_function"), payload
    log = served.log.read_text(errors="replace")
    for key, value in extras:
        if key in ("authHeader", "temporaryCredentialsAuthToken"):
            assert value.removeprefix("Bearer ") not in log


def test_a_body_read_otherwise_in_full_than_from_its_ends_runs_nothing(served: Served) -> None:
    # A member after computeModuleJobV1 that ends the body as the job's own fields would: the parent read
    # a credential the job does not have. The worker, parsing it all, refuses to run the function.
    def make(jid: str) -> bytes:
        body = json.dumps(envelope(jid, "untyped", {"pad": "p" * FULL_PARSE_BELOW})).encode()  # read from its ends
        return body[:-1] + b', "extra": {"k": 1, "authHeader": "Bearer not-the-jobs-1234"}}'

    job_id, _ = served.run(make)
    kind, message = error_of(answered_once(served, job_id)) or ("", "")
    assert kind == "invalid_input" and "authHeader" in message and "the function was not run" in message
    assert "not-the-jobs" not in message


def test_job_id_of_another_type_is_answered_or_refused_without_stopping(served: Served) -> None:
    for job_id in (None, 7, True, [], {}, ""):
        served.run(lambda jid, job_id=job_id: json.dumps(envelope(job_id, "untyped", {})).encode())  # type: ignore[misc]


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# 2. Configuration
# ---------------------------------------------------------------------------------------------------

SECTIONS = sorted({s.section for s in SETTINGS if s.section})
PER_FUNCTION = sorted(s.name for s in SETTINGS if s.per_function)
key_names = st.sampled_from(sorted({s.name for s in SETTINGS})) | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=8)
toml_scalars = st.one_of(
    st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1), st.floats(),
    st.text(max_size=12), st.datetimes(), st.dates(), st.times(),
    st.sampled_from(["none", "NONE", "0", "5m", "1h30m", "250ms", "-1s", "1e3s", "2GiB", "512MiB", "10", "1.5KB",
                     "0B", "3 s", "INFO", "warning", "sls", "console", "auto", "app", "app:f", "x.py", " "]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(key_names, inner, max_size=3), max_leaves=6)
toml_documents = st.fixed_dictionaries({}, optional={
    **{s.name: toml_values for s in SETTINGS if not s.section},
    **{section: st.dictionaries(key_names, toml_values, max_size=4) | toml_scalars for section in SECTIONS},
    "functions": st.dictionaries(st.text(max_size=6), st.dictionaries(st.sampled_from(PER_FUNCTION) | key_names,
                                                                      toml_values, max_size=3) | toml_scalars,
                                 max_size=2),
    "unknown": toml_values,
})


def to_toml(document: dict[str, Any]) -> str:
    """A minimal TOML writer: every table inline, so any nesting the strategies make is one line per key."""
    return "".join(f"{_toml_key(key)} = {_toml_value(value)}\n" for key, value in document.items())


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else "inf" if value == float("inf") else "-inf" if value == float("-inf") \
            else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes (surrogates aside)
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return value.isoformat()  # dates, times, datetimes: TOML spells them the ISO way


def _names(document: Any) -> set[str]:
    """Every key at any depth of a TOML document."""
    names: set[str] = set()
    if isinstance(document, dict):
        for key, value in document.items():
            names |= {key} | _names(value)
    elif isinstance(document, list):
        for value in document:
            names |= _names(value)
    return names


def _load(tmp: Path, text: str | bytes) -> Config:
    path = tmp / "cmworker.toml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text)
    return load_config(path, environ={}, cwd=tmp)


@fuzz(300)
@given(document=toml_documents)
def test_any_toml_document_is_a_config_or_a_config_error_naming_its_key(tmp_path: Path,
                                                                        document: dict[str, Any]) -> None:
    text = to_toml(document)
    try:
        _load(tmp_path, text)
    except ConfigError as exc:
        message = str(exc)
        if "invalid TOML" in message:
            return  # e.g. a surrogate in a string: the message points at the line and column instead
        named = [name for name in _names(document) if name and name in message]
        assert named, f"{message!r} names no key of\n{text}"


@fuzz(100)
@given(data=st.binary(max_size=300) | st.text(max_size=300))
def test_any_file_content_is_a_config_or_a_config_error_naming_the_file(tmp_path: Path, data: str | bytes) -> None:
    with contextlib.suppress(ConfigError):
        _load(tmp_path, data)


FLAGGED = [s for s in SETTINGS if s.flag]
ENVIRONED = [s for s in SETTINGS if s.env]


@fuzz(150)
@given(index=st.integers(min_value=0, max_value=len(FLAGGED) - 1),
       text=st.text(max_size=12) | st.sampled_from(["", "0", "-1", "none", "5m", "1GiB", " 3 ", "true"]),
       through=st.sampled_from(["flag", "env"]))
def test_any_flag_or_environment_value_is_a_config_or_a_config_error_naming_it(index: int, text: str,
                                                                             through: str) -> None:
    setting = FLAGGED[index] if through == "flag" else ENVIRONED[index % len(ENVIRONED)]
    try:
        if through == "flag":
            load_config(None, flags={setting.key: text}, environ={}, cwd="/nonexistent")
        else:
            assert setting.env is not None
            load_config(None, environ={setting.env: text.replace("\0", "")}, cwd="/nonexistent")
    except ConfigError as exc:
        name = setting.flag if through == "flag" else setting.env
        assert name is not None and (name in str(exc) or setting.key in str(exc)), str(exc)


# ---------------------------------------------------------------------------------------------------
# 3. The runtime's HTTP APIs
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime(long_poll=0.2) as rt:
        yield rt


@dataclass(frozen=True)
class Request:
    api: str                 # "query" or "module"
    head: bytes
    body: bytes
    plain: bool = False      # send without TLS: bytes the TLS layer must refuse


methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "G\x00T", ""])
segments = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)
paths = st.one_of(
    st.sampled_from([f"{QUERY_API}/jobs", f"{QUERY_API}/answers", f"{QUERY_API}/functions", JOB_PATH,
                     SCHEMAS_PATH, "/", "*", "", "/..", f"{QUERY_API}/jobs/", f"{RESULTS_PATH}/"]),
    segments.map(lambda s: f"{QUERY_API}/jobs/{s}"),
    st.tuples(segments, st.text(max_size=8)).map(lambda p: f"{QUERY_API}/jobs/{p[0]}/answer?wait={p[1]}"),
    segments.map(lambda s: f"{RESULTS_PATH}/{s}"),
    segments.map(lambda s: "/" + s),
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.fixed_dictionaries({"queryType": st.text(max_size=4) | st.integers()}, optional={
        "query": json_values, "userId": json_values}), max_size=3).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"jobIds": st.lists(st.text(max_size=5), max_size=2) | json_values},
                          optional={"wait": st.floats() | st.text(max_size=4)}).map(
        lambda v: json.dumps(v).encode()),
)
framings = st.sampled_from(["exact", "exact", "none", "chunked", "chunked-bad-size", "chunk-ext",
                            "bad-length", "two-lengths", "te-gzip", "expect-continue"])


@st.composite
def requests(draw: st.DrawFn, rt: EmbeddedRuntime) -> Request:
    api = draw(st.sampled_from(["query", "module"]))
    auth = draw(st.sampled_from(["right", "wrong", "none"]))
    method = draw(methods)
    path = draw(paths)
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2", "http/1.1", ""]))
    headers = [("Host", "127.0.0.1")]
    if auth != "none":
        good = rt.caller_token if api == "query" else rt.store.replicas[0].token
        token = good if auth == "right" else draw(header_text)
        headers.append(("Authorization", f"Bearer {token}") if api == "query" else ("Module-Auth-Token", token))
    headers += draw(st.lists(st.tuples(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                                            blacklist_characters=":"), min_size=1, max_size=10)
                                       .filter(lambda n: n.lower() not in ("content-length", "transfer-encoding",
                                                                           "expect")),
                                       header_text), max_size=3))
    body = draw(bodies)
    framing = draw(framings)
    if framing in ("exact", "expect-continue"):
        headers.append(("Content-Length", str(len(body))))
        if framing == "expect-continue":
            headers.append(("Expect", "100-continue"))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        body = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    elif framing == "chunk-ext":
        headers.append(("Transfer-Encoding", "chunked"))
        body = f"{len(body):x};name=value\r\n".encode() + body + b"\r\n0\r\n\r\n"
    elif framing == "chunked-bad-size":
        headers.append(("Transfer-Encoding", "chunked"))
        body = draw(st.sampled_from([b"zz", b"-1", b"1" * 17, b"", b" 5"])) + b"\r\n" + body + b"\r\n0\r\n\r\n"
    elif framing == "bad-length":
        headers.append(("Content-Length", draw(st.sampled_from(["abc", "-1", "1, 2", "+0", " ", "0x10", "1e3"]))))
    elif framing == "two-lengths":
        headers += [("Content-Length", str(len(body))), ("Content-Length", str(len(body) + 1))]
    elif framing == "te-gzip":
        headers.append(("Transfer-Encoding", "gzip"))
    request_line = f"{method} {path} {version}".encode("utf-8", "surrogateescape")
    head = request_line + b"\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"
    return Request(api, head, body)


def _exchange(rt: EmbeddedRuntime, request: Request, timeout: float = 10.0) -> bytes | None:
    """Send one request; the status line of the answer, or None if the server closed without one."""
    port = int(rt.query_url.rsplit(":", 1)[1]) if request.api == "query" else rt.ports[0]
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if request.plain:  # the server may wait out its handshake timeout for the rest: do not wait with it
        with raw, contextlib.suppress(OSError):
            raw.sendall(request.body)
        return None
    context = ssl.create_default_context(cafile=str(rt.ca_path))
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(request.head + request.body)
        received = b""
        while b"\r\n" not in received:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"no answer within {timeout}s to {request.head + request.body!r}") from None
            except (ConnectionResetError, ssl.SSLError):
                return None
            if not data:
                return None
            received += data
        return received.split(b"\r\n", 1)[0]


def _still_serves(rt: EmbeddedRuntime) -> None:
    query = Request("query", f"GET {QUERY_API}/functions HTTP/1.1\r\nAuthorization: Bearer {rt.caller_token}"
                             "\r\n\r\n".encode(), b"")
    assert _exchange(rt, query) == b"HTTP/1.1 200 OK"
    module = Request("module", f"POST {SCHEMAS_PATH} HTTP/1.1\r\nModule-Auth-Token: {rt.store.replicas[0].token}"
                               "\r\nContent-Length: 2\r\n\r\n".encode(), b"[]")
    assert _exchange(rt, module) == b"HTTP/1.1 204 No Content"


@fuzz(250)
@given(data=st.data())
def test_any_request_to_the_runtime_gets_an_answer_and_never_a_500(runtime: EmbeddedRuntime,
                                                                   data: st.DataObject) -> None:
    request = data.draw(requests(runtime))
    status = _exchange(runtime, request)
    if status is not None:
        assert re.fullmatch(rb"HTTP/1\.1 [1-4]\d\d .*", status), (status, request)
    _still_serves(runtime)


@fuzz(20)
@given(garbage=st.binary(min_size=1, max_size=300), api=st.sampled_from(["query", "module"]))
def test_bytes_that_are_not_tls_do_not_disturb_the_runtime(runtime: EmbeddedRuntime, garbage: bytes,
                                                           api: str) -> None:
    _exchange(runtime, Request(api, b"", garbage, plain=True))
    _still_serves(runtime)


def test_the_runtime_has_no_thread_left_per_fuzzed_connection(runtime: EmbeddedRuntime) -> None:
    """After the fuzzing above (same module-scoped runtime), every connection its client closed is gone."""
    deadline = time.monotonic() + WAIT
    while open_connections := runtime.open_connections():
        assert time.monotonic() < deadline, f"{open_connections} connections still open"
        time.sleep(0.1)
