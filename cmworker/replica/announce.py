"""The replica's start-up exchange with the runtime: its functions' schemas, then the restart notification,
whose reply names the jobs the runtime had handed to an earlier life of this replica.

Each is retried with backoff on transport errors and 5xx replies, and dropped as soon as the replica is
asked to stop; a rejected module auth token ends the replica (``RuntimeUnavailable``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from cmworker import logs
from cmworker.errors import RuntimeUnavailable
from cmworker.replica.service import Connection, Reply, Service, TransportError, backoff

log = logging.getLogger("cmworker.poller")  # the poller's start-up: its lines keep that origin


def announce(service: Service, conn: Connection, schemas: list[dict[str, Any]], stopping: threading.Event) -> None:
    """Post the schemas (failure is logged, not fatal) and the restart notification."""
    try:
        reply = _with_retries(service, lambda: service.post_schemas(conn, schemas), "POST schemas", 5, stopping)
        if reply is not None and reply.status >= 300:
            log.error("the runtime refused the function schemas: HTTP %s %r", reply.status,
                      logs.excerpt(reply.body, 500))
    except RuntimeUnavailable as exc:
        log.error("could not post the function schemas: %s", exc)
    reply = _with_retries(service, lambda: service.restart_notification(conn), "restart notification", 30,
                          stopping)
    if reply is not None and reply.status == 200:
        with contextlib.suppress(ValueError):
            dropped = json.loads(reply.body)
            if dropped:
                log.warning("the runtime dropped %d job(s) it thought were running here before this "
                            "restart: %s", len(dropped), ", ".join(map(str, dropped)))


def _with_retries(service: Service, call: Callable[[], Reply | None], what: str, attempts: int,
                  stopping: threading.Event) -> Reply | None:
    for attempt in range(attempts):
        try:
            reply = call()
        except TransportError as exc:
            log.warning("%s failed (%s); retrying", what, exc)
            if stopping.wait(backoff(attempt)):
                return None
            continue
        if reply is not None and reply.status in (401, 403):
            raise RuntimeUnavailable(f"the runtime rejected the module auth token (HTTP {reply.status}) "
                                     f"on {what}: check {service.endpoints.token_source}")
        if reply is not None and reply.status >= 500:
            log.warning("%s: HTTP %s; retrying", what, reply.status)
            if stopping.wait(backoff(attempt)):
                return None
            continue
        return reply
    raise RuntimeUnavailable(f"{what} failed {attempts} times in a row")
