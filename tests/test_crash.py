"""Crash safety: a real `lookalike serve` SIGKILLed at seeded random moments while a client streams
thousands of adds (and removes some), then a full LMDB map. After every restart each acknowledged
change is there, nothing half-written is visible, and every list's index agrees with the store."""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.client import LookalikeClient, LookalikeError, NotFound, ResourceExhausted
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.index import configure_threads
from lookalike.server.indexes import IndexRegistry
from lookalike.server.storage.store import Store
from tests.conftest import start_server
from tests.processes import ServerProcess, end_leftovers

SEED = 4242
MAP_SIZE = 1 << 30
LISTS = ("alpha", "beta")
ROUNDS = 3
SENT_PER_ROUND = 1200
KILL_AFTER = (300, 600)
"""Each round is killed once this many adds (a seeded number in the range) have been acknowledged."""
FLAGS = (
    "--map-size",
    str(MAP_SIZE),
    "--cpu-slots",
    "2",
    # Snapshots every fifth of a second, so some kills land while one is being written.
    "--snapshot-interval",
    "0.2",
    "--snapshot-min-changes",
    "50",
)


def image_for(number: int) -> bytes:
    """A small PNG of seeded coloured blocks: distinct bytes and distinct content for each number."""
    blocks = np.random.default_rng(number).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blocks, "RGB").resize((48, 48), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def entry_id(number: int) -> str:
    return f"img-{number:05d}"


def list_for(number: int) -> str:
    return LISTS[number % len(LISTS)]


@dataclass
class Ledger:
    """What the client sent and what the server acknowledged, across every round."""

    sent: set[int] = field(default_factory=set)
    added: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    """Removes acknowledged."""
    removing: set[int] = field(default_factory=set)
    """Removes sent whose answer the kill cut off: either outcome is right."""

    def must_exist(self) -> set[int]:
        return self.added - self.removed - self.removing


def stream_until_killed(
    server: ServerProcess, numbers: list[int], kill_after: int, delay: float, ledger: Ledger
) -> None:
    """Stream adds of `numbers` (a remover thread deletes every seventh acknowledged one) and
    SIGKILL the server `delay` seconds after the `kill_after`-th acknowledgement."""
    progress = threading.Condition()
    round_added: list[int] = []
    killed = threading.Event()
    failures: list[str] = []

    def requests() -> Iterator[pb.AddEntryRequest]:
        for number in numbers:
            ledger.sent.add(number)
            yield pb.AddEntryRequest(list=list_for(number), image=pb.Image(data=image_for(number)), id=entry_id(number))

    def killer() -> None:
        with progress:
            progress.wait_for(lambda: len(round_added) >= kill_after, timeout=600)
        time.sleep(delay)
        killed.set()
        try:
            server.kill()
        except AssertionError as error:
            failures.append(str(error))

    def remover() -> None:
        with LookalikeClient(server.address, timeout=30) as client:
            done = 0
            while not killed.is_set():
                with progress:
                    progress.wait_for(lambda needed=done + 7: len(round_added) >= needed or killed.is_set(), timeout=1)
                    if killed.is_set() or len(round_added) < done + 7:
                        continue
                    number = round_added[done + 6]
                done += 7
                ledger.removing.add(number)
                try:
                    client.remove(list_for(number), entry_id(number))
                except LookalikeError as error:
                    if not killed.is_set():
                        failures.append(f"remove of {number} failed while the server was up: {error}")
                    return
                ledger.removing.discard(number)
                ledger.removed.add(number)

    threads = [threading.Thread(target=killer, name="killer"), threading.Thread(target=remover, name="remover")]
    for thread in threads:
        thread.start()
    try:
        for index, result in server.client.add_many(requests()):
            if isinstance(result, LookalikeError):
                failures.append(f"add of {numbers[index]} failed: {result}")
                continue
            assert not result.duplicate and result.id == entry_id(numbers[index])
            with progress:
                round_added.append(numbers[index])
                ledger.added.add(numbers[index])
                progress.notify_all()
    except LookalikeError as error:
        if not killed.is_set():
            failures.append(f"the stream failed before the kill: {error}")
    for thread in threads:
        thread.join(timeout=600)
    assert not failures, failures[:5]
    assert killed.is_set() and kill_after <= len(round_added) < len(numbers), "the kill did not land mid-stream"


def visible_entries(client: LookalikeClient, ledger: Ledger) -> set[int]:
    """Every sent number whose entry GetEntry finds, checking that each found entry is whole."""
    found = set()
    for number in sorted(ledger.sent):
        try:
            entry = client.get_entry(list_for(number), entry_id(number))
        except NotFound:
            continue
        assert entry.hashes.sha256 == hashlib.sha256(image_for(number)).hexdigest()
        assert len(entry.hashes.pdq) == 64 and len(entry.hashes.phash) == 16 and entry.model
        found.add(number)
    return found


def assert_acknowledged_changes_survived(client: LookalikeClient, ledger: Ledger) -> set[int]:
    found = visible_entries(client, ledger)
    assert ledger.must_exist() <= found, f"acknowledged adds lost: {sorted(ledger.must_exist() - found)[:10]}"
    assert not ledger.removed & found, f"acknowledged removes undone: {sorted(ledger.removed & found)[:10]}"
    for name in LISTS:
        assert client.get_list(name).entry_count == len({n for n in found if list_for(n) == name}), name
    return found


def assert_index_agrees_with_store(data: Path, found: set[int]) -> None:
    """Open the stopped server's data folder as a restart would, and compare each list's
    index, entry by entry, with what LMDB holds and with what the API showed."""
    configure_threads(1)  # as the server does: FAISS's OpenMP threads spin against ours on a small box
    store = Store(data, MAP_SIZE)
    try:
        registry = IndexRegistry(store)
        registry.load_all()
        for record in store.lists():
            index = registry.get(record.uid)
            assert index is not None
            entries = list(store.iter_entries(record.uid))
            assert record.entry_count == len(entries), record.name
            assert index.pdq_count == len(entries) == index.vector_count, (record.name, index.checkpoint())
            for entry, embedding in entries:
                assert embedding is not None and embedding.shape == (512,), entry.id
                assert store.seq_for_digest(record.uid, entry.sha256) == entry.seq
                assert store.get_entry(record.name, entry.id).seq == entry.seq
                assert entry.seq in {hit.id for hit in index.search_pdq([entry.pdq], 0)}, entry.id
                nearest = index.search_vectors(embedding[None, :], 3)
                assert any(hit.id == entry.seq and hit.similarity > 0.999 for hit in nearest), entry.id
            named = {int(entry.id.removeprefix("img-")) for entry, _ in entries}
            assert named == {n for n in found if list_for(n) == record.name}, record.name
    finally:
        store.close()


@pytest.fixture(autouse=True)
def no_server_left_behind() -> Iterator[None]:
    yield
    end_leftovers()


@pytest.mark.slow
def test_sigkill_during_streamed_adds_loses_nothing_acknowledged_and_leaves_nothing_half_written(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    data = tmp_path / "data"
    ledger = Ledger()
    server = ServerProcess(data, *FLAGS)
    for name in LISTS:
        server.client.create_list(name)
    for round_number in range(ROUNDS):
        numbers = list(range(round_number * SENT_PER_ROUND, (round_number + 1) * SENT_PER_ROUND))
        stream_until_killed(server, numbers, rng.randint(*KILL_AFTER), rng.uniform(0, 0.05), ledger)
        if round_number == ROUNDS - 1:
            break
        server = ServerProcess(data, *FLAGS)
        assert_acknowledged_changes_survived(server.client, ledger)
    assert len(ledger.added) >= 1000

    # The server is dead: load its data folder as the next start will, and compare.
    server = ServerProcess(data, *FLAGS)
    found = assert_acknowledged_changes_survived(server.client, ledger)
    server.stop()
    assert_index_agrees_with_store(data, found)

    server = ServerProcess(data, *FLAGS)
    try:
        numbers = checked_sample(ledger, rng)
        requests = [server.client.check_request(image_for(n), [list_for(n)]) for n in numbers]
        for (position, result), number in zip(server.client.check_many(requests), numbers, strict=True):
            assert not isinstance(result, LookalikeError), (number, result)
            exact = [m.id for m in result.matches if m.evidence.exact_sha256]
            assert exact == ([entry_id(number)] if number in found else []), (position, number, exact)
    finally:
        assert server.stop() == 0
    assert_index_agrees_with_store(data, found)


def checked_sample(ledger: Ledger, rng: random.Random) -> list[int]:
    """The images checked through the API after the last restart: the entries nearest each kill
    (the last acknowledged, the first unacknowledged), every remove the kill cut off, and a seeded
    sample of the rest. Every entry's own index presence is compared in assert_index_agrees_with_store;
    checking all of them again through the API would cost a minute and prove nothing more."""
    chosen = set(ledger.removing)
    for start in range(0, max(ledger.sent) + 1, SENT_PER_ROUND):
        sent = sorted(n for n in ledger.sent if start <= n < start + SENT_PER_ROUND)
        acknowledged = [n for n in sent if n in ledger.added]
        chosen |= set(acknowledged[-10:]) | set([n for n in sent if n not in ledger.added][:10])
    chosen |= set(rng.sample(sorted(ledger.must_exist()), 100)) | set(rng.sample(sorted(ledger.removed), 20))
    return sorted(chosen)


# A full map ------------------------------------------------------------------------------------------


def test_a_full_map_refuses_adds_cleanly_while_checks_go_on(tmp_path: Path) -> None:
    handle = start_server(tmp_path / "data", map_size=1 << 20)
    client = handle.client
    client.create_list("small")
    added: list[int] = []
    try:
        with pytest.raises(ResourceExhausted) as caught:
            for number in range(1000):
                client.add("small", image_for(number), id=entry_id(number))
                added.append(number)
        assert caught.value.reason == "STORAGE_FULL" and "--map-size" in caught.value.message
        assert len(added) >= 20
        refused = len(added)

        # Streamed adds are refused one by one, and the stream goes on.
        requests = [pb.AddEntryRequest(list="small", image=pb.Image(data=image_for(n))) for n in (2000, 2001)]
        outcomes = [result for _, result in client.add_many(requests)]
        assert all(isinstance(o, ResourceExhausted) and o.reason == "STORAGE_FULL" for o in outcomes), outcomes

        # Reads, checks, and writes that free space still work.
        assert client.get_list("small").entry_count == len(added)
        for number in added[-5:] + [refused]:
            result = client.check(image_for(number), ["small"])
            exact = [m.id for m in result.matches if m.evidence.exact_sha256]
            assert exact == ([entry_id(number)] if number in added else [])
        client.remove("small", entry_id(added[0]))
        assert client.get_list("small").entry_count == len(added) - 1
    finally:
        handle.stop()  # writes index snapshots into the full map: must still shut down cleanly

    handle = start_server(tmp_path / "data", map_size=1 << 20)
    try:
        assert handle.client.get_list("small").entry_count == len(added) - 1
        result = handle.client.check(image_for(added[-1]), ["small"])
        assert result.decision == "reject" and result.matches[0].id == entry_id(added[-1])
    finally:
        handle.stop()
