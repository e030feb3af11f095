"""What a test may look at inside a running ``EmbeddedRuntime`` without reaching into private state:
``module_listener``, ``open_connections`` and ``pending_faults``, checked over real loopback HTTPS."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from cmworker.runtime.wire import App, Exchange
from tests.runtime.helpers import Module, tls_socket, wait_until


@pytest.mark.parametrize("endpoint", ["module", "query"])
def test_open_connections_counts_each_connection_until_its_client_closes_it(runtime: EmbeddedRuntime,
                                                                           endpoint: str) -> None:
    port = runtime.ports[0] if endpoint == "module" else urlsplit(runtime.query_url).port
    assert port is not None
    with tls_socket(runtime, port), tls_socket(runtime, port):
        wait_until(lambda: runtime.open_connections() == 2, what="two open connections")
    wait_until(lambda: runtime.open_connections() == 0, what="no open connection")


def test_pending_faults_lists_the_armed_faults_until_requests_take_them(runtime: EmbeddedRuntime) -> None:
    runtime.fail_next_gets(2, status=503)
    runtime.drop_next_result()
    assert [fault.kind for fault in runtime.pending_faults()] == ["get_status", "get_status", "result_drop"]
    assert Module(runtime).get_job()[0] == 503
    assert [fault.kind for fault in runtime.pending_faults()] == ["get_status", "result_drop"]


class Teapot:
    """An app that answers every request 418, in place of the one it wraps."""

    def __init__(self, wrapped: App) -> None:
        self.wrapped = wrapped

    def body_limit(self, exchange: Exchange) -> int:
        return self.wrapped.body_limit(exchange)

    def handle(self, exchange: Exchange) -> None:
        exchange.reply(418)


def test_module_listener_serves_that_replica_and_its_app_can_be_wrapped(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(replicas=2)
    assert [runtime.module_listener(i).port for i in range(2)] == runtime.ports
    listener = runtime.module_listener(1)
    listener.app = Teapot(listener.app)
    assert Module(runtime, 1).get_job()[0] == 418
    assert Module(runtime, 0).get_job()[0] == 204  # the other replica is served as before
