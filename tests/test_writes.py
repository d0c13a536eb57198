"""The one write path: change records, their encoding, and replicas that apply the same records alike.

A real server takes writes of every kind over gRPC; each change it applies is recorded as the bytes cluster
mode would publish. A second store that has never seen a picture (no model, no fingerprinting) applies the
same records and must end with the same bytes in every replicated database; applying them again changes
nothing.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import replace
from pathlib import Path

import lmdb
import numpy as np
import pytest

from lookalike.client import AlreadyExists, LookalikeClient, NotFound
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.server.changes import (
    KINDS,
    RECORD_LIMIT,
    Change,
    EntriesAdded,
    EntryConfirmed,
    EntryRemoved,
    KeyCreated,
    KeyRevoked,
    ListCreated,
    ListDeleted,
    ListUpdated,
    MalformedChange,
    decode_change,
    encode_change,
    split_to_fit,
)
from lookalike.server.flood import FloodGuard, FloodSettings
from lookalike.server.indexes import IndexRegistry
from lookalike.server.records import META_MAX_CHARS, NewEntry, encode_embedding
from lookalike.server.storage import schema
from lookalike.server.storage.store import AlreadyApplied, Store
from lookalike.server.writes import WritePath
from tests.conftest import distinct_photos, start_server

NOW = 1_750_000_000.123456


def picture_entry(rng: random.Random, entry_id: str, **meta: str) -> NewEntry:
    vector = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(512).astype(np.float32)
    return NewEntry(
        id=entry_id,
        sha256=rng.randbytes(32),
        pdq=rng.randbytes(32),
        pdq_quality=rng.randrange(101),
        phash=rng.randbytes(8),
        embedding=encode_embedding(vector / np.linalg.norm(vector)),
        meta=meta,
        md5=rng.randbytes(16),
    )


def hash_entry(rng: random.Random, entry_id: str, **meta: str) -> NewEntry:
    return NewEntry(id=entry_id, pdq=rng.randbytes(32), pdq_quality=100, md5=rng.randbytes(16), meta=meta)


def examples() -> list[Change]:
    rng = random.Random(7)
    return [
        ListCreated(
            time=NOW, actor="k1", name="banned", description="removed — ünïcode", review_threshold=0.5,
            reject_threshold=0.8, model="sscd-distilled",
        ),
        ListCreated(
            time=NOW, name="logos", description="", review_threshold=0.0, reject_threshold=1.0, model="m",
            dihedral=False, kind="allow", thumbnails=True, keypoints=False,
        ),
        ListUpdated(time=NOW, actor="k1", name="banned"),
        ListUpdated(time=NOW, actor="k1", name="logos", thumbnails=False),
        ListUpdated(time=NOW, actor="k1", name="logos", keypoints=True),
        ListUpdated(
            time=NOW, actor="k1", name="banned", description="", review_threshold=0.25, reject_threshold=0.75,
            dihedral=False, cause="calibrate",
        ),
        ListDeleted(time=NOW, actor="k2", name="banned"),
        EntriesAdded(
            time=NOW, actor="k3", list="banned", model="sscd-distilled",
            entries=(picture_entry(rng, "photo-1", case="1234", note="tab\there"), hash_entry(rng, "ncmec-7")),
        ),
        EntriesAdded(time=NOW, list="banned", model="", entries=()),
        EntriesAdded(time=NOW, list="banned", model="", entries=(NewEntry("sha-only", sha256=rng.randbytes(32)),)),
        EntriesAdded(
            time=NOW, list="logos", model="m",
            entries=(replace(picture_entry(rng, "shown"), thumbnail=b"RIFF" + rng.randbytes(3000)),),
        ),
        EntryRemoved(time=NOW, actor="k3", list="banned", entry_id="photo-1"),
        KeyCreated(time=NOW, name="ops", role="admin", lists=(), digest=rng.randbytes(32)),
        KeyCreated(time=NOW, actor="k1", name="", role="writer", lists=("banned", "other"), digest=rng.randbytes(32)),
        KeyRevoked(time=NOW, actor="k1", key_id="k2"),
        EntryConfirmed(time=NOW, actor="k1", list="banned", entry_id="ncmec-7"),
        EntryConfirmed(
            time=NOW, actor="k1", list="banned", entry_id="ncmec-7",
            detail={"guarded": "true", "recent_matches": "41.0", "since": "1749999000.000"},
        ),
    ]  # fmt: skip


# The encoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", examples(), ids=lambda change: type(change).__name__)
def test_every_kind_of_change_round_trips_through_its_encoding(change: Change) -> None:
    encoded = encode_change(change)
    assert decode_change(encoded) == change
    assert encode_change(decode_change(encoded)) == encoded


def test_the_examples_cover_every_kind() -> None:
    assert {type(change) for change in examples()} == set(KINDS)


def test_bytes_that_are_not_a_change_of_this_version_are_refused() -> None:
    good = encode_change(examples()[0])
    text_at = good.index(b"banned")
    for bad, problem in [
        (b"\x02" + good[1:], "record version 2"),
        (good[:1] + b"\x63" + good[2:], "unknown kind 99"),
        (good[:-2], "it ends at byte"),
        (good + b"\0", "1 bytes left over"),
        (good[:text_at] + b"\xff" + good[text_at + 1 :], "is not UTF-8"),
        (b"", "it ends at byte 0"),
    ]:
        with pytest.raises(MalformedChange, match=problem):
            decode_change(bad)


def test_a_list_created_by_a_node_before_the_keypoints_setting_keeps_keypoints() -> None:
    created = examples()[1]
    assert isinstance(created, ListCreated) and not created.keypoints
    older = encode_change(created)[:-1]  # such a node wrote no keypoints byte
    assert decode_change(older) == replace(created, keypoints=True)


def test_a_thousand_hash_entries_fit_one_message_and_picture_entries_are_split_to_fit() -> None:
    rng = random.Random(3)
    imported = EntriesAdded(
        time=NOW, actor="k9", list="shared", model="",
        entries=tuple(hash_entry(rng, rng.randbytes(16).hex(), source="ncmec", case=str(n)) for n in range(1000)),
    )  # fmt: skip
    size = len(encode_change(imported))
    assert size < 150_000 and split_to_fit(imported) == [imported]

    pictures = EntriesAdded(
        time=NOW, actor="k9", list="banned", model="sscd-distilled",
        entries=tuple(picture_entry(rng, f"p{n}", case=str(n)) for n in range(1000)),
    )  # fmt: skip
    assert len(encode_change(pictures)) > RECORD_LIMIT
    pieces = split_to_fit(pictures)
    assert len(pieces) == 2
    assert all(len(encode_change(piece)) <= RECORD_LIMIT for piece in pieces)
    assert tuple(entry for piece in pieces for entry in piece.entries) == pictures.entries  # type: ignore[union-attr]
    assert all(decode_change(encode_change(piece)) == piece for piece in pieces)

    # The largest entry the limits allow (a 256-byte id, 4096 characters of meta, each 4 bytes in UTF-8).
    largest = picture_entry(rng, "x" * 256, **{f"k{n}": "\U0001f600" * (META_MAX_CHARS // 64 - 3) for n in range(64)})
    large = EntriesAdded(time=NOW, list="banned", model="sscd-distilled", entries=(largest,) * 200)
    pieces = split_to_fit(large)
    assert len(pieces) > 3 and all(len(encode_change(piece)) <= RECORD_LIMIT for piece in pieces)
    assert sum(len(piece.entries) for piece in pieces) == 200  # type: ignore[union-attr]


# Replicas -------------------------------------------------------------------------------------------------


def every_record(data: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every record of every database in a data folder (node-local ones too)."""
    env = lmdb.open(str(data), readonly=True, lock=False, max_dbs=schema.MAX_DATABASES, subdir=True)
    try:
        with env.begin() as txn:
            return {name: list(txn.cursor(db=env.open_db(name, txn=txn))) for name in schema.DATABASES}
    finally:
        env.close()


def test_two_replicas_fed_the_same_change_records_hold_the_same_bytes_and_applying_again_changes_nothing(
    tmp_path: Path,
) -> None:
    photos = [path.read_bytes() for path in distinct_photos(3, seed=19)]
    leader = start_server(tmp_path / "leader")
    published: list[tuple[int, bytes]] = []
    leader.running.service.writes.on_applied(lambda number, change: published.append((number, encode_change(change))))
    try:
        boot = leader.client
        boot.create_list("banned", description="removed pictures", thumbnails=True)
        boot.create_list("logos", kind="allow")
        first = boot.add("banned", photos[0], meta={"case": "1"})
        assert boot.add("banned", photos[0]).duplicate  # decided when applied: a duplicate, stored once
        boot.add("banned", photos[1], id="second")
        boot.add_hash("banned", boot.hash_entry(pdq="ab" * 32, md5="cd" * 16, meta={"source": "ncmec"}))
        boot.import_entries("logos", [boot.hash_entry(md5=f"{n:032x}", id=f"logo-{n}") for n in range(50)])
        boot.create_list("copies")
        exported = [
            pb.HashEntry(
                id=entry.id,
                pdq=entry.hashes.pdq,
                pdq_quality=entry.hashes.pdq_quality,
                md5=entry.hashes.md5,
                sha256=entry.hashes.sha256,
                phash=entry.hashes.phash,
                meta=entry.meta,
                model=entry.model,
                embedding=entry.embedding,
            )
            for entry in boot.export_entries("banned", with_embeddings=True)
        ]
        assert boot.import_entries("copies", exported).added == 3  # with their embeddings
        boot.update_list("banned", review_threshold=0.4)
        boot.remove("banned", "second")
        boot.create_list("shown", thumbnails=True)
        boot.add("shown", photos[1])
        boot.update_list("shown", thumbnails=False)  # its thumbnails deleted as the change is applied
        boot.update_list("shown", keypoints=False)  # and now its keypoints
        boot.create_list("small", keypoints=False)
        boot.add("small", photos[2])  # fingerprinted without keypoints
        root = boot.create_key("admin", name="root")
        with LookalikeClient(leader.address, api_key=root.secret) as admin:
            writer = admin.create_key("writer", ["banned"], name="uploads")
            with LookalikeClient(leader.address, api_key=writer.secret) as uploader:
                uploader.add("banned", photos[2], id="by-writer")
            admin.revoke_key(writer.info.id)
            admin.confirm_entry("banned", first.id)
            admin.delete_list("logos")
            admin.check(photos[1], ["banned"])  # node-local: a stored check, no change
    finally:
        leader.stop()

    sequences = [sequence for sequence, _ in published]
    assert sequences == list(range(1, len(published) + 1)), "one node numbers its changes 1, 2, 3, ..."
    assert {type(decode_change(record)) for _, record in published} == set(KINDS)

    follower = Store(tmp_path / "follower", 1 << 30)
    leader_store = Store(tmp_path / "leader", 1 << 30)
    try:
        registry = IndexRegistry(follower, background=False)
        writes = WritePath(follower, registry, FloodGuard(follower, FloodSettings()))
        for sequence, record in published:
            writes.apply(decode_change(record), sequence)

        assert follower.replicated_contents() == leader_store.replicated_contents()
        # Thumbnails travel in the records: the two pictures left on "banned" (made by the leader alone).
        assert len(follower.replicated_contents()[schema.DB_THUMBNAILS]) == 2
        assert follower.applied_sequence() == leader_store.applied_sequence() == len(published)
        for record in follower.lists():  # the follower's indexes find what its store holds
            index = registry.get(record.uid)
            assert index is not None and index.pdq_count == record.entry_count
            for entry, vector in follower.iter_entries(record.uid):
                assert entry.seq in {hit.id for hit in index.search_pdq([entry.pdq], 0)}
                if vector is not None:
                    assert entry.seq in {hit.id for hit in index.search_vectors(vector, 3)}
    finally:
        follower.close()
        leader_store.close()

    before = every_record(tmp_path / "follower")
    follower = Store(tmp_path / "follower", 1 << 30)
    try:
        registry = IndexRegistry(follower, background=False)
        registry.load_all()
        writes = WritePath(follower, registry, FloodGuard(follower, FloodSettings()))
        for sequence, record in published:
            with pytest.raises(AlreadyApplied):
                writes.apply(decode_change(record), sequence)
        # Refused alike on every replica, from what is stored: nothing is written, not even the sequence.
        after = len(published) + 1
        with pytest.raises(AlreadyExists):
            writes.apply(decode_change(published[0][1]), after)
        with pytest.raises(NotFound):
            writes.apply(EntryRemoved(time=time.time(), list="banned", entry_id="second"), after)
        assert follower.applied_sequence() == len(published)
    finally:
        follower.close()
    assert every_record(tmp_path / "follower") == before


def test_a_single_node_numbers_its_changes_and_a_refused_one_takes_no_number(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", 1 << 26)
    try:
        writes = WritePath(store, IndexRegistry(store, background=False), FloodGuard(store, FloodSettings()))
        seen: list[int] = []
        writes.on_applied(lambda sequence, change: seen.append(sequence))
        created = ListCreated(
            time=NOW, name="banned", description="", review_threshold=0.5, reject_threshold=0.8, model="m"
        )
        writes.apply(created)
        with pytest.raises(AlreadyExists):
            writes.apply(created)
        digest = hashlib.sha256(b"secret").digest()
        writes.apply(KeyCreated(time=NOW, name="ops", role="admin", lists=(), digest=digest))
        assert seen == [1, 2] and store.applied_sequence() == 2
        with pytest.raises(AlreadyApplied):
            writes.apply(ListDeleted(time=NOW, name="banned"), 2)
        assert [record.name for record in store.lists()] == ["banned"]
    finally:
        store.close()


# The schema ---------------------------------------------------------------------------------------------


def test_every_database_a_server_creates_is_named_in_the_schema(tmp_path: Path) -> None:
    photo = distinct_photos(1, seed=23)[0].read_bytes()
    server = start_server(tmp_path / "data")
    try:
        server.client.create_list("banned")
        listed = server.client.add("banned", photo)
        result = server.client.check(photo, ["banned"], request_id="c1")
        server.client.submit_feedback("c1", verdict="confirmed")
        assert result.matches[0].id == listed.id
        server.client.check(photo, ["banned"], defer=True, request_id="c2")
        assert server.client.wait_for_check("c2").status == "done"
    finally:
        server.stop()
    env = lmdb.open(str(tmp_path / "data"), readonly=True, lock=False, max_dbs=schema.MAX_DATABASES, subdir=True)
    try:
        with env.begin() as txn:
            created = {bytes(name) for name, _ in txn.cursor()}  # the main database names the named ones
    finally:
        env.close()
    assert created == set(schema.DATABASES)
    assert set(schema.REPLICATED_DATABASES).isdisjoint(schema.NODE_LOCAL_DATABASES)
    assert len(schema.DATABASES) + len(schema.FORMAT_2_DATABASES) <= schema.MAX_DATABASES
