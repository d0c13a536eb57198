"""server.store.Store on a real LMDB environment in a temporary folder."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from lookalike.client.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from lookalike.server.changes import EntriesAdded, EntryRemoved, ListCreated, ListDeleted, ListUpdated
from lookalike.server.records import AddOutcome, EntryRecord, ListRecord, NewEntry, encode_embedding, validate_entry_id
from lookalike.server.storage.codec import decode_embedding
from lookalike.server.storage.schema import (
    DB_CHANGES,
    DB_DIGESTS,
    DB_ENTRIES,
    DB_ENTRY_IDS,
    DB_LISTS,
    DB_META,
    DB_SNAPSHOTS,
    DB_VECTORS,
    FORMAT_VERSION,
    KEY_FORMAT_VERSION,
    OP_ADD,
    OP_REMOVE,
)
from lookalike.server.storage.store import Store

MAP_SIZE = 64 << 20
DIM = 512
MODEL = "sscd-test"

_rng = np.random.default_rng(2024)


def new_entry(entry_id: str = "", sha256: bytes | None = None, embedding: bool = True, **meta: str) -> NewEntry:
    vector = _rng.standard_normal(DIM).astype(np.float32)
    return NewEntry(
        id=entry_id or uuid.uuid4().hex,
        sha256=sha256 or _rng.bytes(32),
        pdq=_rng.bytes(32),
        pdq_quality=100,
        phash=_rng.bytes(8),
        embedding=encode_embedding(vector / np.linalg.norm(vector)) if embedding else b"",
        meta=dict(meta),
    )


# The changes the server applies, committed to the store alone (no index here).


def create_list(
    store: Store, name: str, description: str, review: float, reject: float, model: str, **options: Any
) -> ListRecord:
    change = ListCreated(
        time=time.time(),
        name=name,
        description=description,
        review_threshold=review,
        reject_threshold=reject,
        model=model,
        **options,
    )
    return store.commit(change).result


def update(store: Store, name: str, **settings: Any) -> ListRecord:
    return store.commit(ListUpdated(time=time.time(), name=name, **settings)).result


def delete(store: Store, name: str) -> ListRecord:
    return store.commit(ListDeleted(time=time.time(), name=name)).result


def add(store: Store, name: str, items: list[NewEntry], actor: str = "") -> list[AddOutcome | Exception]:
    change = EntriesAdded(time=time.time(), actor=actor, list=name, model=MODEL, entries=tuple(items))
    return store.commit(change).result


def remove(store: Store, name: str, entry_id: str) -> tuple[EntryRecord, int]:
    removed = store.commit(EntryRemoved(time=time.time(), list=name, entry_id=entry_id)).result
    return removed.entry, removed.change


def added(outcome: AddOutcome | Exception) -> AddOutcome:
    assert isinstance(outcome, AddOutcome), outcome
    return outcome


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data", MAP_SIZE)
    yield s
    s.close()


def make_list(store: Store, name: str = "banned") -> int:
    return create_list(store, name, "test list", 0.5, 0.8, MODEL).uid


def keys_with_prefix(store: Store, db_name: bytes, prefix: bytes) -> list[bytes]:
    db = store.env.open_db(db_name)
    with store.env.begin(db=db) as txn:
        return [bytes(key) for key, _ in txn.cursor() if bytes(key).startswith(prefix)]


# Lists ----------------------------------------------------------------------------


def test_create_then_get_returns_the_same_list(store: Store) -> None:
    created = create_list(store, "banned-1", "things we refuse", 0.6, 0.9, MODEL)
    fetched = store.get_list("banned-1")
    assert fetched == created
    assert (fetched.name, fetched.description, fetched.review_threshold, fetched.reject_threshold) == (
        "banned-1",
        "things we refuse",
        0.6,
        0.9,
    )
    assert (fetched.model, fetched.entry_count, fetched.next_seq, fetched.next_change) == (MODEL, 0, 1, 1)


def test_lists_returns_every_list_with_distinct_uids(store: Store) -> None:
    for name in ("a", "b_2", "c-3"):
        make_list(store, name)
    records = store.lists()
    assert sorted(record.name for record in records) == ["a", "b_2", "c-3"]
    assert len({record.uid for record in records}) == 3


def test_a_fresh_store_has_no_lists(store: Store) -> None:
    assert store.lists() == []


def test_update_changes_only_the_given_fields(store: Store) -> None:
    make_list(store)
    updated = update(store, "banned", description="new words")
    assert (updated.description, updated.review_threshold, updated.reject_threshold) == ("new words", 0.5, 0.8)
    updated = update(store, "banned", review_threshold=0.1, reject_threshold=0.2)
    assert (updated.description, updated.review_threshold, updated.reject_threshold) == ("new words", 0.1, 0.2)
    assert store.get_list("banned") == updated


def test_update_that_would_put_review_above_reject_is_refused_and_nothing_changes(store: Store) -> None:
    make_list(store)
    with pytest.raises(InvalidArgument) as caught:
        update(store, "banned", review_threshold=0.95)
    assert caught.value.reason == "THRESHOLD_ORDER"
    assert store.get_list("banned").review_threshold == 0.5


def test_delete_list_removes_it(store: Store) -> None:
    make_list(store)
    deleted = delete(store, "banned")
    assert deleted.name == "banned"
    assert store.lists() == []
    with pytest.raises(NotFound):
        store.get_list("banned")


def test_creating_a_taken_name_gives_already_exists(store: Store) -> None:
    make_list(store)
    with pytest.raises(AlreadyExists) as caught:
        make_list(store)
    assert caught.value.code == "ALREADY_EXISTS"
    assert caught.value.reason == "LIST_EXISTS"
    assert len(store.lists()) == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get_list("nope"),
        lambda s: update(s, "nope", description="x"),
        lambda s: delete(s, "nope"),
        lambda s: add(s, "nope", [new_entry()]),
        lambda s: remove(s, "nope", "x"),
        lambda s: s.get_entry("nope", "x"),
    ],
    ids=["get", "update", "delete", "add", "remove", "get_entry"],
)
def test_an_unknown_list_gives_not_found(store: Store, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFound) as caught:
        call(store)
    assert caught.value.reason == "LIST_NOT_FOUND"


@pytest.mark.parametrize("name", ["Banned", "has space", "x" * 65, "", "../x", "a/b", "ünï", "a.b", "trailing\n"])
def test_invalid_list_names_give_invalid_argument(store: Store, name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        create_list(store, name, "", 0.5, 0.8, MODEL)
    assert caught.value.reason == "LIST_NAME_INVALID"
    with pytest.raises(InvalidArgument):
        store.get_list(name)
    assert store.lists() == []


def test_a_64_character_name_is_accepted(store: Store) -> None:
    assert create_list(store, "x" * 64, "", 0.5, 0.8, MODEL).name == "x" * 64


@pytest.mark.parametrize(
    ("review", "reject", "reason"),
    [
        (-0.01, 0.5, "THRESHOLD_OUT_OF_RANGE"),
        (0.5, 1.01, "THRESHOLD_OUT_OF_RANGE"),
        (1.5, 2.0, "THRESHOLD_OUT_OF_RANGE"),
        (float("nan"), 0.5, "THRESHOLD_OUT_OF_RANGE"),
        (0.9, 0.8, "THRESHOLD_ORDER"),
    ],
)
def test_bad_thresholds_give_invalid_argument(store: Store, review: float, reject: float, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        create_list(store, "banned", "", review, reject, MODEL)
    assert caught.value.reason == reason
    assert store.lists() == []


@pytest.mark.parametrize(("review", "reject"), [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.7, 0.7)])
def test_thresholds_at_the_bounds_are_accepted(store: Store, review: float, reject: float) -> None:
    record = create_list(store, "banned", "", review, reject, MODEL)
    assert (record.review_threshold, record.reject_threshold) == (review, reject)


# Entries ----------------------------------------------------------------------------


def test_add_entries_stores_entries_with_increasing_seqs_and_changes(store: Store) -> None:
    uid = make_list(store)
    items = [new_entry("first", source="a"), new_entry(), new_entry(embedding=False)]
    outcomes = [added(o) for o in add(store, "banned", items)]

    assert [o.duplicate for o in outcomes] == [False, False, False]
    assert [o.entry.seq for o in outcomes] == [1, 2, 3]
    assert [o.change for o in outcomes] == [1, 2, 3]
    assert outcomes[0].entry.id == "first"
    assert outcomes[0].entry.meta == {"source": "a"}
    assert outcomes[1].entry.id  # generated
    assert outcomes[2].entry.model == ""  # no embedding, no model
    record = store.get_list("banned")
    assert (record.entry_count, record.next_seq, record.next_change) == (3, 4, 4)

    fetched = store.get_entry("banned", "first")
    assert fetched == outcomes[0].entry
    assert (fetched.sha256, fetched.pdq) == (items[0].sha256, items[0].pdq)
    vectors = store.embeddings(uid, [1, 2, 3])
    assert sorted(vectors) == [1, 2]
    np.testing.assert_allclose(vectors[1], decode_embedding(items[0].embedding), atol=1e-3)  # float16, as given
    assert store.seq_for_digest(uid, items[1].sha256) == 2
    assert [entry.seq for entry, _ in store.iter_entries(uid)] == [1, 2, 3]


def test_adding_the_same_sha256_again_returns_the_first_entry_as_a_duplicate(store: Store) -> None:
    make_list(store)
    first = added(add(store, "banned", [new_entry("one")])[0])
    again = added(add(store, "banned", [new_entry("two", sha256=first.entry.sha256)])[0])

    assert again.duplicate is True
    assert again.change == 0
    assert again.entry.id == "one"
    assert again.entry == first.entry
    assert store.get_list("banned").entry_count == 1
    with pytest.raises(NotFound):
        store.get_entry("banned", "two")


def test_the_same_sha256_twice_within_one_batch_is_stored_once(store: Store) -> None:
    uid = make_list(store)
    sha = _rng.bytes(32)
    outcomes = [added(o) for o in add(store, "banned", [new_entry("a", sha), new_entry("b", sha)])]

    assert [o.duplicate for o in outcomes] == [False, True]
    assert outcomes[1].entry.id == "a"
    assert store.get_list("banned").entry_count == 1
    assert [c.seq for c in store.changes_after(uid, 0)] == [1]


def test_the_same_bytes_on_another_list_are_not_a_duplicate(store: Store) -> None:
    make_list(store, "one")
    make_list(store, "two")
    sha = _rng.bytes(32)
    assert added(add(store, "one", [new_entry(sha256=sha)])[0]).duplicate is False
    assert added(add(store, "two", [new_entry(sha256=sha)])[0]).duplicate is False


def test_a_reused_entry_id_with_other_bytes_fails_that_item_only(store: Store) -> None:
    make_list(store)
    added(add(store, "banned", [new_entry("taken")])[0])
    good_before, good_after = new_entry("fresh-1"), new_entry("fresh-2")

    outcomes = add(store, "banned", [good_before, new_entry("taken"), good_after])

    assert isinstance(outcomes[1], AlreadyExists)
    assert outcomes[1].reason == "ENTRY_ID_EXISTS"
    assert [added(outcomes[0]).entry.id, added(outcomes[2]).entry.id] == ["fresh-1", "fresh-2"]
    assert store.get_list("banned").entry_count == 3
    assert store.get_entry("banned", "fresh-2").sha256 == good_after.sha256


def test_an_entry_id_reused_within_one_batch_fails_the_second_item(store: Store) -> None:
    make_list(store)
    outcomes = add(store, "banned", [new_entry("same"), new_entry("same")])
    assert added(outcomes[0]).entry.id == "same"
    assert isinstance(outcomes[1], AlreadyExists)
    assert store.get_list("banned").entry_count == 1


def test_remove_entry_deletes_the_entry_its_id_digest_and_vector_and_logs_a_change(store: Store) -> None:
    uid = make_list(store)
    keep, gone = new_entry("keep"), new_entry("gone")
    add(store, "banned", [keep, gone])

    entry, change = remove(store, "banned", "gone")

    assert (entry.id, entry.seq, change) == ("gone", 2, 3)
    with pytest.raises(NotFound) as caught:
        store.get_entry("banned", "gone")
    assert caught.value.reason == "ENTRY_NOT_FOUND"
    assert store.seq_for_digest(uid, gone.sha256) is None
    assert store.entries_by_seq(uid, [1, 2]).keys() == {1}
    assert store.embeddings(uid, [1, 2]).keys() == {1}
    assert [e.id for e, _ in store.iter_entries(uid)] == ["keep"]
    assert store.get_list("banned").entry_count == 1
    assert store.changes_after(uid, 2)[0].op == OP_REMOVE
    # The same bytes can be listed again afterwards, as a new entry.
    again = added(add(store, "banned", [new_entry("gone", gone.sha256)])[0])
    assert (again.duplicate, again.entry.seq) == (False, 3)


def test_removing_an_unknown_entry_gives_not_found_and_changes_nothing(store: Store) -> None:
    uid = make_list(store)
    add(store, "banned", [new_entry("x")])
    with pytest.raises(NotFound):
        remove(store, "banned", "y")
    assert len(store.changes_after(uid, 0)) == 1
    assert store.get_list("banned").entry_count == 1


@pytest.mark.parametrize("entry_id", ["x" * 256, "é" * 128, "id with inner spaces", "ñ-1"])
def test_entry_ids_up_to_256_utf8_bytes_are_valid_and_storable(store: Store, entry_id: str) -> None:
    validate_entry_id(entry_id)
    make_list(store)
    assert added(add(store, "banned", [new_entry(entry_id)])[0]).entry.id == entry_id
    assert store.get_entry("banned", entry_id).id == entry_id
    assert remove(store, "banned", entry_id)[0].id == entry_id


@pytest.mark.parametrize(
    "entry_id",
    ["x" * 257, "€" * 256, "é" * 129, " lead", "trail ", "new\nline", "tab\t", "\x00"],
    ids=["257-ascii", "256-euro", "129-e-acute", "lead", "trail", "newline", "tab", "nul"],
)
def test_invalid_entry_ids_give_invalid_argument(entry_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_entry_id(entry_id)
    assert caught.value.reason == "ENTRY_ID_INVALID"


# Change log and snapshots ------------------------------------------------------------


def test_changes_after_lists_adds_then_removes_in_order(store: Store) -> None:
    uid = make_list(store)
    add(store, "banned", [new_entry("a"), new_entry("b"), new_entry("c")])
    remove(store, "banned", "b")
    remove(store, "banned", "a")

    changes = store.changes_after(uid, 0)
    assert [(c.number, c.op, c.seq) for c in changes] == [
        (1, OP_ADD, 1),
        (2, OP_ADD, 2),
        (3, OP_ADD, 3),
        (4, OP_REMOVE, 2),
        (5, OP_REMOVE, 1),
    ]
    assert [c.number for c in store.changes_after(uid, 3)] == [4, 5]
    assert store.changes_after(uid, 5) == []


def test_changes_after_does_not_mix_lists(store: Store) -> None:
    one, two = make_list(store, "one"), make_list(store, "two")
    add(store, "one", [new_entry(), new_entry()])
    add(store, "two", [new_entry()])
    assert [c.seq for c in store.changes_after(one, 0)] == [1, 2]
    assert [c.seq for c in store.changes_after(two, 0)] == [1]


def test_save_snapshot_drops_covered_changes_and_load_returns_it(store: Store) -> None:
    uid = make_list(store)
    add(store, "banned", [new_entry() for _ in range(5)])
    assert store.load_snapshot(uid) is None
    assert store.snapshot_change(uid) == 0

    assert store.save_snapshot(uid, 3, b"index-bytes\x00\xff") is True

    assert store.load_snapshot(uid) == (3, b"index-bytes\x00\xff")
    assert store.snapshot_change(uid) == 3
    assert [c.number for c in store.changes_after(uid, 0)] == [4, 5]
    # A later snapshot replaces the earlier one and drops the rest of the log.
    assert store.save_snapshot(uid, 5, b"newer") is True
    assert store.load_snapshot(uid) == (5, b"newer")
    assert store.changes_after(uid, 0) == []


def pieces_of(store: Store, uid: int) -> dict[int, bytes]:
    return {number: bytes(data) for number, data in store.snapshot_pieces(uid)}


def test_snapshot_pieces_are_rewritten_only_when_given_and_kept_only_when_named(store: Store) -> None:
    uid, other = make_list(store), make_list(store, "other")
    assert store.save_snapshot(uid, 0, b"first", {0: b"p0", 1: b"p1", 7: b"p7"}, {0, 1, 7})
    assert store.save_snapshot(other, 0, b"other", {0: b"o0"}, {0})
    assert pieces_of(store, uid) == {0: b"p0", 1: b"p1", 7: b"p7"}

    assert store.save_snapshot(uid, 0, b"second", {1: b"p1'", 2: b"p2"}, {0, 1, 2})

    assert store.load_snapshot(uid) == (0, b"second")
    assert pieces_of(store, uid) == {0: b"p0", 1: b"p1'", 2: b"p2"}, "7 is no longer named"
    assert pieces_of(store, other) == {0: b"o0"}
    delete(store, "banned")
    assert pieces_of(store, uid) == {}
    assert pieces_of(store, other) == {0: b"o0"}


def test_save_snapshot_leaves_other_lists_changes_alone(store: Store) -> None:
    one, two = make_list(store, "one"), make_list(store, "two")
    add(store, "one", [new_entry(), new_entry()])
    add(store, "two", [new_entry(), new_entry()])
    store.save_snapshot(one, 2, b"x")
    assert store.changes_after(one, 0) == []
    assert [c.number for c in store.changes_after(two, 0)] == [1, 2]
    assert store.load_snapshot(two) is None


def test_save_snapshot_of_a_deleted_list_writes_nothing(store: Store) -> None:
    uid = make_list(store)
    delete(store, "banned")
    assert store.save_snapshot(uid, 1, b"x") is False
    assert store.load_snapshot(uid) is None


# Deleting lists -----------------------------------------------------------------------


def test_delete_list_removes_every_record_under_its_prefix(store: Store) -> None:
    doomed, kept = make_list(store, "doomed"), make_list(store, "kept")
    add(store, "doomed", [new_entry(f"d{i}") for i in range(20)])
    add(store, "kept", [new_entry(f"k{i}") for i in range(3)])
    remove(store, "doomed", "d4")
    store.save_snapshot(doomed, 2, b"snap")
    store.save_snapshot(kept, 1, b"kept-snap")

    delete(store, "doomed")

    dbs = (DB_ENTRIES, DB_ENTRY_IDS, DB_DIGESTS, DB_VECTORS, DB_CHANGES, DB_SNAPSHOTS)
    doomed_prefix, kept_prefix = doomed.to_bytes(4, "big"), kept.to_bytes(4, "big")
    for db in dbs:
        assert keys_with_prefix(store, db, doomed_prefix) == [], db
    assert [len(keys_with_prefix(store, db, kept_prefix)) for db in dbs] == [3, 3, 3, 3, 2, 1]
    assert store.get_entry("kept", "k2").id == "k2"


def test_recreating_a_deleted_name_gives_an_empty_list_with_a_new_uid(store: Store) -> None:
    old_uid = make_list(store)
    old = [new_entry("e1"), new_entry("e2")]
    add(store, "banned", old)
    delete(store, "banned")

    record = create_list(store, "banned", "again", 0.5, 0.8, MODEL)

    assert record.uid != old_uid
    assert (record.entry_count, record.next_seq, record.next_change) == (0, 1, 1)
    assert list(store.iter_entries(record.uid)) == []
    assert store.changes_after(record.uid, 0) == []
    with pytest.raises(NotFound):
        store.get_entry("banned", "e1")
    # The old bytes are not duplicates on the new list.
    assert added(add(store, "banned", [new_entry("e1", old[0].sha256)])[0]).duplicate is False


# Persistence ---------------------------------------------------------------------------


def test_data_survives_closing_and_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "data"
    store = Store(path, MAP_SIZE)
    uid = make_list(store)
    item = new_entry("kept", note="hello")
    add(store, "banned", [item, new_entry("gone")])
    remove(store, "banned", "gone")
    store.save_snapshot(uid, 1, b"snapshot")
    before = store.get_list("banned")
    store.close()

    reopened = Store(path, MAP_SIZE)
    try:
        assert reopened.get_list("banned") == before
        entry = reopened.get_entry("banned", "kept")
        assert (entry.sha256, entry.meta) == (item.sha256, {"note": "hello"})
        np.testing.assert_allclose(reopened.embeddings(uid, [entry.seq])[entry.seq], decode_embedding(item.embedding))
        assert reopened.load_snapshot(uid) == (1, b"snapshot")
        assert [(c.number, c.op) for c in reopened.changes_after(uid, 1)] == [(2, OP_ADD), (3, OP_REMOVE)]
        # New lists keep getting fresh uids after a restart.
        assert make_list(reopened, "second") != uid
    finally:
        reopened.close()


def test_a_data_folder_with_another_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data"
    Store(path, MAP_SIZE).close()
    env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=16)
    with env.begin(write=True, db=env.open_db(DB_META)) as txn:
        txn.put(KEY_FORMAT_VERSION, str(FORMAT_VERSION + 1).encode())
    env.close()

    with pytest.raises(FailedPrecondition) as caught:
        Store(path, MAP_SIZE)
    assert caught.value.reason == "DATA_FORMAT_VERSION"


def test_a_format_1_folder_with_float32_embeddings_is_read_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "data"
    store = Store(path, MAP_SIZE)
    uid = make_list(store)
    item = new_entry("old")
    add(store, "banned", [item])
    store.close()
    env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=32)  # as a format 1 server left it
    meta, vectors = env.open_db(DB_META), env.open_db(DB_VECTORS)
    exact = decode_embedding(item.embedding)
    with env.begin(write=True) as txn:
        txn.put(KEY_FORMAT_VERSION, b"1", db=meta)
        txn.put(uid.to_bytes(4, "big") + (1).to_bytes(8, "big"), exact.tobytes(), db=vectors)
    env.close()

    reopened = Store(path, MAP_SIZE)
    try:
        np.testing.assert_array_equal(reopened.embeddings(uid, [1])[1], exact)
        add(reopened, "banned", [new_entry("new")])
        assert len(reopened.embeddings(uid, [2])[2]) == DIM
        meta = reopened.env.open_db(DB_META)
        with reopened.env.begin() as txn:
            assert txn.get(KEY_FORMAT_VERSION, db=meta) == str(FORMAT_VERSION).encode()  # opening upgrades it all
    finally:
        reopened.close()


# A full map ----------------------------------------------------------------------------


def test_a_full_map_gives_storage_full_and_the_store_stays_readable(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", 1 << 20)
    try:
        uid = make_list(store)
        stored = 0
        with pytest.raises(ResourceExhausted) as caught:
            for batch in range(100):
                add(store, "banned", [new_entry(f"e{batch}-{i}") for i in range(20)])
                stored += 20
        assert caught.value.reason == "STORAGE_FULL"
        assert stored > 0

        # The failed batch was rolled back whole; everything before it is intact.
        assert store.get_list("banned").entry_count == stored
        assert len(list(store.iter_entries(uid))) == stored
        assert store.get_entry("banned", "e0-0").id == "e0-0"
        assert len(store.changes_after(uid, 0)) == stored
        # Writes that free space still work, and once they have freed enough, adds work again.
        remove(store, "banned", "e0-0")
        assert store.get_list("banned").entry_count == stored - 1
        for entry_id in [f"e{batch}-{i}" for batch in range(stored // 40) for i in range(20)][1:]:  # half
            remove(store, "banned", entry_id)
        store.save_snapshot(uid, store.get_list("banned").next_change - 1, b"")  # prunes the change log
        add(store, "banned", [new_entry(f"again-{i}") for i in range(20)])
        assert store.get_entry("banned", "again-19").id == "again-19"
    finally:
        store.close()


def test_each_list_counts_its_hash_only_entries_through_adds_and_removals(store: Store) -> None:
    """Entries with a PDQ hash and no embedding only a PDQ search finds: checks need to know whether any exist."""
    make_list(store)
    add(store, "banned", [new_entry("picture"), new_entry("hash-a", embedding=False)])
    add(store, "banned", [new_entry("hash-b", embedding=False)])
    assert store.get_list("banned").pdq_only_count == 2
    remove(store, "banned", "hash-a")
    remove(store, "banned", "picture")
    assert store.get_list("banned").pdq_only_count == 1


def test_a_list_stored_before_the_count_is_counted_once_with_or_without_the_write_lock(store: Store) -> None:
    for name in ("optimistic", "locked"):
        make_list(store, name)
        add(store, name, [new_entry(), new_entry(embedding=False), new_entry(embedding=False)])
        lists = store.env.open_db(DB_LISTS)
        with store.env.begin(write=True, db=lists) as txn:
            record = json.loads(txn.get(name.encode()))
            del record["pdq_only_count"]
            txn.put(name.encode(), json.dumps(record).encode())
        assert store.get_list(name).pdq_only_count is None
    assert store.count_pdq_only("optimistic")
    assert store.count_pdq_only("locked", attempts=0)  # what a list that keeps changing gets in the end
    assert store.get_list("optimistic").pdq_only_count == store.get_list("locked").pdq_only_count == 2
    assert not store.count_pdq_only("optimistic"), "counted once"
    assert not store.count_pdq_only("gone")
