"""A job envelope's own fields, read from its ends without parsing the query between them.

A runtime job body is ``{["type": ..., ]"computeModuleJobV1": {"jobId": ..., "queryType": ..., "query":
QUERY, "temporaryCredentialsAuthToken": ..., "authHeader": ...}}``. The parent needs the id, the function
and the credentials, not the query, which may be tens of megabytes. ``read_envelope`` takes the scalar
fields before ``"query"`` from the head of the body and those after it from the tail, read backwards one
comma at a time, so its cost does not grow with the query (searching a 20 MB body through for those keys
costs the parent's interpreter ~36 ms; its ends, under a millisecond).

Read from the start, the head's keys are certainly ``computeModuleJobV1``'s own. At the tail, the
``, "key": scalar`` pairs that end just before the closing ``}}`` are taken as its own too. In valid
JSON a ``"key":`` right after a comma is always a real key, never text inside a string (there every
quote is escaped). A credential's name found before those pairs (searching back from the end, so at once
for a runtime's body) means the tail stopped short of it: such a body is parsed in full. What the ends
still cannot tell apart is a top-level member after ``computeModuleJobV1`` whose object ends the body
the same way. So the id and the function, which say where the answer goes and what runs, are taken
from the head only (every runtime sends them first); and for the credentials the worker, which parses the
whole body anyway, reads it this way too and compares (``disagreement``): when the two readings differ
it runs nothing, and the job is answered with an error naming the cause. The parent's reading and the
worker's are the same function of the same bytes.

A key the head and the tail both name, an id or function after the query or not a plain string, a
credential out of the tail's reach: ``None``, and the parent parses the body in full.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

V1 = "computeModuleJobV1"
CREDENTIALS = ("authHeader", "temporaryCredentialsAuthToken")
_QUOTED_CREDENTIALS = tuple(f'"{name}"'.encode() for name in CREDENTIALS)

# A string up to 64 KiB: a long bearer token is still read.
_SCALAR = (rb'"(?:[^"\\]|\\.){0,65536}"|-?\d{1,32}(?:\.\d{1,32})?(?:[eE][-+]?\d{1,5})?|true|false|null')
# The head, up to the opening brace of computeModuleJobV1; then its fields before the query.
_HEAD = re.compile(rb'\s*\{\s*(?:"type"\s*:\s*"computeModuleJobV1"\s*,\s*)?"computeModuleJobV1"\s*:\s*\{')
_HEAD_PAIR = re.compile(rb'\s*"(\w{1,64})"\s*:\s*(' + _SCALAR + rb')\s*,')
_QUERY_KEY = re.compile(rb'\s*"query"\s*:')
_MAX_FIELDS = 16
# The tail: the two closing braces at the very end, and before them pairs, each after a comma.
_CLOSE = re.compile(rb'\}\s*\}\s*\Z')
_TAIL_PAIR = re.compile(rb',\s*"(\w{1,64})"\s*:\s*(' + _SCALAR + rb')\s*')
# Read from the head only. The tail's pairs may be a later top-level member's (see above): taken from
# there, a job's answer went to the id that member named, and its function was that member's.
_HEAD_ONLY = (b"jobId", b"queryType")


# Below this size json parses the whole body quicker than the ends are read (5 against 12 µs at 200 B).
FULL_PARSE_BELOW = 4096


def fields_from_ends(body: bytes | bytearray) -> dict[str, Any] | None:
    """``read_envelope`` for a body worth reading so; None for a small one (and for any other shape)."""
    return read_envelope(body) if len(body) >= FULL_PARSE_BELOW else None


def read_envelope(body: bytes | bytearray) -> dict[str, Any] | None:
    """``computeModuleJobV1``'s scalar fields (not the query), with a string ``jobId`` and ``queryType``
    each named once, before the query; ``None`` for any other shape."""
    head = _head(body)
    if head is None:
        return None
    raw, pos = head
    tail = _tail(body, pos)
    if tail is None:
        return None
    for key, value in tail:
        if key in raw:
            return None  # a duplicate key: what json reads is the last one; the full parse says which
        if key in _HEAD_ONLY:
            return None  # perhaps another object's: the full parse says which job and function it is
        raw[key] = value
    job_id, function = raw.get(b"jobId", b""), raw.get(b"queryType", b"")
    if not (job_id.startswith(b'"') and function.startswith(b'"')) or job_id == b'""' or function == b'""':
        return None  # a missing, empty, numeric or null id or function: the full parse says what is wrong
    try:
        return {key.decode(): _scalar(value) for key, value in raw.items()}
    except ValueError:
        return None


def job_id_from_head(body: bytes | bytearray) -> str | None:
    """The ``jobId`` among the fields before the query, if it is a string there: certainly the job's own,
    even in a body json cannot parse (too deep, too long a number, bytes that are not UTF-8)."""
    head = _head(body)
    literal = head[0].get(b"jobId", b"") if head is not None else b""
    try:
        job_id = _scalar(literal) if literal.startswith(b'"') else None
    except ValueError:
        return None
    return job_id if isinstance(job_id, str) and job_id else None


def _head(body: bytes | bytearray) -> tuple[dict[bytes, bytes], int] | None:
    """The scalar pairs before the query, as literals by key (the last of a repeated key, as json reads
    it), and where the query begins; None when the body does not open so."""
    head = _HEAD.match(body)
    if head is None:
        return None
    pos = head.end()
    raw: dict[bytes, bytes] = {}
    for _ in range(_MAX_FIELDS):
        if _QUERY_KEY.match(body, pos):
            return raw, pos
        pair = _HEAD_PAIR.match(body, pos)
        if pair is None:
            return None
        raw[bytes(pair.group(1))] = bytes(pair.group(2))
        pos = pair.end()
    return None


def _tail(body: bytes | bytearray, pos: int) -> list[tuple[bytes, bytes]] | None:
    """The pairs between the query (which begins at ``pos``) and the closing braces, read backwards one
    comma at a time, so the cost is the tail's, not the query's. None when it cannot be read so."""
    close = _CLOSE.search(body, max(pos, len(body) - 64))
    if close is None:
        return None
    pairs: list[tuple[bytes, bytes]] = []
    start = comma = close.start()
    while (comma := body.rfind(b",", pos, comma)) != -1:
        pair = _TAIL_PAIR.match(body, comma, start)
        if pair is None or pair.end() != start:
            break  # the end of the query (or a pair the tail cannot read: then see below)
        if len(pairs) == _MAX_FIELDS:
            return None
        pairs.append((bytes(pair.group(1)), bytes(pair.group(2))))
        start = comma
    for name in _QUOTED_CREDENTIALS:  # from the end: a runtime's credentials are in the tail, found at once
        at = body.rfind(name, pos)
        if pos <= at < start:
            return None  # one before the tail: the tail did not reach it (or it is the query's own)
    return pairs[::-1]


def _scalar(literal: bytes) -> Any:
    """A JSON scalar's value; most strings have no escapes, and need no JSON parser."""
    if literal.startswith(b'"') and b"\\" not in literal:
        return literal[1:-1].decode()
    return json.loads(literal)


def disagreement(fields: Mapping[str, Any], v1: Mapping[str, Any]) -> str | None:
    """The first of the fields the parent acts on (id, function, credentials) that ``read_envelope``
    read differently than the full parse ``v1``; None when they agree. Names the field, never its value."""
    for key in ("jobId", "queryType", *CREDENTIALS):
        if fields.get(key) != v1.get(key):
            return key
    return None
