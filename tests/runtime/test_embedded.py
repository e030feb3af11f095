"""``EmbeddedRuntime`` as a Python object: construction, state directory, lifecycle."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cmworker.runtime.embedded import EmbeddedRuntime
from tests.runtime.helpers import DEADLINE, Module


@pytest.mark.parametrize("kwargs", [{"replicas": 0}, {"max_concurrent_tasks": 0},
                                    {"replicas": 2, "max_concurrent_tasks": [1]},
                                    {"max_concurrent_tasks": True}, {"long_poll": -1}])
def test_impossible_settings_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EmbeddedRuntime(**kwargs)  # type: ignore[arg-type]


def test_a_temporary_state_directory_is_removed_on_stop() -> None:
    with EmbeddedRuntime() as runtime:
        state_dir = runtime.state_dir
        assert (state_dir / "ca.pem").is_file()
    assert not state_dir.exists()


def test_a_given_state_directory_is_kept(tmp_path: Path) -> None:
    with EmbeddedRuntime(replicas=2, state_dir=tmp_path / "rt") as runtime:
        assert runtime.env(1)["MODULE_AUTH_TOKEN"] == str(tmp_path / "rt" / "replica-1" / "module-auth-token")
    assert (tmp_path / "rt" / "replica-1" / "env.sh").is_file()


def test_env_sh_recreates_the_environment_in_a_shell(runtime: EmbeddedRuntime) -> None:
    script = f"set -e; . {runtime.state_dir / 'replica-0' / 'env.sh'}; env -0"
    output = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, timeout=DEADLINE)
    seen = dict(entry.split("=", 1) for entry in output.stdout.split("\0") if "=" in entry)
    assert {name: seen[name] for name in runtime.env()} == runtime.env()


def test_a_runtime_cannot_start_twice(runtime: EmbeddedRuntime) -> None:
    with pytest.raises(RuntimeError):
        runtime.start()


def test_stop_is_idempotent_and_frees_the_ports(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime(replicas=2)
    ports = [*runtime.ports, int(runtime.query_url.rsplit(":", 1)[1])]
    runtime.stop()
    runtime.stop()
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()


def test_stop_cancels_a_pending_reopen(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    runtime = make_runtime()
    port = runtime.ports[0]
    runtime.refuse_connections(0.2)
    runtime.stop()  # returns after the reopen timer gave up
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()


def test_fixed_ports_are_port_plus_replica_index(make_runtime: Callable[..., EmbeddedRuntime]) -> None:
    base = _free_port_pair()
    runtime = make_runtime(replicas=2, port=base)
    assert runtime.ports == [base, base + 1]


def test_in_process_submit_rejects_a_query_json_cannot_carry(runtime: EmbeddedRuntime) -> None:
    with pytest.raises(TypeError):
        runtime.submit("f", {"when": object()})
    assert runtime.record.jobs() == []


def test_drop_next_result_with_an_empty_body_does_not_hang(runtime: EmbeddedRuntime) -> None:
    job_id = runtime.submit("f")
    module = Module(runtime)
    assert module.get_job()[0] == 200
    runtime.drop_next_result()
    with pytest.raises(OSError):  # the cut arrives at once, not after an idle timeout
        module.post_result(job_id, b"")
    assert Module(runtime).post_result(job_id, b"null").status == 204


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return int(port)
    pytest.skip("no two adjacent free ports")
