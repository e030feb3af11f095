"""Large frames between the parent and its workers: received in place into a buffer of their own,
which becomes the message's body with no copy, whatever pieces the stream delivers them in; and sent
part by part, the job's or answer's bytes never joined with the fields before them."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from cmworker.pool.messages import (
    LARGE_FRAME,
    BlockingReader,
    Chunk,
    FrameReader,
    Result,
    Run,
    frame,
    owned,
    send_message,
)

BIG = os.urandom(LARGE_FRAME + 12345)


def wire(message: Result | Chunk | Run) -> bytes:
    return b"".join(bytes(part) for part in frame(message))


@pytest.mark.parametrize("piece", [1000, 65536, LARGE_FRAME // 3])
def test_a_large_frame_fed_in_pieces_becomes_one_owned_body(piece: int) -> None:
    data = wire(Result(BIG, 1.5, 7)) + wire(Result(b"small", 0.0, 8))
    reader = FrameReader()
    messages = []
    view = memoryview(data)
    while view:
        target = reader.direct()
        if target is not None:  # in place, as the pool's loop receives a large frame
            n = min(len(target), piece, len(view))
            target[:n] = view[:n]
            target.release()
            messages += reader.advance(n)
        else:
            n = min(piece, len(view))
            messages += reader.feed(view[:n])
        view = view[n:]
    big, small = messages
    assert isinstance(big, Result) and (big.seq, big.cpu) == (7, 1.5)
    assert isinstance(big.body, bytearray) and big.body == BIG  # the buffer it was read into
    assert owned(big.body) is big.body  # kept as it is: no copy on the way to the POST
    assert isinstance(small, Result) and bytes(small.body) == b"small" and small.seq == 8


def test_a_large_run_reaches_a_blocking_reader_whole() -> None:
    parent, worker = socket.socketpair()
    try:
        sender = threading.Thread(target=send_message, args=(parent, Run("echo", BIG, seq=3)))
        sender.start()  # bigger than the socket's buffer: sendmsg sends part, the rest follows part by part
        run = BlockingReader(worker).read()
        sender.join(30)
        assert isinstance(run, Run) and (run.function, run.seq) == ("echo", 3)
        assert isinstance(run.body, bytearray) and run.body == BIG
    finally:
        parent.close()
        worker.close()


def test_a_chunk_of_a_large_stream_item_is_owned_too() -> None:
    reader = FrameReader()
    data = wire(Chunk(BIG, 4))
    messages = reader.feed(data[:100])
    target = reader.direct()
    assert target is not None and len(target) == len(data) - 100
    target[:] = data[100:]
    target.release()
    messages += reader.advance(len(data) - 100)
    [chunk] = messages
    assert isinstance(chunk, Chunk) and chunk.seq == 4 and chunk.body == BIG


def test_a_run_carries_the_job_id_for_the_title_cut_short_and_never_mistaken_for_the_function() -> None:
    long_id = "j\0" + "x" * 500  # an odd id: a NUL in it, and far longer than a title needs
    for body in (b"{}", BIG):
        run = BlockingReader(_pair_with(wire(Run("echo", body, seq=1, job_id=long_id)))).read()
        assert isinstance(run, Run) and run.function == "echo" and bytes(run.body) == body
        assert run.job_id == long_id[:200]


def _pair_with(data: bytes) -> socket.socket:
    sender, receiver = socket.socketpair()
    threading.Thread(target=lambda: (sender.sendall(data), sender.close()), daemon=True).start()
    return receiver
