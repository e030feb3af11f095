"""Unit tests for the pool's building blocks, faking the OS only at its edge (raw wait statuses)."""

from __future__ import annotations

import json
import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmworker import errors
from cmworker.pool.messages import (
    Chunk,
    Exited,
    Failure,
    FrameReader,
    Ready,
    Result,
    Run,
    Spawned,
    StreamEnd,
    TemplateFailed,
    TemplateReady,
    frame,
    pack_packet,
    unpack_packet,
)
from cmworker.pool.processes import Exit, kill_group, process_tree, tree_rss

# -- wait statuses, as the kernel encodes them ------------------------------------------------------


def exited_status(code: int) -> int:
    return code << 8


def signalled_status(signum: int, core: bool = False) -> int:
    return signum | (0x80 if core else 0)


@pytest.mark.parametrize("code", [0, 1, 3, 70, 255])
def test_exit_code_is_decoded(code: int) -> None:
    exit = Exit.from_status(123, exited_status(code), max_rss=4096)
    assert (exit.code, exit.signal, exit.max_rss) == (code, None, 4096)
    assert exit.describe() == f"exited with code {code}"


@pytest.mark.parametrize(("signum", "name"), [(signal.SIGSEGV, "SIGSEGV"), (signal.SIGKILL, "SIGKILL"),
                                              (signal.SIGABRT, "SIGABRT"), (signal.SIGBUS, "SIGBUS")])
def test_killing_signal_is_decoded_by_name(signum: int, name: str) -> None:
    exit = Exit.from_status(7, signalled_status(signum, core=signum != signal.SIGKILL))
    assert exit.code is None
    assert exit.signal == signum
    assert exit.signal_name == name
    assert exit.describe().startswith(f"was killed by {name}")


def test_status_of_a_real_child_matches_the_fake_encoding() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(9)
    _, status = os.waitpid(pid, 0)
    assert status == exited_status(9)
    assert Exit.from_status(pid, status).code == 9


# -- framing ---------------------------------------------------------------------------------------

MESSAGES = [
    Ready(4242),
    Run("f", b'{"query": [1, 2]}', 0, 1.5, 1024),
    Result(b'{"a": 1}', 0.25),
    Failure("timeout", b'{"error": "x"}', 0.5),
    Chunk(b'{"i": 1}'),
    StreamEnd(0.1),
]


def _normalise(message: object) -> object:
    """Bodies decode as memoryviews; compare them as bytes."""
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in vars(message).items()}


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_stream_messages_round_trip(message: object) -> None:
    data = b"".join(bytes(p) for p in frame(message))  # type: ignore[arg-type]
    [decoded] = FrameReader().feed(data)
    assert type(decoded) is type(message)
    assert _normalise(decoded) == _normalise(message)


@given(st.lists(st.sampled_from(MESSAGES), min_size=1, max_size=20), st.integers(1, 64))
def test_frame_reader_reassembles_any_split(messages: list[object], step: int) -> None:
    data = b"".join(b"".join(bytes(p) for p in frame(m)) for m in messages)  # type: ignore[arg-type]
    reader = FrameReader()
    decoded = []
    for i in range(0, len(data), step):
        decoded.extend(reader.feed(data[i:i + step]))
    assert [_normalise(d) for d in decoded] == [_normalise(m) for m in messages]


CONTROL = [Spawned(3, 99), Exited(99, 11, 1 << 30, 0.5), TemplateReady(5, '{"a": {"streaming": false}}'),
           TemplateFailed("Traceback: boom")]


@pytest.mark.parametrize("message", CONTROL, ids=lambda m: type(m).__name__)
def test_control_packets_round_trip(message: object) -> None:
    assert unpack_packet(pack_packet(message)) == message  # type: ignore[arg-type]


def test_unknown_tag_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown message tag"):
        FrameReader().feed(b"\x00\x00\x00\x00\xff")


# -- the error registry ----------------------------------------------------------------------------

LEAVES = [errors.UnknownFunction, errors.InvalidInput, errors.JobTimeout, errors.MemoryLimitExceeded,
          errors.WorkerDied, errors.ResultNotSerializable, errors.ResultTooLarge, errors.ShuttingDown,
          errors.StreamFailed, errors.JobDropped]


@pytest.mark.parametrize("cls", LEAVES, ids=lambda c: c.__name__)
def test_every_leaf_round_trips_through_its_payload(cls: type[errors.JobError]) -> None:
    error = cls("something clear happened", pid=12, limit_bytes=100)
    payload = json.loads(error.to_bytes())
    assert payload == {"error": "something clear happened", "kind": cls.kind, "pid": 12, "limit_bytes": 100}
    back = errors.error_from_payload(payload)
    assert type(back) is cls
    assert back is not None and back.message == error.message and back.pid == 12


def test_kinds_are_unique_and_cover_the_design() -> None:
    kinds = {cls.kind for cls in LEAVES} | {errors.RemoteException.kind}
    assert kinds == {"exception", "unknown_function", "invalid_input", "timeout", "memory_limit",
                     "worker_died", "result_not_serializable", "result_too_large", "shutdown",
                     "stream_failed", "dropped"}
    with pytest.raises(TypeError, match="already taken"):
        type("Twin", (errors.JobError,), {"kind": "timeout"})


def test_remote_exception_payload_keeps_the_sdk_field() -> None:
    error = errors.RemoteException("bad", type="ValueError", traceback="Traceback (most recent call last):\n x")
    payload = error.to_payload()
    assert payload["exception"] == "bad: Traceback (most recent call last):\n x"
    back = errors.error_from_payload(payload)
    assert isinstance(back, errors.RemoteException)
    assert (back.message, back.remote_type) == ("bad", "ValueError")
    assert back.remote_traceback.startswith("Traceback")


def test_sdk_error_shapes_are_recognised() -> None:
    assert isinstance(errors.error_from_payload({"exception": "boom: Traceback ..."}), errors.RemoteException)
    assert isinstance(errors.error_from_payload({"error": "Unknown query type"}), errors.UnknownFunction)
    assert errors.error_from_payload({"error": "a result that merely has this key"}) is None
    assert errors.error_from_payload([1, 2]) is None
    assert errors.error_from_payload({"kind": "no-such-kind", "error": "x"}) is None


def test_job_errors_pickle_with_their_details() -> None:
    import pickle

    error = errors.MemoryLimitExceeded("too big", limit_bytes=5, rss_bytes=9)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is errors.MemoryLimitExceeded and back.rss_bytes == 9
    remote = pickle.loads(pickle.dumps(errors.RemoteException("x", type="KeyError", traceback="tb")))
    assert (remote.remote_type, remote.remote_traceback) == ("KeyError", "tb")


# -- process trees ---------------------------------------------------------------------------------


def test_process_tree_and_kill_group_reach_a_grandchild() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time;"
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(100)']);"
                              "time.sleep(100)"], start_new_session=True)
    try:
        import time

        deadline = time.monotonic() + 10
        while len(process_tree(child.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        tree = process_tree(child.pid)
        assert len(tree) == 2 and tree[0] == child.pid
        assert tree_rss(child.pid) > 0
        kill_group(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        child.kill()
