"""Soak: concurrent clients add, check and remove against a real `lookalike serve` process for a
bounded time. No call fails, the counts add up at the end, and the server's memory stays flat
once warmed up."""

from __future__ import annotations

import hashlib
import itertools
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lookalike.client import LookalikeClient, LookalikeError
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from tests.processes import ServerProcess, end_leftovers
from tests.test_crash import image_for

LIST = "soak"
WARM_UP_S = 12.0
HALF_S = 12.0
"""After the warm-up, two halves of this length; memory is compared between them."""
LIVE_PER_WORKER = 25
"""Each adding worker removes its oldest entry beyond this many, so the list, and with it the
index, stops growing after the warm-up: what still grows then is a leak."""
GROWTH_BOUND_KIB = 32 * 1024
"""Generous: measured growth between the halves is 1-3 MiB (allocator arenas, gRPC buffers), over
thousands of calls per half, so a leak of even 20 kB a call passes the bound."""
NEVER_ADDED = range(900_000, 900_050)


class Tally:
    """Acknowledged adds and removes, and anything that went wrong, across all workers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.added: dict[str, int] = {}
        self.removed: set[str] = set()
        self.calls = 0
        self.errors: list[str] = []

    def live(self) -> dict[str, int]:
        with self.lock:
            return {entry: number for entry, number in self.added.items() if entry not in self.removed}


def editor(client: LookalikeClient, tally: Tally, numbers: itertools.count[int], stop: threading.Event) -> None:
    """Unary adds, reads and removes: the list's live entries stay near LIVE_PER_WORKER per editor."""
    mine: list[str] = []
    while not stop.is_set():
        number = next(numbers)
        added = client.add(LIST, image_for(number), meta={"n": str(number)})
        assert not added.duplicate
        with tally.lock:
            tally.added[added.id] = number
            tally.calls += 1
        mine.append(added.id)
        assert client.get_entry(LIST, added.id).meta == {"n": str(number)}
        if len(mine) > LIVE_PER_WORKER:
            oldest = mine.pop(0)
            client.remove(LIST, oldest)
            with tally.lock:
                tally.removed.add(oldest)
                tally.calls += 2


def checker(client: LookalikeClient, tally: Tally, rng: random.Random, stop: threading.Event) -> None:
    """Unary checks of listed, removed and never-added pictures."""
    while not stop.is_set():
        with tally.lock:
            known = list(tally.added.values())
        number = rng.choice(known) if known and rng.random() < 0.7 else rng.choice(NEVER_ADDED)
        result = client.check(image_for(number), [LIST], top_k=5)
        if number in NEVER_ADDED:
            assert not [m for m in result.matches if m.evidence.exact_sha256], number
        with tally.lock:
            tally.calls += 1


def streamer(
    client: LookalikeClient, tally: Tally, numbers: itertools.count[int], rng: random.Random, stop: threading.Event
) -> None:
    """Short AddEntries and CheckStream streams, each its own server-side reader thread."""
    mine: list[str] = []
    while not stop.is_set():
        batch = [next(numbers) for _ in range(3)]
        requests = [pb.AddEntryRequest(list=LIST, image=pb.Image(data=image_for(n))) for n in batch]
        for index, result in client.add_many(requests):
            assert not isinstance(result, LookalikeError), result
            with tally.lock:
                tally.added[result.id] = batch[index]
                tally.calls += 1
            mine.append(result.id)
        checks = [client.check_request(image_for(rng.choice(batch + list(NEVER_ADDED))), [LIST]) for _ in range(4)]
        for _, outcome in client.check_many(checks):
            assert not isinstance(outcome, LookalikeError), outcome
        while len(mine) > LIVE_PER_WORKER:
            oldest = mine.pop(0)
            client.remove(LIST, oldest)
            with tally.lock:
                tally.removed.add(oldest)
                tally.calls += 1


def guarded(work: Callable[[], None], tally: Tally, stop: threading.Event) -> Callable[[], None]:
    """A worker whose failure is recorded and stops everyone, so the test reports it."""

    def run() -> None:
        try:
            work()
        except Exception as error:  # noqa: BLE001 - any failure fails the soak
            with tally.lock:
                tally.errors.append(f"{type(error).__name__}: {error}")
            stop.set()

    return run


@pytest.fixture(autouse=True)
def no_server_left_behind() -> Iterator[None]:
    yield
    end_leftovers()


@pytest.mark.slow
def test_concurrent_adds_checks_and_removes_leave_consistent_counts_and_flat_memory(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", "--cpu-slots", "2", "--snapshot-interval", "1", "--snapshot-min-changes", "20"
    )
    tally = Tally()
    stop = threading.Event()
    numbers = itertools.count()
    clients = [LookalikeClient(server.address, timeout=60) for _ in range(4)]
    try:
        server.client.create_list(LIST)
        workers = [
            guarded(lambda: editor(clients[0], tally, numbers, stop), tally, stop),
            guarded(lambda: editor(clients[1], tally, numbers, stop), tally, stop),
            guarded(lambda: checker(clients[2], tally, random.Random(1), stop), tally, stop),
            guarded(lambda: streamer(clients[3], tally, numbers, random.Random(2), stop), tally, stop),
        ]
        threads = [threading.Thread(target=work, name=f"soak-{n}") for n, work in enumerate(workers)]
        for thread in threads:
            thread.start()
        samples: list[tuple[float, int]] = []
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < WARM_UP_S + 2 * HALF_S and not stop.is_set():
            samples.append((elapsed, server.anonymous_rss_kib()))
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        assert not tally.errors, tally.errors[:5]
        assert tally.calls >= 200, f"only {tally.calls} calls in {WARM_UP_S + 2 * HALF_S:g} s"

        first = [kib for at, kib in samples if WARM_UP_S <= at < WARM_UP_S + HALF_S]
        second = [kib for at, kib in samples if at >= WARM_UP_S + HALF_S]
        growth = max(second) - max(first)
        report = f"RSS MiB: first half median {statistics.median(first) / 1024:.0f}, peaks {max(first) / 1024:.0f} → "
        report += f"{max(second) / 1024:.0f}, {tally.calls} calls"
        assert growth < GROWTH_BOUND_KIB, report

        # Counts: what the list holds is exactly what was acknowledged.
        live = tally.live()
        assert server.client.get_list(LIST).entry_count == len(tally.added) - len(tally.removed) == len(live)
        requests = [server.client.check_request(image_for(number), [LIST]) for number in live.values()]
        for (_, result), (entry, number) in zip(server.client.check_many(requests), live.items(), strict=True):
            assert not isinstance(result, LookalikeError), result
            assert result.sha256 == hashlib.sha256(image_for(number)).hexdigest()
            assert [m.id for m in result.matches if m.evidence.exact_sha256] == [entry], number
        for entry in sorted(tally.removed)[:50]:
            with pytest.raises(LookalikeError) as caught:
                server.client.get_entry(LIST, entry)
            assert caught.value.code == "NOT_FOUND"
    finally:
        for client in clients:
            client.close()
        stop.set()
        assert server.stop() == 0
