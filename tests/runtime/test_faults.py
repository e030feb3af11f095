"""Fault injection, and the promise under every fault: no queued or answered job is ever lost."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from cmworker.runtime.server import JOB_PATH
from tests.runtime.helpers import DEADLINE, Module, run_in_thread, tls_socket, wait_until


def take(module: Module, job_id: str) -> None:
    status, job = module.get_job()
    assert status == 200 and job is not None and job["jobId"] == job_id


def test_fail_next_gets_answers_the_status_then_serves_normally(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    runtime.fail_next_gets(2, status=503)
    module = Module(runtime)
    assert [module.get_job()[0] for _ in range(2)] == [503, 503]
    take(module, job_id)  # the job waited in the queue through both failures


def test_faults_can_target_one_replica(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(replicas=2)
    runtime.fail_next_gets(1, status=502, replica=1)
    assert Module(runtime, 0).get_job()[0] == 204
    assert Module(runtime, 1).get_job()[0] == 502


def test_fail_next_results_refuses_the_post_and_the_retry_is_accepted(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    module = Module(runtime)
    take(module, job_id)
    runtime.fail_next_results(1, status=500)
    assert module.post_result(job_id, b'"answer"').status == 500
    assert runtime.record.job(job_id).status == "running"  # type: ignore[union-attr]
    assert module.post_result(job_id, b'"answer"').status == 204
    assert [post.status for post in runtime.record.result_posts(job_id)] == [500, 204]
    assert runtime.record.accepted(job_id) == 1


def test_drop_next_result_cuts_the_connection_and_the_retry_is_accepted(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    module = Module(runtime)
    take(module, job_id)
    runtime.drop_next_result()
    with pytest.raises((http.client.HTTPException, OSError)):
        module.post_result(job_id, b'{"big": "' + b"x" * 100_000 + b'"}')
    assert runtime.record.job(job_id).status == "running"  # type: ignore[union-attr]
    assert module.post_result(job_id, b'"answer"').status == 204  # on a fresh connection
    assert [post.status for post in runtime.record.result_posts(job_id)] == [0, 204]


def test_hang_next_get_holds_the_request_and_loses_no_job(runtime: EmbeddedRuntime) -> None:
    runtime.hang_next_get(1.0)
    impatient = Module(runtime, timeout=0.2)
    with pytest.raises(TimeoutError):
        impatient.get_job()
    job_id = runtime.submit("f")  # arrives while the hung request is still held
    take(Module(runtime), job_id)
    # The hung request wakes up after its client left: it must not have swallowed a job.
    wait_until(lambda: runtime.record.gets(0) >= 2, what="the hung GET to reach the queue")
    assert runtime.record.held(0) == [job_id]


def test_a_job_is_not_handed_to_a_connection_its_client_closed(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(long_poll=60.0)
    sock = tls_socket(runtime, runtime.ports[0])
    token = Module(runtime).token
    sock.sendall(f"GET {JOB_PATH} HTTP/1.1\r\nHost: x\r\nModule-Auth-Token: {token}\r\n\r\n".encode())
    wait_until(lambda: runtime.record.gets(0) == 1, what="the GET to park in its long poll")
    sock.close()  # the client dies while its GET is parked
    job_id = runtime.submit("f")
    # The parked GET wakes, finds its client gone and puts the job back instead of losing it.
    take(Module(runtime), job_id)
    assert runtime.record.held(0) == [job_id]


def test_refuse_connections_then_listen_again_on_the_same_port(runtime: EmbeddedRuntime) -> None:
    port = runtime.ports[0]
    job_id = runtime.submit("f")
    runtime.refuse_connections(0.5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
    wait_until(lambda: _accepts(port), what="the listener to come back")
    assert runtime.ports[0] == port
    take(Module(runtime), job_id)


def test_refuse_connections_cuts_open_connections(runtime: EmbeddedRuntime) -> None:
    module = Module(runtime)
    assert module.get_job()[0] == 204  # an open keep-alive connection
    runtime.refuse_connections(60.0)
    with pytest.raises((http.client.HTTPException, OSError)):
        module.get_job()


def test_restart_keeps_queued_running_and_answered_jobs(runtime: EmbeddedRuntime) -> None:
    client, module = runtime.client(), Module(runtime)
    answered, running, queued = (client.run("f", {}) for _ in range(3))
    take(module, answered)
    module.post_result(answered, b'"a"')
    take(module, running)
    ports = runtime.ports
    runtime.restart()
    assert runtime.ports == ports
    module = Module(runtime)  # the replica reconnects
    assert module.post_result(running, b'"r"').status == 204  # and answers the job it held
    take(module, queued)
    assert module.post_result(queued, b'"q"').status == 204
    assert client.get_batch_result([answered, running, queued], timeout=DEADLINE) == ["a", "r", "q"]


def test_restart_cuts_a_parked_long_poll_without_handing_it_a_job(
        make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(long_poll=60.0)
    parked = Module(runtime, timeout=DEADLINE)
    thread, outcome = run_in_thread(parked.get_job)
    wait_until(lambda: runtime.record.gets(0) == 1, what="the GET to park")
    runtime.restart()
    thread.join(DEADLINE)
    assert isinstance(outcome.get("error"), (http.client.HTTPException, OSError))
    job_id = runtime.submit("f")
    take(Module(runtime), job_id)


def test_stop_releases_parked_requests_promptly(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(long_poll=60.0)
    job_id = runtime.submit("f")
    client = runtime.client()
    getter, _ = run_in_thread(Module(runtime, timeout=90).get_job)  # takes the job
    waiter, _ = run_in_thread(lambda: client.get_result(job_id, timeout=60))
    blocked, _ = run_in_thread(Module(runtime, timeout=90).get_job)  # parks at the cap
    wait_until(lambda: runtime.record.gets(0) == 2, what="both GETs to reach the queue")
    started = time.monotonic()
    runtime.stop()
    for thread in (getter, waiter, blocked):
        thread.join(DEADLINE)
        assert not thread.is_alive()
    assert time.monotonic() - started < 30  # far below the 60 s holds: nobody waited them out


def test_invalid_fault_arguments_are_rejected(runtime: EmbeddedRuntime) -> None:
    with pytest.raises(ValueError):
        runtime.fail_next_gets(1, status=42)
    with pytest.raises(ValueError):
        runtime.fail_next_results(-1)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_tls_with_an_unknown_ca_is_refused_by_the_client(runtime: EmbeddedRuntime) -> None:
    context = ssl.create_default_context()  # the system CAs, not the runtime's
    with socket.create_connection(("127.0.0.1", runtime.ports[0]), timeout=DEADLINE) as sock, \
            pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(sock, server_hostname="127.0.0.1")
    assert Module(runtime).get_job()[0] == 204
