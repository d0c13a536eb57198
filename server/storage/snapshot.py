"""Cluster snapshots of the replicated databases: written by one node, restored into a new node's empty folder
or installed over the replicated databases of a node the change log left behind.

A snapshot is an LMDB data file holding the replicated databases as one read transaction saw them (so with
the `applied_sequence` of the last change they contain), compacted, without any node-local database or meta
key: another node's stored checks, webhook secret, flood counts and index snapshots never travel. A node
restored from one has no index snapshots, so it builds each list's index from the stored vectors and hashes
(nothing is fingerprinted again), then follows the change log from the snapshot's sequence.

A node whose applied sequence the log no longer reaches (trimmed while it was down) gets the snapshot
installed over its replicated databases in one LMDB write transaction (`install_snapshot`), so a crash
leaves either its old data or the snapshot's, never half of each; its node-local databases stay, except
its index snapshots and their change log, which described the old entries (its indexes are built from the
installed ones).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import lmdb

from lookalike.client.errors import FailedPrecondition
from lookalike.server.storage import schema
from lookalike.server.storage.environment import Environment

INDEX_DATABASES = (schema.DB_CHANGES, schema.DB_SNAPSHOTS, schema.DB_SNAPSHOT_PIECES, schema.DB_SNAPSHOT_SUMS)
"""Node-local databases that describe the replicated entries (index snapshots and the changes since them):
emptied when a snapshot replaces those entries, so every index is built from the installed ones."""


def write_snapshot(environment: Environment, target: Path) -> int:
    """Write the replicated databases to the file `target`; the applied sequence they hold."""
    with tempfile.TemporaryDirectory(prefix="snapshot-", dir=target.parent) as work:
        whole, replicated = Path(work) / "whole", Path(work) / "replicated"
        whole.mkdir()
        replicated.mkdir()
        environment.env.copy(str(whole), compact=True)  # one read transaction: a consistent copy
        copy = lmdb.open(
            str(whole), map_size=environment.env.info()["map_size"], max_dbs=schema.MAX_DATABASES, subdir=True
        )
        try:
            with copy.begin(write=True) as txn:
                for name in schema.NODE_LOCAL_DATABASES:
                    txn.drop(copy.open_db(name, txn=txn), delete=True)
                meta = copy.open_db(schema.DB_META, txn=txn)
                for key in schema.NODE_LOCAL_META_KEYS:
                    txn.delete(key, db=meta)
                applied = int(txn.get(schema.KEY_APPLIED_SEQUENCE, default=b"0", db=meta))
            copy.copy(str(replicated), compact=True)  # without the dropped databases' pages
        finally:
            copy.close()
        os.replace(replicated / schema.DATA_FILE, target)
    return applied


def is_empty(folder: Path) -> bool:
    """No data file yet: a new node (or one wiped on purpose), which a snapshot may start."""
    return not (folder / schema.DATA_FILE).exists()


def restore_snapshot(source: BinaryIO, folder: Path) -> None:
    """Make `source` (a file `write_snapshot` wrote) the data file of the empty data folder `folder`; the
    server then opens it as any folder (the node-local databases are made empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{schema.DATA_FILE}.restoring"
    with partial.open("wb") as written:
        shutil.copyfileobj(source, written, 1024 * 1024)
        written.flush()
        os.fsync(written.fileno())
    os.replace(partial, folder / schema.DATA_FILE)


def install_snapshot(source: BinaryIO, environment: Environment) -> int:
    """Replace the replicated databases of the open `environment` (meta keeps its node-local keys) with
    those of `source` (a file `write_snapshot` wrote) and empty its index snapshots, in one write
    transaction; the applied sequence installed. Refused (FailedPrecondition) for a snapshot of another
    data format; StorageFull when the map cannot hold the old and the new data during the transaction."""
    with tempfile.TemporaryDirectory(prefix="snapshot-install-", dir=environment.path) as work:
        copy = Path(work) / schema.DATA_FILE
        with copy.open("wb") as written:
            shutil.copyfileobj(source, written, 1024 * 1024)
        snapshot = lmdb.open(
            str(copy),
            map_size=copy.stat().st_size + (1 << 20),
            max_dbs=schema.MAX_DATABASES,
            subdir=False,
            readonly=True,
            lock=False,
        )
        try:
            with snapshot.begin() as source_txn, environment.transaction() as txn:
                meta = snapshot.open_db(schema.DB_META, txn=source_txn, create=False)
                version = source_txn.get(schema.KEY_FORMAT_VERSION, db=meta)
                if version != str(schema.FORMAT_VERSION).encode():
                    raise FailedPrecondition(
                        f"the snapshot's data format is {version!r}, this server's {schema.FORMAT_VERSION}: "
                        "install it with a server of the snapshot's version",
                        "SNAPSHOT_FORMAT",
                    )
                for name in INDEX_DATABASES:
                    txn.drop(environment.db(name), delete=False)
                kept_meta = {
                    key: txn.get(key, db=environment.db(schema.DB_META)) for key in schema.NODE_LOCAL_META_KEYS
                }
                for name in schema.REPLICATED_DATABASES:
                    target = environment.db(name)
                    txn.drop(target, delete=False)
                    records = source_txn.cursor(db=snapshot.open_db(name, txn=source_txn, create=False))
                    txn.cursor(db=target).putmulti(records, append=True)
                for key, value in kept_meta.items():
                    if value is not None:
                        txn.put(key, value, db=environment.db(schema.DB_META))
                return int(txn.get(schema.KEY_APPLIED_SEQUENCE, default=b"0", db=environment.db(schema.DB_META)))
        finally:
            snapshot.close()
