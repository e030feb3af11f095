"""The replica's start-up exchange with the runtime: its functions' schemas, then the restart notification,
whose reply names the jobs the runtime had handed to an earlier life of this replica.

It runs on the poll thread, never on the main thread, which must act on a signal at once however long the
runtime keeps refusing connections or taking its time. The schemas go first, so that callers can see the
functions before any job runs; if that attempt fails they are retried beside the job loop, for as long as
it takes (a runtime may refuse connections for a while after start). The restart notification is retried
until the runtime takes it: sent after a GET, it would drop the jobs just taken. Every retry backs off and
ends as soon as the replica is asked to stop; a rejected module auth token ends the replica
(``RuntimeUnavailable``).
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


def announce(service: Service, conn: Connection, schemas: list[dict[str, Any]], stopping: threading.Event,
             in_background: Callable[[Callable[[], None], str], object]) -> None:
    """Post the schemas once (``in_background`` retries them when that fails), then the restart notification."""
    if service.endpoints.schema_path is not None and not _post_schemas(service, conn, schemas, 1, stopping) \
            and not stopping.is_set():
        in_background(lambda: _post_schemas_until_taken(service, schemas, stopping), "cmworker-schemas")
    reply = with_retries(service, lambda: service.restart_notification(conn), "restart notification", None,
                         stopping)
    if reply is not None and reply.status == 200:
        with contextlib.suppress(ValueError, RecursionError):
            dropped = json.loads(reply.body)
            if isinstance(dropped, list) and dropped:
                log.warning("the runtime dropped %d job(s) it thought were running here before this "
                            "restart: %s", len(dropped), ", ".join(map(str, dropped)))


def _post_schemas(service: Service, conn: Connection, schemas: list[dict[str, Any]], attempts: int | None,
                  stopping: threading.Event) -> bool:
    """Post the schemas (a refusal is logged, not fatal); False when they did not get through."""
    try:
        reply = with_retries(service, lambda: service.post_schemas(conn, schemas), "POST schemas", attempts,
                             stopping)
    except RuntimeUnavailable as exc:
        log.error("could not post the function schemas: %s", exc)
        return True
    if reply is not None and reply.status >= 300:
        log.error("the runtime refused the function schemas: HTTP %s %r", reply.status,
                  logs.excerpt(reply.body, 500))
    return reply is not None


def _post_schemas_until_taken(service: Service, schemas: list[dict[str, Any]], stopping: threading.Event) -> None:
    conn = service.connection()
    try:
        _post_schemas(service, conn, schemas, None, stopping)
    finally:
        conn.close()


def with_retries(service: Service, call: Callable[[], Reply | None], what: str, attempts: int | None,
                 stopping: threading.Event) -> Reply | None:
    """``call()`` until it gets a reply below 500 (or None: the runtime lacks that endpoint), at most
    ``attempts`` times (None: until stopping), with a capped back-off between attempts that a stop cuts
    short; None when no attempt got one."""
    attempt = 0
    while not stopping.is_set():
        try:
            reply = call()
        except TransportError as exc:
            problem = str(exc)
        else:
            if reply is not None and reply.status in (401, 403):
                raise RuntimeUnavailable(f"the runtime rejected the module auth token (HTTP {reply.status}) "
                                         f"on {what}: check {service.endpoints.token_source}")
            if reply is None or reply.status < 500:
                return reply
            problem = f"HTTP {reply.status}"
        attempt += 1
        (log.warning if attempt < 5 else log.error)("%s failed (%s); retrying", what, problem)
        if attempt == attempts:
            return None
        stopping.wait(backoff(attempt))
    return None
