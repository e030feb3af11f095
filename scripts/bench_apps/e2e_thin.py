"""scripts/bench_e2e.py's wire-speed floor: the thinnest client that serves the runtime correctly.

One loop on one keep-alive HTTPS connection (``http.client``), no pool, no other process: GET a job,
run the function right here, POST its JSON result, again. It serves the functions the payload rows use
(``noop``, ``echo``, ``blob``) and the waiting row's ``nap`` from ``e2e_work``, as cmworker and the SDK
do, and reads the same environment the runtime gives them. It has none of a real client's duties
(timeouts, limits, crash isolation, logs), so its time for a large payload is what the wire and JSON
alone cost: the floor the payload rows are reported against.

With ``THIN_LOOPS=N`` it runs N such loops at once, each a thread with its own connection: for jobs that
sleep (which let go of the interpreter), the floor of the hand-off between two jobs, which for any client
of this runtime is at least a POST's and a GET's round trip.

    MODULE_AUTH_TOKEN=... GET_JOB_URI=... POST_RESULT_URI=... DEFAULT_CA_PATH=... python e2e_thin.py

SIGTERM ends it (the default action: it holds nothing worth finishing).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import e2e_work

FUNCTIONS = {"noop": lambda query: None, "echo": lambda query: query, "blob": e2e_work.blob,
             "nap": lambda ms: [*e2e_work.nap_timed(ms)[:2], threading.get_ident()]}  # the loop stands for the worker


def fail(problem: str) -> None:
    """The whole client ends, whichever loop met the problem."""
    print(problem, file=sys.stderr, flush=True)
    os._exit(1)


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
            fail(f"GET job answered {reply.status}: {body[:200]!r}")
        job: dict[str, Any] = json.loads(body)["computeModuleJobV1"]
        del body  # the parsed query is what the job needs; the raw bytes need not live through it
        result = json.dumps(FUNCTIONS[job["queryType"]](job["query"])).encode()
        conn.request("POST", f"{result_url.path}/{quote(job['jobId'], safe='')}", body=result,
                     headers=post_headers)
        reply = conn.getresponse()
        reply.read()
        if reply.status != 204:
            fail(f"POST result answered {reply.status}")


def main() -> None:
    loops = [threading.Thread(target=serve, daemon=True) for _ in range(int(os.environ.get("THIN_LOOPS", "1")) - 1)]
    for loop in loops:
        loop.start()
    serve()


if __name__ == "__main__":
    main()
