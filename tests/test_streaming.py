"""Streaming jobs post their chunks on keep-alive connections kept between streams: a stream's first item
does not wait for a TCP connect and a TLS handshake (a poller running in this process, real runtime)."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import pytest

from cmworker.config import load_config
from cmworker.replica import transport
from cmworker.replica.poller import Poller
from cmworker.replica.service import Service, discover
from cmworker.runtime.client import decode_answer
from cmworker.runtime.embedded import EmbeddedRuntime
from tests.pool_harness import APPS

pytestmark = pytest.mark.timeout(120)
WAIT = 30.0


def raw_answer(rt: EmbeddedRuntime, job_id: str) -> bytes:
    snap = rt.store.wait_finished([job_id], WAIT)[0]
    assert snap is not None and snap.answer is not None, snap
    return snap.answer


def test_streams_post_on_connections_kept_from_earlier_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[str, int]] = []
    create = socket.create_connection

    def counting(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        opened.append(address)
        return create(address, *args, **kwargs)

    monkeypatch.setattr(transport.socket, "create_connection", counting)
    with EmbeddedRuntime(long_poll=0.5) as rt:
        config = load_config(flags={"app": os.path.join(APPS, "misbehave.py"), "workers": 2, "limits.timeout": 10,
                                    "logging.stats_interval": "none", "worker_nice": 0}, environ={}, cwd=APPS)
        poller = Poller(config, Service(discover(rt.env(0))))
        thread = threading.Thread(target=poller.run, daemon=True)
        thread.start()
        try:
            assert raw_answer(rt, rt.submit("echo", 1))  # up and serving: the poll thread's and a poster's
            time.sleep(0.2)
            before = len(opened)
            for n in (3, 2, 5):
                assert decode_answer(raw_answer(rt, rt.submit("stream", {"n": n}))) == [{"i": i} for i in range(n)]
            assert len(opened) == before  # the connection that posted the schemas served all three
            broken = raw_answer(rt, rt.submit("stream", {"n": 2, "fail": True}))
            assert b'"kind": "stream_failed"' in broken and len(opened) == before
        finally:
            poller.stop()
            thread.join(WAIT)
    assert not thread.is_alive()
