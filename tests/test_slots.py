"""server.slots.FairSlots: slots go to waiters in arrival order; a waiter whose caller has
gone leaves the line; never more holders than slots."""

from __future__ import annotations

import threading
import time

import pytest

from lookalike.client.errors import Cancelled
from lookalike.server.slots import FairSlots


def always() -> None:
    """A caller that never gives up."""


def wait_until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_waiters_get_the_slot_in_the_order_they_arrived() -> None:
    slots = FairSlots(1)
    order: list[int] = []
    release_first = threading.Event()

    def holder() -> None:
        with slots.hold(always):
            release_first.wait()

    def waiter(number: int) -> None:
        with slots.hold(always):
            order.append(number)

    first = threading.Thread(target=holder)
    first.start()
    wait_until(lambda: slots._free == 0)
    waiters = []
    for number in range(8):
        thread = threading.Thread(target=waiter, args=(number,))
        thread.start()
        wait_until(lambda n=number: len(slots._waiting) == n + 1)  # queued before the next arrives
        waiters.append(thread)
    release_first.set()
    for thread in [first, *waiters]:
        thread.join()
    assert order == list(range(8))


def test_never_more_holders_than_slots() -> None:
    slots = FairSlots(2)
    holding, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal holding, most
        with slots.hold(always):
            with lock:
                holding += 1
                most = max(most, holding)
            time.sleep(0.002)
            with lock:
                holding -= 1

    threads = [threading.Thread(target=work) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2
    assert slots._free == 2 and not slots._waiting


def test_a_waiter_whose_caller_left_leaves_the_line_and_the_next_one_gets_the_slot() -> None:
    slots = FairSlots(1)
    gone = threading.Event()
    release = threading.Event()
    outcome: dict[str, object] = {}

    def leaver_check() -> None:
        if gone.is_set():
            raise Cancelled("the caller cancelled")

    def holder() -> None:
        with slots.hold(always):
            release.wait()

    def leaver() -> None:
        try:
            with slots.hold(leaver_check):
                outcome["leaver"] = "ran"
        except Cancelled:
            outcome["leaver"] = "left"

    def patient() -> None:
        with slots.hold(always):
            outcome["patient"] = "ran"

    threads = [threading.Thread(target=target) for target in (holder, leaver, patient)]
    threads[0].start()
    wait_until(lambda: slots._free == 0)
    threads[1].start()
    wait_until(lambda: len(slots._waiting) == 1)
    threads[2].start()
    wait_until(lambda: len(slots._waiting) == 2)
    gone.set()
    wait_until(lambda: len(slots._waiting) == 1)
    release.set()
    for thread in threads:
        thread.join()
    assert outcome == {"leaver": "left", "patient": "ran"}
    assert slots._free == 1


def test_a_caller_already_gone_never_queues() -> None:
    slots = FairSlots(1)

    def gone() -> None:
        raise Cancelled("gone")

    with pytest.raises(Cancelled):
        with slots.hold(gone):
            pass
    assert slots._free == 1
