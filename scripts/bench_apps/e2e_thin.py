"""scripts/bench_e2e.py's wire-speed floor: the thinnest client that serves the runtime correctly.

One loop on one keep-alive HTTPS connection (``http.client``), no pool, no other process: GET a job,
run the function right here, POST its JSON result, again. It serves the functions the payload rows use
(``noop``, ``echo``, ``blob``) from ``e2e_work``, as cmworker and the SDK do, and reads the same
environment the runtime gives them. It has none of a real client's duties (timeouts, limits, crash
isolation, logs), so its time for a large payload is what the wire and JSON alone cost: the floor the
payload rows are reported against.

    MODULE_AUTH_TOKEN=... GET_JOB_URI=... POST_RESULT_URI=... DEFAULT_CA_PATH=... python e2e_thin.py

SIGTERM ends it (the default action: it holds nothing worth finishing).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import e2e_work

FUNCTIONS = {"noop": lambda query: None, "echo": lambda query: query, "blob": e2e_work.blob}


def serve() -> None:
    job_url, result_url = urlsplit(os.environ["GET_JOB_URI"]), urlsplit(os.environ["POST_RESULT_URI"])
    token = Path(os.environ["MODULE_AUTH_TOKEN"]).read_text().strip()
    context = ssl.create_default_context(cafile=os.environ["DEFAULT_CA_PATH"])
    conn = http.client.HTTPSConnection(job_url.hostname or "", job_url.port, context=context)
    get_headers = {"Module-Auth-Token": token}
    post_headers = {**get_headers, "Content-Type": "application/octet-stream"}
    while True:
        conn.request("GET", job_url.path, headers=get_headers)
        reply = conn.getresponse()
        body = reply.read()
        if reply.status == 204:
            continue
        if reply.status != 200:
            sys.exit(f"GET job answered {reply.status}: {body[:200]!r}")
        job: dict[str, Any] = json.loads(body)["computeModuleJobV1"]
        del body  # the parsed query is what the job needs; the raw bytes need not live through it
        result = json.dumps(FUNCTIONS[job["queryType"]](job["query"])).encode()
        conn.request("POST", f"{result_url.path}/{quote(job['jobId'], safe='')}", body=result,
                     headers=post_headers)
        reply = conn.getresponse()
        reply.read()
        if reply.status != 204:
            sys.exit(f"POST result answered {reply.status}")


if __name__ == "__main__":
    serve()
