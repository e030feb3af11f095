"""The ledger's outbox: who posts which answer. The poll thread takes the answer that frees a place when
it is waiting for one (so its GET follows the POST on the same thread); posters take everything else."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cmworker.replica.ledger import Ledger, Outgoing

WAIT = 10.0


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def full_ledger() -> Ledger:
    ledger = Ledger()
    assert ledger.accept("j1", "f") is not None and ledger.accept("j2", "f") is not None
    return ledger


def test_the_waiting_poll_thread_takes_the_answer_and_posters_take_the_next() -> None:
    ledger = full_ledger()
    poster, posted = in_thread(ledger.next_answer)
    poll, turns = in_thread(lambda: ledger.poll_turn(2, timeout=WAIT))
    until(lambda: ledger.poll_waiting)
    first = Outgoing("j1", b"1", None)
    ledger.queue_answer(first)
    poll.join(WAIT)
    assert turns == [first]
    assert posted == [] and poster.is_alive()  # the poster was passed over, and still waits
    second = Outgoing("j2", b"2", None)
    ledger.queue_answer(second)  # the poll thread is busy posting the first: a poster takes it
    poster.join(WAIT)
    assert posted == [second]


def test_a_retry_is_left_to_the_posters() -> None:
    ledger = full_ledger()
    poll, turns = in_thread(lambda: ledger.poll_turn(2, timeout=0.3))
    until(lambda: ledger.poll_waiting)
    retry = Outgoing("j1", b"1", None, attempts=1)
    ledger.queue_answer(retry)
    poster, posted = in_thread(ledger.next_answer)
    poster.join(WAIT)
    poll.join(WAIT)
    assert posted == [retry]
    assert turns == [False]  # it timed out: nothing for it


def test_with_a_free_place_the_poll_thread_asks_for_a_job_and_a_poster_posts() -> None:
    ledger = Ledger()
    ledger.accept("j1", "f")
    waiting = Outgoing("j1", b"1", None)
    ledger.queue_answer(waiting)
    assert ledger.poll_turn(2, timeout=WAIT) is True
    assert ledger.next_answer() is waiting


def test_closing_the_outbox_lets_the_posters_go_once_it_is_empty() -> None:
    ledger = Ledger()
    last = Outgoing("j1", b"1", None)
    ledger.queue_answer(last)
    ledger.close_outbox()
    assert ledger.next_answer() is last
    assert ledger.next_answer() is None
