"""A few CPU slots handed out first come, first served, that a waiter can leave.

A semaphore polled with a timeout (to notice a caller that has gone) sends every
poller to the back of the queue, so under load some requests wait many times
longer than others. Here each waiter holds its place, a released slot goes straight
to the longest waiter, and a waiter whose caller has gone leaves the queue.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

POLL_SECONDS = 0.25
"""How often a waiter asks whether its caller is still there. A waiter uses no CPU and is asked again once
granted, so a late answer costs nothing; asking often does: with a dozen waiters at 0.05 s, the wake-ups
took 0.3 ms of the server process's CPU per check (docs/tuning.md, "The server around a check")."""


class FairSlots:
    def __init__(self, count: int) -> None:
        self._free = max(1, count)
        self._waiting: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, still_wanted: Callable[[], None]) -> Iterator[None]:
        """Wait in line for a slot and hold it; `still_wanted` raises once the caller has gone
        (checked before queueing, while waiting, and once the slot is granted)."""
        still_wanted()
        self._acquire(still_wanted)
        try:
            still_wanted()
            yield
        finally:
            self._release()

    def _acquire(self, still_wanted: Callable[[], None]) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = threading.Event()
            self._waiting.append(turn)
        while not turn.wait(POLL_SECONDS):
            try:
                still_wanted()
            except BaseException:
                with self._lock:
                    if not turn.is_set():
                        self._waiting.remove(turn)
                        raise
                self._release()  # granted just as the caller left: pass the slot on
                raise

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # the slot passes straight to the longest waiter
            else:
                self._free += 1


class PerKeyLimit:
    """At most `limit` places per key at once; a taker past it is turned away at once, never queued
    (a waiting stream would hold a worker thread all the same)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        """Take one of `key`'s places; False when all are taken."""
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.limit:
                return False
            self._held[key] = held + 1
            return True

    def give_back(self, key: str) -> None:
        with self._lock:
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]  # keys come and go: only those holding places stay in the table
