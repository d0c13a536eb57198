"""Installing a cluster snapshot over a node's data (server.storage.snapshot), on real LMDB folders: the
replicated databases become the snapshot's, the node-local ones stay (but for index snapshots, which
described the old entries), and an install that fails leaves the old data whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.client.errors import FailedPrecondition
from lookalike.server.storage import schema
from lookalike.server.storage.errors import StorageFull
from lookalike.server.storage.snapshot import install_snapshot, write_snapshot
from lookalike.server.storage.store import Store
from tests.test_store import MAP_SIZE, MODEL, add, create_list, new_entry

NODE_LOCAL = {
    schema.DB_RATES: (schema.FLOOD_KEY.pack(1, 1), schema.FLOOD_RATE.pack(1.0, 2.0, 3.0)),
    schema.DB_CHECKS: (schema.owned_key("", "check-1"), b'{"id": "check-1"}'),
    schema.DB_META: (schema.KEY_WEBHOOK_SECRET, b"this node's secret"),
}


def filled(path: Path, list_name: str, entries: int, map_size: int = MAP_SIZE, padding: int = 0) -> Store:
    store = Store(path, map_size)
    create_list(store, list_name, "", 0.5, 0.9, MODEL)
    for start in range(0, entries, 100):
        add(store, list_name, [new_entry(pad="x" * padding) for _ in range(min(100, entries - start))])
    return store


def snapshot_of(store: Store, target: Path) -> Path:
    write_snapshot(store.environment, target)
    return target


def with_node_local_records(store: Store) -> None:
    with store.environment.transaction() as txn:
        for name, (key, value) in NODE_LOCAL.items():
            txn.put(key, value, db=store.environment.db(name))
        txn.put(schema.list_prefix(1), b"an index snapshot", db=store.environment.db(schema.DB_SNAPSHOTS))


def node_local_records(store: Store) -> dict[bytes, bytes | None]:
    with store.environment.read() as txn:
        return {name: txn.get(key, db=store.environment.db(name)) for name, (key, _) in NODE_LOCAL.items()}


def test_an_install_replaces_the_replicated_data_and_keeps_the_node_local(tmp_path: Path) -> None:
    source = filled(tmp_path / "source", "new", 250)
    snapshot = snapshot_of(source, tmp_path / "snapshot.mdb")
    target = filled(tmp_path / "target", "old", 30)
    with_node_local_records(target)
    with snapshot.open("rb") as reader:
        assert install_snapshot(reader, target.environment) == source.applied_sequence()
    assert target.replicated_contents() == source.replicated_contents()
    assert [record.name for record in target.lists()] == ["new"]
    assert node_local_records(target) == {name: value for name, (_, value) in NODE_LOCAL.items()}
    with target.environment.read() as txn:
        assert txn.get(schema.list_prefix(1), db=target.environment.db(schema.DB_SNAPSHOTS)) is None
    assert not list(target.environment.path.glob("snapshot-install-*"))  # its copy of the snapshot is gone
    source.close()
    target.close()


def test_an_install_the_map_cannot_hold_leaves_the_old_data_whole(tmp_path: Path) -> None:
    """Old and new data must both fit while the transaction runs: one that does not is rolled back."""
    source = filled(tmp_path / "source", "new", 2000, padding=2000)
    snapshot = snapshot_of(source, tmp_path / "snapshot.mdb")
    source.close()
    small = 4 << 20
    target = filled(tmp_path / "target", "old", 200, map_size=small)
    with_node_local_records(target)
    before = target.replicated_contents(), node_local_records(target)
    with snapshot.open("rb") as reader, pytest.raises(StorageFull):
        install_snapshot(reader, target.environment)
    assert (target.replicated_contents(), node_local_records(target)) == before
    target.close()
    reopened = Store(tmp_path / "target", small)
    assert (reopened.replicated_contents(), node_local_records(reopened)) == before
    reopened.close()


def test_a_snapshot_of_another_data_format_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    source = filled(tmp_path / "source", "new", 5)
    with source.environment.transaction() as txn:
        txn.put(
            schema.KEY_FORMAT_VERSION, str(schema.FORMAT_VERSION + 1).encode(), db=source.environment.db(schema.DB_META)
        )
    snapshot = snapshot_of(source, tmp_path / "snapshot.mdb")
    source.close()
    target = filled(tmp_path / "target", "old", 5)
    before = target.replicated_contents()
    with snapshot.open("rb") as reader, pytest.raises(FailedPrecondition) as refused:
        install_snapshot(reader, target.environment)
    assert refused.value.reason == "SNAPSHOT_FORMAT"
    assert target.replicated_contents() == before
    target.close()
