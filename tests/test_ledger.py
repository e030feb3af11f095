"""The ledger: the jobs a replica holds until their answers are posted, and the outbox the posters
take those answers from, in order, each answer by one poster only."""

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


def test_each_answer_goes_to_one_poster_in_order() -> None:
    ledger = Ledger()
    first, second = Outgoing("j1", b"1", None), Outgoing("j2", b"2", None)
    posters = [in_thread(ledger.next_answer) for _ in range(2)]
    ledger.queue_answer(first)
    ledger.queue_answer(second)
    for thread, _ in posters:
        thread.join(WAIT)
    taken = [out[0] for _, out in posters]
    assert sorted(taken, key=lambda o: o.job_id) == [first, second]


def test_a_job_is_held_once_until_its_answer_is_posted() -> None:
    ledger = Ledger()
    assert ledger.accept("j1", "f") is not None
    assert ledger.accept("j1", "f") is None  # handed out twice: the run under way answers it
    assert "j1" in ledger and len(ledger) == 1
    waiter, below = in_thread(lambda: ledger.wait_below(1, timeout=WAIT))
    time.sleep(0.05)
    assert waiter.is_alive()  # still held: nothing to wake it yet
    ledger.release("j1")
    waiter.join(WAIT)
    assert below == [True] and "j1" not in ledger and ledger.posted == 1


def test_closing_the_outbox_lets_the_posters_go_once_it_is_empty() -> None:
    ledger = Ledger()
    last = Outgoing("j1", b"1", None)
    ledger.queue_answer(last)
    ledger.close_outbox()
    assert ledger.next_answer() is last
    assert ledger.next_answer() is None
