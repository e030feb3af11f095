"""``cmworker.Client``: send queries to the embedded runtime and collect their answers.

Shaped like the funcX / Globus Compute client: ``run`` returns a job id, ``get_result`` returns the
result or re-raises the job's error as its typed exception (``RemoteException``, ``JobTimeout``,
``MemoryLimitExceeded``, ``WorkerDied``, ``UnknownFunction``, ``JobDropped``, ...)::

    client = cmworker.Client()              # finds the running `cmworker runtime` / `cmworker dev`
    job_id = client.run("add", {"x": 1, "y": 2})
    client.get_result(job_id, timeout=10)   # -> 3
    client.call("add", {"x": 1, "y": 2})    # the same in one step

Waiting is a long poll on the runtime (no client-side sleep loop): each request waits up to 30 s for
the answer on the server. A ``Client`` holds one keep-alive HTTPS session; use one per thread.

TLS is verified against the runtime's own CA only: ``REQUESTS_CA_BUNDLE``, proxies and ``.netrc`` from
the environment are ignored (``trust_env = False``), because none of them can be right for a
loopback runtime with a throwaway CA.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests

from cmworker.errors import JobError, RuntimeUnavailable, error_from_payload

__all__ = ["Client", "decode_answer"]

_LONG_POLL = 30.0  # longest wait asked of the server in one request
_HTTP_SLACK = 10.0  # read timeout beyond the server-side wait


class Client:
    """A caller of the embedded runtime's query API.

    ``url``, ``token`` and ``ca`` default to what the running runtime announced (see
    ``cmworker.runtime.discovery``; ``state_dir`` overrides ``$CMWORKER_STATE_DIR``).
    """

    def __init__(self, url: str | None = None, token: str | None = None,
                 ca: str | os.PathLike[str] | None = None, *,
                 state_dir: str | os.PathLike[str] | None = None) -> None:
        if url is None or token is None or ca is None:
            from cmworker.runtime.discovery import find_runtime

            info = find_runtime(state_dir)
            url, token, ca = url or info.url, token or info.token, ca or info.ca
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.verify = os.fspath(ca)
        self._session.headers["Authorization"] = f"Bearer {token}"

    # -- submitting ----------------------------------------------------------------------------

    def run(self, function: str, payload: Any = None) -> str:
        """Queue one query (``payload`` ``None`` sends ``{}``); return its job id."""
        body = self._json("POST", "/api/v1/jobs", json=_query(function, payload))
        job_id: str = body["jobId"]
        return job_id

    def batch_run(self, calls: Iterable[tuple[str, Any]]) -> list[str]:
        """Queue ``(function, payload)`` pairs in one request; return their job ids in order."""
        body = self._json("POST", "/api/v1/jobs", json=[_query(function, payload) for function, payload in calls])
        job_ids: list[str] = body["jobIds"]
        return job_ids

    # -- collecting ----------------------------------------------------------------------------

    def status(self, job_id: str) -> str:
        """``queued``, ``running``, ``done``, ``failed`` (answered with an error) or ``dropped``."""
        status: str = self._json("GET", f"/api/v1/jobs/{quote(job_id, safe='')}")["status"]
        return status

    def get_result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result, waiting up to ``timeout`` seconds (``None``: for ever).

        Raises the job's error (a ``JobError`` subclass) when it answered with one, and the builtin
        ``TimeoutError`` when it is not finished in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/api/v1/jobs/{quote(job_id, safe='')}/answer"
        while True:
            wait = _next_wait(deadline)
            response = self._request("GET", path, params={"wait": f"{wait:.3f}"}, timeout=wait + _HTTP_SLACK)
            if response.status_code == 200:
                return decode_answer(response.content)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {response.json().get('status')} after {timeout} s")

    def get_batch_result(self, job_ids: Sequence[str], timeout: float | None = None) -> list[Any]:
        """Every job's result, in order; a job that failed contributes its ``JobError`` (not raised).

        ``TimeoutError`` when some job is not finished within ``timeout`` seconds.
        """
        results: dict[str, Any] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(dict.fromkeys(job_ids))
        while pending:
            wait = _next_wait(deadline)
            body = self._json("POST", "/api/v1/answers", json={"jobIds": pending, "wait": wait},
                              timeout=wait + _HTTP_SLACK)
            for entry in body["answers"]:
                if "answer" in entry or "answerBase64" in entry:
                    results[entry["jobId"]] = _result_or_error(_entry_bytes(entry))
            pending = [job_id for job_id in pending if job_id not in results]
            if pending and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(pending)} of {len(job_ids)} jobs not finished after {timeout} s")
        return [results[job_id] for job_id in job_ids]

    def call(self, function: str, payload: Any = None, timeout: float | None = None) -> Any:
        """``run`` then ``get_result``."""
        return self.get_result(self.run(function, payload), timeout)

    def stream(self, job_id: str, timeout: float | None = None) -> Iterator[Any]:
        """A streaming job's items, each decoded, as the function yields them; then its end: nothing more
        for a stream that finished, its error raised for one that failed. A job that streams no item
        yields nothing: its answer is ``get_result``'s. ``TimeoutError`` when it is not finished within
        ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        path, seen, held = f"/api/v1/jobs/{quote(job_id, safe='')}/items", 0, None
        while True:
            wait = _next_wait(deadline)
            body = self._json("GET", path, params={"from": str(seen), "wait": f"{wait:.3f}"},
                              timeout=wait + _HTTP_SLACK)
            for item in body["items"]:
                seen += 1
                if held is not None:  # an item that only looked like an error: more came after it
                    yield held
                held = None
                value = _json_or_bytes(base64.b64decode(item))
                if error_from_payload(value) is None:
                    yield value
                else:
                    held = value  # the last item may be the error that ended the stream
            if body["finished"]:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {body['status']} after {timeout} s")
        error = error_from_payload(held)
        if error is not None:
            raise error

    def map(self, function: str, payloads: Iterable[Any], timeout: float | None = None) -> list[Any]:
        """Run ``function`` on every payload as one batch; results in order, the first error raised."""
        ids = self.batch_run((function, payload) for payload in payloads)
        results = self.get_batch_result(ids, timeout)
        for result in results:
            if isinstance(result, JobError):
                raise result
        return results

    def functions(self) -> list[dict[str, Any]]:
        """The function schemas the module's replicas posted."""
        functions: list[dict[str, Any]] = self._json("GET", "/api/v1/functions")["functions"]
        return functions

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _json(self, method: str, path: str, *, timeout: float = 30.0, **kwargs: Any) -> Any:
        return self._request(method, path, timeout=timeout, **kwargs).json()

    def _request(self, method: str, path: str, *, timeout: float, **kwargs: Any) -> requests.Response:
        try:
            response = self._session.request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise RuntimeUnavailable(f"cannot reach the embedded runtime at {self.url}: {exc}") from exc
        except requests.Timeout as exc:
            raise RuntimeUnavailable(f"the embedded runtime at {self.url} did not answer in time") from exc
        if response.status_code in (200, 202):
            return response
        message = _error_message(response)
        if response.status_code == 400:
            raise ValueError(message)
        if response.status_code == 404:
            raise LookupError(message)
        if response.status_code == 401:
            raise RuntimeUnavailable(f"the embedded runtime at {self.url} rejected the caller token")
        raise RuntimeUnavailable(f"the embedded runtime answered {response.status_code}: {message}")

    def __repr__(self) -> str:
        return f"<cmworker.Client {self.url}>"


def decode_answer(raw: bytes) -> Any:
    """Decode an answer body: the result, or raise its typed error.

    A body that is not one JSON value is a streaming result (one JSON value per chunk, no separator)
    and becomes a list; a body that is not JSON at all comes back as ``bytes``.
    """
    result = _result_or_error(raw)
    if isinstance(result, JobError):
        raise result
    return result


def _result_or_error(raw: bytes) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return _json_stream(raw)
    error = error_from_payload(value)
    return value if error is None else error


def _json_stream(raw: bytes) -> Any:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return raw
    decoder = json.JSONDecoder()
    items: list[Any] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return items
        try:
            item, position = decoder.raw_decode(text, position)
        except ValueError:
            return raw
        items.append(item)


def _json_or_bytes(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _query(function: str, payload: Any) -> dict[str, Any]:
    return {"queryType": function, "query": {} if payload is None else payload}


def _next_wait(deadline: float | None) -> float:
    if deadline is None:
        return _LONG_POLL
    return max(0.0, min(_LONG_POLL, deadline - time.monotonic()))


def _entry_bytes(entry: dict[str, Any]) -> bytes:
    if "answer" in entry:
        return str(entry["answer"]).encode()
    return base64.b64decode(entry["answerBase64"])


def _error_message(response: requests.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason
