"""Cluster snapshots of the replicated databases: written by one node, restored into a new node's empty folder.

A snapshot is an LMDB data file holding the replicated databases as one read transaction saw them (so with
the `applied_sequence` of the last change they contain), compacted, without any node-local database or meta
key: another node's stored checks, webhook secret, flood counts and index snapshots never travel. A node
restored from one has no index snapshots, so it builds each list's index from the stored vectors and hashes
(nothing is fingerprinted again), then follows the change log from the snapshot's sequence.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import lmdb

from lookalike.server.storage import schema
from lookalike.server.storage.environment import Environment


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
