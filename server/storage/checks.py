"""Node-local: stored checks (their JSON, as `lookalike.server.checks` renders it), pending checks' images,
their pending marks and expiry, and the format 2 → 3 upgrade that keyed them by owner.

Checks are keyed by `schema.owned_key(owner, id)`: each API key's check ids are its own. A check being finished
or swept shares its transaction with its webhook delivery (`storage.outbox`) and its keys in the decision index
(`storage.check_index`), so none is kept without the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

from lookalike.server.storage import schema
from lookalike.server.storage.check_index import CheckIndex
from lookalike.server.storage.environment import Environment, Transaction
from lookalike.server.storage.outbox import OutboxTable, decode_delivery, encode_delivery


class CheckTables:
    """The stored checks of one data folder."""

    def __init__(self, environment: Environment, outbox: OutboxTable, index: CheckIndex) -> None:
        self.environment = environment
        self._outbox = outbox
        self._index = index
        self._checks = environment.db(schema.DB_CHECKS)
        self._images = environment.db(schema.DB_CHECK_IMAGES)
        self._expiry = environment.db(schema.DB_CHECK_EXPIRY)
        self._pending = environment.db(schema.DB_CHECK_PENDING)

    def get(self, txn: Transaction, key: bytes) -> bytes | None:
        """The stored check under `key` (`owned_key`), in the caller's transaction."""
        raw = txn.get(key, db=self._checks)
        return None if raw is None else bytes(raw)

    def read(self, key: bytes) -> bytes | None:
        with self.environment.read() as txn:
            return self.get(txn, key)

    def read_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """The stored checks under `keys` that exist, read in one transaction."""
        with self.environment.read() as txn:
            return {key: raw for key in keys if (raw := self.get(txn, key)) is not None}

    def read_pending(self, key: bytes) -> tuple[bytes | None, bytes | None]:
        """A deferred check and its image (None when it was sent as a URL), read together."""
        with self.environment.read() as txn:
            image = txn.get(key, db=self._images)
            return self.get(txn, key), None if image is None else bytes(image)

    def put(self, txn: Transaction, key: bytes, raw: bytes, expires: float, previous_expires: float = 0.0) -> None:
        """Store a check (0.0 `expires`: kept until finished); `previous_expires` is the expiry of the check it
        replaces under the same key (0.0: none)."""
        if previous_expires:
            txn.delete(schema.expiry_key(previous_expires, key), db=self._expiry)
        txn.put(key, raw, db=self._checks)
        if expires:
            txn.put(schema.expiry_key(expires, key), b"", db=self._expiry)

    def hold_pending(self, txn: Transaction, key: bytes, image: bytes | None) -> None:
        """Mark a stored check pending, with its image (None: it fetches its URL when it runs)."""
        txn.put(key, b"", db=self._pending)
        if image is not None:
            txn.put(key, image, db=self._images)

    def release_pending(self, txn: Transaction, key: bytes) -> None:
        """The check has finished: drop its image and its pending mark."""
        txn.delete(key, db=self._images)
        txn.delete(key, db=self._pending)

    def pending_keys(self) -> list[bytes]:
        """The keys of every pending check, without reading the checks."""
        with self.environment.read() as txn:
            cursor = txn.cursor(db=self._pending)
            return [bytes(key) for key in cursor.iternext(keys=True, values=False)]

    def all(self) -> Iterator[tuple[bytes, bytes]]:
        """Every stored check, by key (one read transaction, held while iterated)."""
        with self.environment.read() as txn:
            for key, raw in txn.cursor(db=self._checks):
                yield bytes(key), bytes(raw)

    def sweep(self, now: float) -> int:
        """Delete checks whose retention ended by `now`, with their webhook deliveries and decision index keys,
        except those whose delivery is still being tried (kept until delivered or given up), and prune the
        hourly counts; returns how many checks were deleted."""
        deleted = 0
        with self.environment.transaction() as txn:
            cursor = txn.cursor(db=self._expiry)
            end = schema.time_key(now)
            expired = []
            if cursor.first():
                for key in cursor.iternext(keys=True, values=False):
                    if bytes(key[: schema.TIME_KEY_SIZE]) > end:
                        break
                    expired.append(bytes(key))
            for key in expired:
                check_key = key[schema.TIME_KEY_SIZE :]
                if self._outbox.still_sending(txn, check_key):
                    continue
                txn.delete(key, db=self._expiry)
                raw = txn.get(check_key, db=self._checks)
                if raw is not None:
                    self._index.forget_stored(txn, raw)
                txn.delete(check_key, db=self._checks)
                self._outbox.delete(txn, check_key)
                deleted += 1
            self._index.prune(txn, now)
        return deleted


def upgrade_to_checks_by_owner(environment: Environment, txn: Transaction) -> None:
    """Move checks, their images, expiry, pending marks and webhook deliveries from the databases a format 2
    server keyed by check id alone to `owned_key(owner, id)`, and drop the old databases (in the upgrade's
    one transaction). A check's owner is read from its record; a delivery's is its check's."""
    old = {name: db for name in schema.FORMAT_2_DATABASES if (db := environment.open_old(txn, name)) is not None}
    checks = old.get(schema.DB_CHECKS_BY_ID)

    def owner_of(check_id: str) -> str:
        raw = None if checks is None else txn.get(check_id.encode(), db=checks)
        return "" if raw is None else str(json.loads(bytes(raw))["owner"])

    for name, db in old.items():
        new = environment.db(schema.FORMAT_2_DATABASES[name])
        for key, value in txn.cursor(db=db):
            if name == schema.DB_CHECK_EXPIRY_BY_ID:
                when, check_id = bytes(key[: schema.TIME_KEY_SIZE]), bytes(key[schema.TIME_KEY_SIZE :]).decode()
                txn.put(when + schema.owned_key(owner_of(check_id), check_id), b"", db=new)
            elif name == schema.DB_OUTBOX_BY_ID:
                delivery = decode_delivery(value)
                owned = replace(delivery, owner=owner_of(delivery.check_id))
                txn.put(owned.key, encode_delivery(owned), db=new)
            else:
                check_id = bytes(key).decode()
                txn.put(schema.owned_key(owner_of(check_id), check_id), value, db=new)
    for db in old.values():
        txn.drop(db, delete=True)
