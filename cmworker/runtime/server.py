"""The two HTTP APIs of the embedded runtime, as apps served by ``wire.Listener``.

``ModuleApp`` is one replica's view of the runtime (DESIGN §2): GET job (long poll), POST
results/{jobId}, POST schemas, POST restart-notification, all behind ``Module-Auth-Token``.
``QueryApp`` is the callers' API (submit, status, answers, functions) behind a bearer token; its
contract is in docs/runtime.md. Sockets, framing and bodies are ``wire``'s business; the queue is
``state``'s.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import itertools
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from cmworker.runtime.faults import GET_FAULTS, RESTART_FAULTS, RESULT_FAULTS, SCHEMA_FAULTS, Fault, FaultPlan
from cmworker.runtime.state import JobSnapshot, JobStore, answer_failed
from cmworker.runtime.wire import DRAIN_LIMIT, SMALL_BODY, Disconnected, Exchange, HttpError

# The module endpoints, under the same paths as Foundry's runtime (see the custom-client docs). The
# restart-notification path is not in the public docs; clients take it from RESTART_NOTIFICATION_URI.
MODULE_API = "/interactive-module/api/internal-query"
JOB_PATH = f"{MODULE_API}/job"
RESULTS_PATH = f"{MODULE_API}/results"
SCHEMAS_PATH = f"{MODULE_API}/schemas"
RESTART_PATH = f"{MODULE_API}/restart-notification"

QUERY_API = "/api/v1"
QUERY_BODY_LIMIT = 256 * 2**20
MAX_WAIT = 300.0  # the longest answer wait a caller may ask for in one request


def require(exchange: Exchange, *methods: str) -> None:
    if exchange.method not in methods:
        raise HttpError(405, f"{exchange.method} is not allowed on {exchange.path}",
                        headers=[("Allow", ", ".join(methods))])


def not_found(exchange: Exchange) -> HttpError:
    return HttpError(404, f"no such path {exchange.path}")


def without_dot_segments(path: str) -> str:
    """The path with its ``.`` and ``..`` segments resolved (RFC 3986 §5.2.4), before any percent-decoding.

    Servers and proxies do this before routing, so a result POST for job ``..`` sent as ``results/..``
    reaches ``results``' parent, not the job; a client must send such an id as ``%2E%2E``.
    """
    parts = path.split("/")
    kept: list[str] = []
    for part in parts[1:]:
        if part == "..":
            if kept:
                kept.pop()
        elif part != ".":
            kept.append(part)
    return "/" + "/".join(kept) + ("/" if parts[-1] in (".", "..") else "")


# --------------------------------------------------------------------------------------------
# The module endpoints: what one replica's client talks to.


@dataclass
class ModuleApp:
    """What one replica's listener serves."""

    replica: int
    store: JobStore
    faults: FaultPlan
    long_poll: float
    max_result_size: int
    job_extras: dict[str, str]  # temporaryCredentialsAuthToken and authHeader, sent with every job

    def body_limit(self, exchange: Exchange) -> int:
        return self.max_result_size

    def handle(self, exchange: Exchange) -> None:
        self._check_token(exchange)
        path = without_dot_segments(exchange.path)
        if path == JOB_PATH:
            require(exchange, "GET")
            self._get_job(exchange)
        elif path.startswith(RESULTS_PATH + "/"):
            require(exchange, "POST")
            # The job id is one path segment, decoded after the split: an id may contain "/" (sent as %2F).
            segment = path[len(RESULTS_PATH) + 1:]
            if not segment or "/" in segment:
                raise not_found(exchange)
            self._post_result(exchange, unquote(segment))
        elif path == SCHEMAS_PATH:
            require(exchange, "POST")
            self._post_schemas(exchange)
        elif path == RESTART_PATH:
            require(exchange, "POST")
            fault = self.faults.take(RESTART_FAULTS, self.replica)
            exchange.read_body(SMALL_BODY)  # carries nothing, but must be consumed
            _reply(exchange, fault, 200, json.dumps(self.store.restart_notification(self.replica)).encode())
        else:
            raise not_found(exchange)

    def _check_token(self, exchange: Exchange) -> None:
        sent = exchange.headers.get("module-auth-token")
        if sent is None:
            raise HttpError(401, "missing Module-Auth-Token header")
        token = self.store.replicas[self.replica].token
        if not hmac.compare_digest(sent.strip().encode(), token.encode()):
            raise HttpError(401, "wrong Module-Auth-Token")

    def _get_job(self, exchange: Exchange) -> None:
        fault = self.faults.take(GET_FAULTS, self.replica)
        if fault is not None and fault.kind == "get_status":
            raise HttpError(fault.status, f"injected fault: GET job answered {fault.status}")
        if fault is not None and fault.kind == "get_hang" and exchange.listener.wait_down(fault.seconds):
            raise Disconnected
        job = self.store.take(self.replica, self.long_poll, lambda: not exchange.current)
        if job is None:
            if not exchange.current:
                raise Disconnected
            _reply(exchange, fault, 204)
            return
        body = json.dumps({"type": "computeModuleJobV1", "computeModuleJobV1": {
            "jobId": job.id, "queryType": job.query_type, "query": job.query,
            "userId": job.user_id, **self.job_extras}}).encode()
        # A job counts as handed out only once the response carrying it was written to a connection
        # the client had not closed; otherwise it goes back to the head of the queue. (A client that
        # dies after the kernel took the bytes holds the job until its replica posts a restart
        # notification: Foundry's own contract.)
        if exchange.peer_closed():
            self.store.requeue(job)
            raise Disconnected
        if fault is not None and fault.kind == "get_spoil":
            # A spoiled reply hands out no job, unless it was a readable one written in full.
            if not exchange.spoil(fault, 200, body):
                self.store.requeue(job)
            return
        try:
            exchange.reply(200, body)
        except OSError:
            self.store.requeue(job)
            raise Disconnected from None

    def _post_result(self, exchange: Exchange, job_id: str) -> None:
        fault = self.faults.take(RESULT_FAULTS, self.replica)
        if fault is not None and fault.kind == "result_drop":
            self._drop_mid_body(exchange, job_id)
        received = itertools.count()
        try:
            body = exchange.read_body(self.max_result_size, on_chunk=lambda data: self.store.stream_item(
                self.replica, job_id, next(received), data))
        except HttpError as exc:
            if exc.status == 413:
                self.store.record_post(self.replica, job_id, 413, 0, exchange.chunked)
            raise
        if fault is not None and fault.kind == "result_status":  # refused, not recorded as an answer
            self.store.record_post(self.replica, job_id, fault.status, len(body), exchange.chunked)
            raise HttpError(fault.status, f"injected fault: result POST answered {fault.status}")
        status, message = self.store.post_result(self.replica, job_id, body, failed=answer_failed(body),
                                                 chunked=exchange.chunked, first_chunk_at=exchange.first_chunk_at)
        if fault is not None and fault.kind == "result_spoil":  # the answer counts: a retry gets 409
            exchange.spoil(fault, status, b"" if status == 204 else _json_error(message))
            return
        if status != 204:
            raise HttpError(status, message)
        exchange.reply(204)

    def _drop_mid_body(self, exchange: Exchange, job_id: str) -> None:
        """Read about half of the body, then cut the connection without answering."""
        with contextlib.suppress(OSError, HttpError):
            exchange.read_some(min(exchange.content_length() // 2, DRAIN_LIMIT) if not exchange.chunked else 0)
        self.store.record_post(self.replica, job_id, 0, 0, exchange.chunked)
        exchange.cut()
        raise Disconnected

    def _post_schemas(self, exchange: Exchange) -> None:
        fault = self.faults.take(SCHEMA_FAULTS, self.replica)
        try:
            schemas = json.loads(exchange.read_body(self.max_result_size))
        except ValueError as exc:
            raise HttpError(400, f"schemas are not JSON: {exc}") from None
        except RecursionError:
            raise HttpError(400, f"schemas are {_TOO_DEEP}") from None
        if not isinstance(schemas, list):
            raise HttpError(400, "schemas must be a JSON array of function schemas")
        for index, schema in enumerate(schemas):
            name = schema.get("functionName") if isinstance(schema, dict) else None
            if not isinstance(name, str) or not name:
                raise HttpError(400, f"schema #{index} is not an object with a string functionName")
        self.store.post_schemas(self.replica, schemas)
        _reply(exchange, fault, 204)


def _reply(exchange: Exchange, fault: Fault | None, status: int, body: bytes = b"") -> None:
    """The reply, spoiled if ``fault`` is a spoil."""
    if fault is not None and fault.spoil is not None:
        exchange.spoil(fault, status, body)
    else:
        exchange.reply(status, body)


_TOO_DEEP = "JSON nested more deeply than Python's parser allows (about 1,000 levels)"


def _json_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


# --------------------------------------------------------------------------------------------
# The query API: how callers submit queries and collect answers.


@dataclass
class QueryApp:
    store: JobStore
    token: str
    default_user_id: str

    def body_limit(self, exchange: Exchange) -> int:
        return QUERY_BODY_LIMIT

    def handle(self, exchange: Exchange) -> None:
        self._check_token(exchange)
        path = exchange.path
        if path == f"{QUERY_API}/jobs":
            require(exchange, "POST")
            self._submit(exchange)
        elif path == f"{QUERY_API}/answers":
            require(exchange, "POST")
            self._answers(exchange)
        elif path == f"{QUERY_API}/functions":
            require(exchange, "GET")
            exchange.reply(200, json.dumps({"functions": self.store.functions()}).encode())
        elif path.startswith(f"{QUERY_API}/jobs/"):
            require(exchange, "GET")
            job_id, _, tail = unquote(path[len(QUERY_API) + 6:]).partition("/")
            if tail == "answer":
                self._answer(exchange, job_id, _wait_value(_query_param(exchange, "wait", "0")))
            elif tail == "items":
                self._items(exchange, job_id, _query_param(exchange, "from", "0"),
                            _wait_value(_query_param(exchange, "wait", "0")))
            elif not tail:
                self._status(exchange, job_id)
            else:
                raise not_found(exchange)
        else:
            raise not_found(exchange)

    def _check_token(self, exchange: Exchange) -> None:
        scheme, _, token = exchange.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise HttpError(401, "missing or wrong caller token (Authorization: Bearer ...)",
                            headers=[("WWW-Authenticate", "Bearer")])

    def _submit(self, exchange: Exchange) -> None:
        data = _json_body(exchange)
        items = data if isinstance(data, list) else [data]
        ids = self.store.submit([self._query_item(index, item) for index, item in enumerate(items)])
        _reply_json(exchange, 200, {"jobIds": ids} if isinstance(data, list) else {"jobId": ids[0]})

    def _query_item(self, index: int, item: Any) -> tuple[str, Any, str]:
        query_type = item.get("queryType") if isinstance(item, dict) else None
        if not isinstance(query_type, str) or not query_type:
            raise HttpError(400, f"query #{index} is not an object with a string queryType")
        user_id = item.get("userId", self.default_user_id)
        if not isinstance(user_id, str):
            raise HttpError(400, f"query #{index}: userId must be a string")
        return query_type, item.get("query", {}), user_id

    def _status(self, exchange: Exchange, job_id: str) -> None:
        snapshot = self.store.snapshots([job_id])[0]
        if snapshot is None:
            raise HttpError(404, f"no job {job_id!r}")
        _reply_json(exchange, 200, _status_fields(snapshot))

    def _answer(self, exchange: Exchange, job_id: str, wait: float) -> None:
        snapshot = self.store.wait_finished([job_id], wait)[0]
        if snapshot is None:
            raise HttpError(404, f"no job {job_id!r}")
        if snapshot.answer is None:
            _reply_json(exchange, 202, _status_fields(snapshot))
        else:
            exchange.reply(200, snapshot.answer, "application/octet-stream",
                           [("Cmworker-Job-Status", snapshot.status)])

    def _items(self, exchange: Exchange, job_id: str, start: str, wait: float) -> None:
        """A streaming answer's items from index ``start`` on, as they arrive: waits up to ``wait`` for
        one while the job runs. ``finished`` says no more will come (the answer then says how it ended)."""
        if not (start.isascii() and start.isdigit() and len(start) <= 18):  # int() of 4,301 digits raises
            raise HttpError(400, f"from must be an item index, got {start!r}")
        found = self.store.wait_items(job_id, int(start), wait)
        if found is None:
            raise HttpError(404, f"no job {job_id!r}")
        items, snapshot = found
        _reply_json(exchange, 200, {**_status_fields(snapshot), "finished": snapshot.finished,
                                    "items": [base64.b64encode(item).decode() for item in items]})

    def _answers(self, exchange: Exchange) -> None:
        data = _json_body(exchange)
        ids = data.get("jobIds") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(job_id, str) for job_id in ids):
            raise HttpError(400, 'expected {"jobIds": [string, ...], "wait": seconds}')
        wait = _wait_value(data.get("wait", 0))
        unknown = [job_id for job_id, snap in zip(ids, self.store.snapshots(ids), strict=True) if snap is None]
        if unknown:
            raise HttpError(404, f"no jobs {unknown[:10]!r}" + (" ..." if len(unknown) > 10 else ""))
        snapshots = self.store.wait_finished(ids, wait)
        _reply_json(exchange, 200, {"answers": [_answer_fields(snap) for snap in snapshots if snap]})


def _json_body(exchange: Exchange) -> Any:
    try:
        return json.loads(exchange.read_body(QUERY_BODY_LIMIT))
    except ValueError as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from None
    except RecursionError:
        raise HttpError(400, f"body is {_TOO_DEEP}") from None


def _reply_json(exchange: Exchange, status: int, value: Any) -> None:
    exchange.reply(status, json.dumps(value).encode())


def _query_param(exchange: Exchange, name: str, default: str) -> str:
    return parse_qs(exchange.query).get(name, [default])[-1]


def _wait_value(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise HttpError(400, f"wait must be a number of seconds, got {value!r}") from None
    if not seconds >= 0:  # also rejects NaN
        raise HttpError(400, f"wait must be >= 0, got {value!r}")
    return min(seconds, MAX_WAIT)


def _status_fields(snapshot: JobSnapshot) -> dict[str, Any]:
    fields: dict[str, Any] = {"jobId": snapshot.id, "queryType": snapshot.query_type,
                              "status": snapshot.status, "replica": snapshot.replica}
    if snapshot.message:
        fields["message"] = snapshot.message
    return fields


def _answer_fields(snapshot: JobSnapshot) -> dict[str, Any]:
    fields = _status_fields(snapshot)
    if snapshot.answer is not None:
        try:
            fields["answer"] = snapshot.answer.decode()
        except UnicodeDecodeError:
            fields["answerBase64"] = base64.b64encode(snapshot.answer).decode()
    return fields
