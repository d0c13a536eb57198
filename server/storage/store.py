"""The replicated data and its index bookkeeping: lists, entries and their fingerprints (and thumbnails, on lists
that keep them), API keys, the audit log, each list's change log and index snapshots.

The replicated data is written by `Store.commit` alone, one change record (`lookalike.server.changes`) per
transaction, which `lookalike.server.writes.WritePath.apply` calls. The transaction also appends to the list's
change log, so an index snapshot can name the last change it holds and a restart replays only what came after;
it writes the change's audit record, so a record can be neither lost nor written for a change that did not
happen; and it stores the change's sequence number (`applied_sequence`), so a change is applied once.

Entries are keyed for idempotency in `digests` by their SHA-256; an entry known only by hashes (a shared hash
list) has none, so it is keyed by a digest of its MD5, else of its PDQ (`entry_key`): re-importing a list adds
nothing twice. MD5s have their own lookup (`md5`), so an MD5 given alone finds the entry that has it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import overload

import lmdb
import numpy as np

from lookalike.client.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    LookalikeError,
    NotFound,
)
from lookalike.server.changes import (
    Change,
    EntriesAdded,
    EntryConfirmed,
    EntryRemoved,
    KeyCreated,
    KeyRevoked,
    ListCreated,
    ListDeleted,
    ListUpdated,
)
from lookalike.server.hashes import MD5, PDQ, SHA256
from lookalike.server.records import (
    ADMIN,
    AUDIT_ENTRY_ADD,
    AUDIT_ENTRY_CONFIRM,
    AUDIT_ENTRY_REMOVE,
    AUDIT_KEY_CREATE,
    AUDIT_KEY_REVOKE,
    AUDIT_LIST_CREATE,
    AUDIT_LIST_DELETE,
    AUDIT_LIST_UPDATE,
    ENTRY_ID_MAX,
    AddOutcome,
    AuditRecord,
    EntryRecord,
    EntryScan,
    KeyRecord,
    ListRecord,
    is_pdq_only,
    validate_description,
    validate_list_kind,
    validate_list_name,
    validate_thresholds,
)
from lookalike.server.storage import schema
from lookalike.server.storage.checks import upgrade_to_checks_by_owner
from lookalike.server.storage.codec import (
    check_key_fields,
    check_list_fields,
    checksum,
    decode_audit,
    decode_embedding,
    decode_entry,
    decode_key,
    decode_list,
    decode_logged_change,
    encode_audit,
    encode_entry,
    encode_key,
    encode_list,
    encode_logged_change,
)
from lookalike.server.storage.environment import Environment, Transaction, delete_prefix
from lookalike.server.storage.errors import CorruptRecord, corrupt

log = logging.getLogger(__name__)

AUDIT_LOOKUP_SECONDS = 1.0
AUDIT_LOOKUP_RECORDS = 10_000
"""How far after an entry's creation its audit record is looked for (entries stored before the adding key
was kept with them): the record is written in the same transaction, at the same moment since audit
records began sharing the entry's time, a moment later before that."""


class AlreadyApplied(Exception):
    """A change whose sequence number is not past the applied one: it was applied before, nothing is written."""


@dataclass(frozen=True)
class Removed:
    """An entry removed, and the number of its removal in the list's change log (for the index)."""

    entry: EntryRecord
    change: int


@dataclass(frozen=True)
class Confirmed:
    """A confirmed entry and its list (the flood guard's state is kept by list uid and entry seq)."""

    list: ListRecord
    entry: EntryRecord


type Result = ListRecord | list[AddOutcome | Exception] | Removed | KeyRecord | Confirmed
"""What committing a change gives, by its kind (see `Store.commit`'s overloads)."""


@dataclass(frozen=True)
class Committed[R: Result]:
    """A change committed: the sequence number it was applied under, and what it gave."""

    sequence: int
    result: R


@dataclass(frozen=True)
class LoggedChange:
    """One record of a list's change log: its number, the operation (`schema.OP_ADD`, `OP_REMOVE`), the entry."""

    number: int
    op: bytes
    seq: int


def entry_key(sha256: bytes, md5: bytes = b"", pdq: bytes = b"") -> bytes:
    """What makes an entry the same entry (32 bytes, its `digests` key): its SHA-256, else a
    digest of its MD5, else of its PDQ. The prefixes keep the three kinds apart."""
    if sha256:
        return sha256
    if md5:
        return hashlib.sha256(b"lookalike-md5:" + md5).digest()
    if pdq:
        return hashlib.sha256(b"lookalike-pdq:" + pdq).digest()
    raise InvalidArgument("an entry needs a SHA-256, an MD5 or a PDQ hash", "HASH_MISSING")


def _add_detail(entry: EntryRecord) -> dict[str, str]:
    """The audit detail of an add: the identifier the entry is known by."""
    if entry.sha256:
        return {"sha256": SHA256.format(entry.sha256)}
    return {"md5": MD5.format(entry.md5)} if entry.md5 else {"pdq": PDQ.format(entry.pdq)}


def _settings(record: ListRecord) -> dict[str, str]:
    return {
        "description": record.description,
        "review_threshold": f"{record.review_threshold:g}",
        "reject_threshold": f"{record.reject_threshold:g}",
        "model": record.model,
        "dihedral": str(record.dihedral).lower(),
        "kind": record.kind,
        "thumbnails": str(record.thumbnails).lower(),
        "keypoints": str(record.keypoints).lower(),
    }


def _list_record(raw: bytes | memoryview, key: bytes | memoryview, check_fields: bool = False) -> ListRecord:
    try:
        record = decode_list(raw)
        if check_fields:
            check_list_fields(record, key)
        return record
    except CorruptRecord as error:
        raise corrupt(f"the record of list {bytes(key).decode(errors='replace')!r}", error) from None


def _key_record(raw: bytes | memoryview, key: bytes | memoryview, check_fields: bool = False) -> KeyRecord:
    try:
        record = decode_key(raw)
        if check_fields:
            check_key_fields(record, key)
        return record
    except CorruptRecord as error:
        raise corrupt(f"the record of API key {bytes(key).decode(errors='replace')!r}", error) from None


def _iter_entries(
    environment: Environment, txn: Transaction, uid: int, list_name: str, embeddings: bool = True, step: int = 1
) -> Iterator[tuple[EntryRecord, np.ndarray | None]]:
    """A list's entries with their embeddings (none read unless `embeddings`) in sequence order;
    every `step`-th only (decoding the rest would cost most of a sampling pass). A record that does
    not decode raises DataLoss naming it."""
    prefix = schema.list_prefix(uid)
    cursor = txn.cursor(db=environment.db(schema.DB_ENTRIES))
    vector_cursor = txn.cursor(db=environment.db(schema.DB_VECTORS)) if embeddings else None
    if not cursor.set_range(prefix):
        return
    position = 0
    for key in cursor.iternext(keys=True, values=False):
        if not bytes(key).startswith(prefix):
            break
        if position % step == 0:
            vector = None if vector_cursor is None else vector_cursor.get(key)
            seq = schema.split_seq_key(key)[1]
            try:
                yield decode_entry(cursor.value(), seq), None if vector is None else decode_embedding(vector)
            except CorruptRecord as error:
                raise corrupt(f"entry seq {seq} of list {list_name}", error) from None
        position += 1


@dataclass(frozen=True)
class ListView:
    """A list's record and entries read in one transaction: `record.next_change - 1` is the last
    change the entries reflect."""

    record: ListRecord
    _environment: Environment
    _txn: Transaction

    @property
    def change(self) -> int:
        return self.record.next_change - 1

    def entries(self, step: int = 1) -> Iterator[tuple[EntryRecord, np.ndarray | None]]:
        return _iter_entries(self._environment, self._txn, self.record.uid, self.record.name, step=step)


class Store:
    """The replicated records of one data folder (see the module's doc), over its `Environment`, which the
    node-local stores (`storage.checks`, `outbox`, `feedback`, `flood`) share."""

    def __init__(self, path: Path, map_size: int) -> None:
        self.path = path
        self.environment = Environment(path, map_size)
        self.env = self.environment.env
        """LMDB's own environment, for tests that damage records on purpose."""
        db = self.environment.db
        self._meta = db(schema.DB_META)
        self._lists = db(schema.DB_LISTS)
        self._entries = db(schema.DB_ENTRIES)
        self._entry_ids = db(schema.DB_ENTRY_IDS)
        self._digests = db(schema.DB_DIGESTS)
        self._md5 = db(schema.DB_MD5)
        self._vectors = db(schema.DB_VECTORS)
        self._thumbnails = db(schema.DB_THUMBNAILS)
        self._keypoints = db(schema.DB_KEYPOINTS)
        self._changes = db(schema.DB_CHANGES)
        self._snapshots = db(schema.DB_SNAPSHOTS)
        self._snapshot_pieces = db(schema.DB_SNAPSHOT_PIECES)
        self._snapshot_sums = db(schema.DB_SNAPSHOT_SUMS)
        self._keys = db(schema.DB_KEYS)
        self._audit_log = db(schema.DB_AUDIT)
        try:
            self._check_format()
            self._check_small_records()
            if self.environment.upgrade(
                schema.FORMAT_CHECKS_BY_OWNER, lambda txn: upgrade_to_checks_by_owner(self.environment, txn)
            ):
                log.info(
                    "stored checks and webhook deliveries rekeyed by owner (data folder format %d)",
                    schema.FORMAT_CHECKS_BY_OWNER,
                )
        except LookalikeError:
            self.close()
            raise

    def close(self) -> None:
        self.environment.close()

    def _check_format(self) -> None:
        with self.environment.transaction() as txn:
            stored = txn.get(schema.KEY_FORMAT_VERSION, db=self._meta)
            if stored == str(schema.FORMAT_VERSION).encode():
                return  # nothing to write: a start on a full disk still serves reads
            if stored is not None and not bytes(stored).isdigit():
                raise corrupt("the meta record 'format_version'", f"{bytes(stored)[:20]!r}")
            if stored is None:  # a new folder: nothing to upgrade
                txn.put(schema.KEY_FORMAT_VERSION, str(schema.FORMAT_VERSION).encode(), db=self._meta)
            elif int(stored) in schema.READABLE_FORMAT_VERSIONS:
                if int(stored) < schema.FORMAT_FLOAT16_EMBEDDINGS:
                    version = str(schema.FORMAT_FLOAT16_EMBEDDINGS).encode()
                    txn.put(schema.KEY_FORMAT_VERSION, version, db=self._meta)
            else:
                raise FailedPrecondition(
                    f"data folder {self.path} holds format version {int(stored)}; this server reads "
                    f"version {schema.FORMAT_VERSION}",
                    "DATA_FORMAT_VERSION",
                )

    def _check_small_records(self) -> None:
        """Read every meta counter, list and key record at start-up (a few kilobytes): a corrupt one stops the
        start with DATA_LOSS naming it. Entry records are checked when read: at 10M entries reading all
        would make a start take minutes."""
        with self.environment.read() as txn:
            for name in schema.META_COUNTERS:
                value = txn.get(name, db=self._meta)
                if value is not None and not bytes(value).isdigit():
                    raise corrupt(f"the meta record {name.decode()!r}", f"{bytes(value)[:20]!r}")
            for key, raw in txn.cursor(db=self._lists):
                _list_record(raw, key, check_fields=True)
            for key, raw in txn.cursor(db=self._keys):
                _key_record(raw, key, check_fields=True)

    # Lists ---------------------------------------------------------------

    def _put_list(self, txn: Transaction, record: ListRecord) -> None:
        txn.put(schema.list_key(record.name), encode_list(record), db=self._lists)

    def _get_list(self, txn: Transaction, name: str) -> ListRecord:
        validate_list_name(name)  # before the lookup: LMDB refuses an empty key with its own error
        raw = txn.get(schema.list_key(name), db=self._lists)
        if raw is None:
            raise NotFound(f"list {name!r} does not exist", "LIST_NOT_FOUND")
        return _list_record(raw, schema.list_key(name))

    def get_list(self, name: str) -> ListRecord:
        with self.environment.read() as txn:
            return self._get_list(txn, name)

    def lists(self) -> list[ListRecord]:
        with self.environment.read() as txn:
            return [_list_record(raw, key) for key, raw in txn.cursor(db=self._lists)]

    # Entries -------------------------------------------------------------

    def count_pdq_only(self, name: str, attempts: int = 3) -> bool:
        """Count the hash-only entries of a list stored before the count was kept; True once saved, False
        also when the store closed meanwhile (a shutdown: the next start counts again).

        The entries are read in a read transaction, so writers go on meanwhile (at 10M entries the
        scan takes about a minute), and the count is saved only if the list did not change in
        between. A list that keeps changing is counted at last under the write lock, once."""
        try:
            return self._count_pdq_only(name, attempts)
        except lmdb.Error:
            return False

    def _count_pdq_only(self, name: str, attempts: int) -> bool:
        for _ in range(attempts):
            with self.environment.read() as txn:
                record = self._uncounted_list(txn, name)
                if record is None:
                    return False
                count = self._scan_pdq_only(txn, record)
            with self.environment.transaction() as txn:
                now = self._uncounted_list(txn, name)
                if now is None:
                    return False
                if now.uid == record.uid and now.next_change == record.next_change:
                    self._put_list(txn, replace(now, pdq_only_count=count))
                    return True
        with self.environment.transaction() as txn:
            record = self._uncounted_list(txn, name)
            if record is None:
                return False
            self._put_list(txn, replace(record, pdq_only_count=self._scan_pdq_only(txn, record)))
            return True

    def _uncounted_list(self, txn: Transaction, name: str) -> ListRecord | None:
        try:
            record = self._get_list(txn, name)
        except NotFound:
            return None
        return record if record.pdq_only_count is None else None

    def _scan_pdq_only(self, txn: Transaction, record: ListRecord) -> int:
        entries = _iter_entries(self.environment, txn, record.uid, record.name, embeddings=False)
        return sum(is_pdq_only(entry) for entry, _ in entries)

    def _entry(self, txn: Transaction, uid: int, seq: int) -> EntryRecord:
        raw = txn.get(schema.seq_key(uid, seq), db=self._entries)
        if raw is None:
            raise NotFound(f"entry #{seq} is gone", "ENTRY_NOT_FOUND")
        try:
            return decode_entry(raw, seq)
        except CorruptRecord as error:
            raise self._corrupt_entry(txn, uid, seq, error) from None

    def _corrupt_entry(self, txn: Transaction, uid: int, seq: int, error: CorruptRecord) -> DataLoss:
        return corrupt(f"entry seq {seq} of list {self._list_name(txn, uid)}", error)

    def _list_name(self, txn: Transaction, uid: int) -> str:
        """The name of list `uid` (for messages; "#uid" when none decodes)."""
        for key, raw in txn.cursor(db=self._lists):
            try:
                if decode_list(raw).uid == uid:
                    return bytes(key).decode()
            except CorruptRecord:
                continue
        return f"#{uid}"

    def get_entry(self, name: str, entry_id: str) -> EntryRecord:
        with self.environment.read() as txn:
            record = self._get_list(txn, name)
            raw_seq = txn.get(schema.list_prefix(record.uid) + entry_id.encode(), db=self._entry_ids)
            if raw_seq is None:
                raise NotFound(f"entry {entry_id[:80]!r} is not on list {name!r}", "ENTRY_NOT_FOUND")
            return self._with_added_by(txn, name, self._entry(txn, record.uid, schema.SEQ.unpack(raw_seq)[0]))

    def thumbnail(self, name: str, entry_id: str) -> bytes | None:
        """The thumbnail kept with an entry (None: its list keeps none, or it has none); NOT_FOUND when the
        entry is not on the list."""
        with self.environment.read() as txn:
            record = self._get_list(txn, name)
            raw_seq = txn.get(schema.list_prefix(record.uid) + entry_id.encode(), db=self._entry_ids)
            if raw_seq is None:
                raise NotFound(f"entry {entry_id[:80]!r} is not on list {name!r}", "ENTRY_NOT_FOUND")
            found = txn.get(schema.seq_key(record.uid, schema.SEQ.unpack(raw_seq)[0]), db=self._thumbnails)
            return None if found is None else bytes(found)

    def entries_newest_first(
        self, name: str, before: int, limit: int, budget: int, keep: Callable[[EntryRecord], bool]
    ) -> EntryScan:
        """Entries of list `name` below sequence number `before`, newest first: up to `limit` that `keep`
        accepts, reading at most `budget` (one short read transaction, however large the list)."""
        kept: list[EntryRecord] = []
        resume = 0
        with self.environment.read() as txn:
            record = self._get_list(txn, name)
            prefix = schema.list_prefix(record.uid)
            cursor = txn.cursor(db=self._entries)
            found = cursor.prev() if cursor.set_range(schema.seq_key(record.uid, before)) else cursor.last()
            read = 0
            while found and bytes(cursor.key()).startswith(prefix):
                entry = self._entry(txn, record.uid, schema.SEQ.unpack(cursor.key()[len(prefix) :])[0])
                read += 1
                if keep(entry):
                    kept.append(entry)
                found = cursor.prev() and bytes(cursor.key()).startswith(prefix)
                if found and (len(kept) == limit or read == budget):
                    resume = entry.seq
                    break
            return EntryScan([self._with_added_by(txn, name, entry) for entry in kept], resume)

    def entries_named(
        self, name: str, entry_id: str, digest: bytes = b"", seqs: Collection[int] = ()
    ) -> list[EntryRecord]:
        """The entries of list `name` named exactly, newest first: by id, by a `digest` that is their SHA-256
        or MD5 (looked up in `digests` and `md5`, never scanned), or at `seqs` (PDQ hashes, found by the
        caller in the index) when their PDQ is `digest`."""
        with self.environment.read() as txn:
            record = self._get_list(txn, name)
            prefix = schema.list_prefix(record.uid)
            keys = [(self._entry_ids, entry_id.encode())] if len(entry_id.encode()) <= ENTRY_ID_MAX else []
            if len(digest) == SHA256.size:  # a SHA-256, or a PDQ hash
                keys += [(self._digests, digest), (self._digests, entry_key(b"", b"", digest))]
            if len(digest) == MD5.size:
                keys += [(self._md5, digest), (self._digests, entry_key(b"", digest))]
            found = {schema.SEQ.unpack(raw)[0] for db, key in keys if (raw := txn.get(prefix + key, db=db)) is not None}
            entries = []
            for seq in sorted(found | set(seqs), reverse=True):
                try:
                    entry = self._entry(txn, record.uid, seq)
                except NotFound:  # removed: its id or digest keys went with it, an index hit may linger
                    continue
                if entry.id == entry_id or (digest and digest in (entry.sha256, entry.md5, entry.pdq)):
                    entries.append(self._with_added_by(txn, name, entry))
            return entries

    def _with_added_by(self, txn: Transaction, name: str, entry: EntryRecord) -> EntryRecord:
        """The entry with the key that added it: kept with entries since it was, read from its audit record
        for those stored before (written with the entry, at its creation time or just after; "" if none)."""
        if entry.added_by is not None:
            return entry
        cursor = txn.cursor(db=self._audit_log)
        end = schema.time_key(entry.created + AUDIT_LOOKUP_SECONDS)
        if cursor.set_range(schema.time_key(entry.created)):
            for read, (key, raw) in enumerate(cursor):
                if bytes(key[: schema.TIME_KEY_SIZE]) > end or read == AUDIT_LOOKUP_RECORDS:
                    break
                audit = json.loads(bytes(raw))
                if (audit["action"], audit["list"], audit["entry_id"]) == (AUDIT_ENTRY_ADD, name, entry.id):
                    return replace(entry, added_by=audit["key_id"])
        return replace(entry, added_by="")

    def entries_by_seq(self, uid: int, seqs: Sequence[int]) -> dict[int, EntryRecord]:
        """Entries still present, by sequence number (matching reads their meta)."""
        found: dict[int, EntryRecord] = {}
        with self.environment.read() as txn:
            for seq in seqs:
                raw = txn.get(schema.seq_key(uid, seq), db=self._entries)
                if raw is not None:
                    try:
                        found[seq] = decode_entry(raw, seq)
                    except CorruptRecord as error:
                        raise self._corrupt_entry(txn, uid, seq, error) from None
        return found

    def seq_for_digest(self, uid: int, sha256: bytes) -> int | None:
        with self.environment.read() as txn:
            raw = txn.get(schema.list_prefix(uid) + sha256, db=self._digests)
        return None if raw is None else int(schema.SEQ.unpack(raw)[0])

    def seq_for_md5(self, uid: int, md5: bytes) -> int | None:
        with self.environment.read() as txn:
            raw = txn.get(schema.list_prefix(uid) + md5, db=self._md5)
        return None if raw is None else int(schema.SEQ.unpack(raw)[0])

    def entries_page(
        self, uid: int, after_seq: int, limit: int, with_embeddings: bool
    ) -> list[tuple[EntryRecord, bytes | None]]:
        """Up to `limit` entries after sequence `after_seq`, with their embeddings' raw bytes when
        asked: an export reads page by page, so no transaction waits on a slow reader."""
        prefix = schema.list_prefix(uid)
        page: list[tuple[EntryRecord, bytes | None]] = []
        with self.environment.read() as txn:
            cursor = txn.cursor(db=self._entries)
            if not cursor.set_range(schema.seq_key(uid, after_seq + 1)):
                return page
            for key, raw in cursor:
                if not bytes(key).startswith(prefix) or len(page) >= limit:
                    break
                vector = txn.get(key, db=self._vectors) if with_embeddings else None
                seq = schema.SEQ.unpack(key[4:])[0]
                try:
                    embedding = None if vector is None else decode_embedding(vector).tobytes()
                    page.append((decode_entry(raw, seq), embedding))
                except CorruptRecord as error:
                    raise self._corrupt_entry(txn, uid, seq, error) from None
        return page

    def embeddings(self, uid: int, seqs: Sequence[int]) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        with self.environment.read() as txn:
            for seq in seqs:
                raw = txn.get(schema.seq_key(uid, seq), db=self._vectors)
                if raw is not None:
                    try:
                        found[seq] = decode_embedding(raw)
                    except CorruptRecord as error:
                        raise self._corrupt_entry(txn, uid, seq, error) from None
        return found

    def keypoints(self, uid: int, seqs: Sequence[int]) -> dict[int, bytes]:
        """The keypoints kept with these entries (`server/keypoints.py`), for those that have them."""
        with self.environment.read() as txn:
            found = {seq: txn.get(schema.seq_key(uid, seq), db=self._keypoints) for seq in seqs}
        return {seq: bytes(raw) for seq, raw in found.items() if raw is not None}

    def iter_entries(self, uid: int) -> Iterator[tuple[EntryRecord, np.ndarray | None]]:
        """Every entry of a list with its embedding, in sequence order."""
        with self.environment.read() as txn:
            yield from _iter_entries(self.environment, txn, uid, self._list_name(txn, uid))

    @contextmanager
    def list_view(self, uid: int) -> Iterator[ListView]:
        """One list as of one moment (a read transaction), to rebuild its index from."""
        with self.environment.read() as txn:
            lists = txn.cursor(db=self._lists)
            record = next((r for key, raw in lists if (r := _list_record(raw, key)).uid == uid), None)
            if record is None:
                raise NotFound(f"list #{uid} does not exist", "LIST_NOT_FOUND")
            yield ListView(record, self.environment, txn)

    # Change log and index snapshots ---------------------------------------

    def changes_after(self, uid: int, after: int) -> list[LoggedChange]:
        prefix = schema.list_prefix(uid)
        changes: list[LoggedChange] = []
        with self.environment.read() as txn:
            cursor = txn.cursor(db=self._changes)
            if cursor.set_range(schema.seq_key(uid, after + 1)):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    number = schema.SEQ.unpack(key[4:])[0]
                    try:
                        changes.append(LoggedChange(number, *decode_logged_change(value)))
                    except CorruptRecord as error:
                        raise corrupt(f"change {number} of list {self._list_name(txn, uid)}", error) from None
        return changes

    def save_snapshot(
        self,
        uid: int,
        change: int,
        blob: bytes,
        pieces: Mapping[int, bytes] | None = None,
        piece_numbers: Collection[int] = (),
    ) -> bool:
        """Store an index snapshot and drop the change log it covers.

        A large index comes in pieces, of which only the changed ones are rewritten:
        `pieces` are stored, and of those stored before only `piece_numbers` are kept.
        Returns False when the list was deleted meanwhile (nothing written).
        """
        prefix = schema.list_prefix(uid)
        blob_sum = checksum(blob)  # before the write lock
        piece_sums = {number: checksum(data) for number, data in (pieces or {}).items()}
        with self.environment.transaction() as txn:
            if not any(_list_record(raw, key).uid == uid for key, raw in txn.cursor(db=self._lists)):
                return False
            self.environment.ensure_room_to_grow(txn)
            txn.put(prefix, schema.SEQ.pack(change) + blob, db=self._snapshots)
            txn.put(prefix, schema.SEQ.pack(change) + blob_sum, db=self._snapshot_sums)
            for number, data in (pieces or {}).items():
                txn.put(schema.piece_key(uid, number), data, db=self._snapshot_pieces)
                txn.put(schema.piece_key(uid, number), piece_sums[number], db=self._snapshot_sums)
            cursor = txn.cursor(db=self._snapshot_pieces)
            kept = set(piece_numbers) | set(pieces or {})
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                if schema.UID.unpack(cursor.key()[4:])[0] in kept:
                    found = cursor.next()
                else:
                    txn.delete(cursor.key(), db=self._snapshot_sums)
                    found = cursor.delete()
            delete_prefix(txn.cursor(db=self._changes), prefix, up_to=change)
        return True

    def snapshot_pieces(self, uid: int) -> Iterator[tuple[int, memoryview]]:
        """The stored pieces of a list's snapshot, each valid only until the next is read; raises
        CorruptRecord for one that does not match its checksum."""
        prefix = schema.list_prefix(uid)
        with self.environment.read_buffers() as txn:
            cursor = txn.cursor(db=self._snapshot_pieces)
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                number = schema.UID.unpack(bytes(cursor.key()[4:]))[0]
                expected = txn.get(cursor.key(), db=self._snapshot_sums)
                if expected is not None and checksum(cursor.value()) != bytes(expected):
                    raise CorruptRecord(f"snapshot piece {number} does not match its checksum")
                yield number, cursor.value()
                found = cursor.next()

    def load_snapshot(self, uid: int) -> tuple[int, bytes] | None:
        """The stored snapshot's change and blob; raises CorruptRecord when too short to hold them, or
        not matching its checksum."""
        with self.environment.read() as txn:
            raw = txn.get(schema.list_prefix(uid), db=self._snapshots)
            summed = txn.get(schema.list_prefix(uid), db=self._snapshot_sums)
        if raw is None:
            return None
        if len(raw) < schema.SEQ.size:
            raise CorruptRecord(f"the snapshot record holds {len(raw)} bytes")
        blob = bytes(raw[schema.SEQ.size :])
        size = schema.SEQ.size
        if summed is not None and summed[:size] == raw[:size] and summed[size:] != checksum(blob):
            raise CorruptRecord("the snapshot does not match its checksum")
        return int(schema.SEQ.unpack(raw[:8])[0]), blob

    def snapshot_change(self, uid: int) -> int:
        """The change the stored snapshot reflects (0 when none), without reading it whole."""
        with self.environment.read_buffers() as txn:
            raw = txn.get(schema.list_prefix(uid), db=self._snapshots)
            return 0 if raw is None or len(raw) < schema.SEQ.size else int(schema.SEQ.unpack(bytes(raw[:8]))[0])

    # API keys ----------------------------------------------------------------

    def keys(self) -> list[KeyRecord]:
        """Every key ever created, revoked ones included, in creation order."""
        with self.environment.read() as txn:
            records = [_key_record(raw, key) for key, raw in txn.cursor(db=self._keys)]
        return sorted(records, key=lambda record: (record.created, int(record.id.lstrip("k") or 0)))

    # Audit log -----------------------------------------------------------------

    def audit(
        self, list_name: str = "", since: float = 0.0, limit: int = 1000, page_token: str = ""
    ) -> tuple[list[AuditRecord], str]:
        """Audit records oldest first, from `since` (or after `page_token`), on one list or all.

        Returns up to `limit` records and the token of the next page ("" at the end).
        """
        key_size = 2 * schema.SEQ.size
        return self.environment.page(schema.DB_AUDIT, key_size, decode_audit, list_name, since, limit, page_token)

    def applied_sequence(self) -> int:
        """The sequence number of the last change committed (0: none yet)."""
        with self.environment.read() as txn:
            return int(txn.get(schema.KEY_APPLIED_SEQUENCE, default=b"0", db=self._meta))

    # Committing a change: the LMDB half of `lookalike.server.writes.WritePath.apply` ----------------------------

    @overload
    def commit(
        self, change: ListCreated | ListUpdated | ListDeleted, sequence: int | None = None
    ) -> Committed[ListRecord]: ...
    @overload
    def commit(self, change: EntriesAdded, sequence: int | None = None) -> Committed[list[AddOutcome | Exception]]: ...
    @overload
    def commit(self, change: EntryRemoved, sequence: int | None = None) -> Committed[Removed]: ...
    @overload
    def commit(self, change: KeyCreated | KeyRevoked, sequence: int | None = None) -> Committed[KeyRecord]: ...
    @overload
    def commit(
        self,
        change: EntryConfirmed,
        sequence: int | None = None,
        also: Callable[[Transaction, Confirmed], None] | None = None,
    ) -> Committed[Confirmed]: ...
    def commit(
        self, change: Change, sequence: int | None = None, also: Callable[[Transaction, Confirmed], None] | None = None
    ) -> Committed[Result]:
        """Write `change` in one transaction: its records, its audit record, the list's change log, and the
        applied sequence, `sequence` (None: the one after the last, as a single node numbers its changes).
        Whatever depends on what is stored (a duplicate, a missing entry, a list that exists) is decided here,
        from the data at this point, so every replica decides alike; a refused change raises its domain error
        and writes nothing. `also(txn, confirmed)` adds a confirmation's node-local writes to the transaction.

        AlreadyApplied when `sequence` is not past the applied one: the change was applied before, nothing
        is written. StorageFull when the map or disk is full (nothing is written)."""
        with self.environment.transaction(grows=isinstance(change, EntriesAdded)) as txn:
            applied = int(txn.get(schema.KEY_APPLIED_SEQUENCE, default=b"0", db=self._meta))
            if sequence is None:
                sequence = applied + 1
            elif sequence <= applied:
                raise AlreadyApplied(f"change {sequence} was applied before (the last applied is {applied})")
            result: Result
            match change:
                case ListCreated():
                    result = self._create_list(txn, change)
                case ListUpdated():
                    result = self._update_list(txn, change)
                case ListDeleted():
                    result = self._delete_list(txn, change)
                case EntriesAdded():
                    result = self._add_entries(txn, change)
                case EntryRemoved():
                    result = self._remove_entry(txn, change)
                case KeyCreated():
                    result = self._create_key(txn, change)
                case KeyRevoked():
                    result = self._revoke_key(txn, change)
                case EntryConfirmed():
                    result = self._confirm_entry(txn, change)
                    if also is not None:
                        also(txn, result)
            txn.put(schema.KEY_APPLIED_SEQUENCE, str(sequence).encode(), db=self._meta)
        return Committed(sequence, result)

    def _audit(self, txn: Transaction, records: Sequence[AuditRecord]) -> None:
        """Append audit records in the transaction of the change they describe."""
        if not records:
            return
        first = int(txn.get(schema.KEY_NEXT_AUDIT_SEQ, default=b"1", db=self._meta))
        txn.put(schema.KEY_NEXT_AUDIT_SEQ, str(first + len(records)).encode(), db=self._meta)
        for seq, record in enumerate(records, start=first):
            txn.put(schema.audit_key(record.time, seq), encode_audit(record), db=self._audit_log)

    def _create_list(self, txn: Transaction, change: ListCreated) -> ListRecord:
        validate_list_name(change.name)
        validate_thresholds(change.review_threshold, change.reject_threshold)
        validate_description(change.description)
        validate_list_kind(change.kind)
        if txn.get(schema.list_key(change.name), db=self._lists) is not None:
            raise AlreadyExists(f"list {change.name!r} already exists", "LIST_EXISTS")
        uid = int(txn.get(schema.KEY_NEXT_LIST_UID, default=b"1", db=self._meta))
        txn.put(schema.KEY_NEXT_LIST_UID, str(uid + 1).encode(), db=self._meta)
        record = ListRecord(
            uid,
            change.name,
            change.description,
            change.review_threshold,
            change.reject_threshold,
            change.model,
            change.time,
            dihedral=change.dihedral,
            kind=change.kind,
            thumbnails=change.thumbnails,
            keypoints=change.keypoints,
        )
        self._put_list(txn, record)
        detail = _settings(record)
        self._audit(txn, [AuditRecord(change.time, change.actor, AUDIT_LIST_CREATE, change.name, "", detail)])
        return record

    def _update_list(self, txn: Transaction, change: ListUpdated) -> ListRecord:
        record = self._get_list(txn, change.name)
        record = replace(
            record,
            description=record.description if change.description is None else change.description,
            review_threshold=record.review_threshold if change.review_threshold is None else change.review_threshold,
            reject_threshold=record.reject_threshold if change.reject_threshold is None else change.reject_threshold,
            dihedral=record.dihedral if change.dihedral is None else change.dihedral,
            thumbnails=record.thumbnails if change.thumbnails is None else change.thumbnails,
            keypoints=record.keypoints if change.keypoints is None else change.keypoints,
        )
        validate_thresholds(record.review_threshold, record.reject_threshold)
        validate_description(record.description)
        if not record.thumbnails:
            delete_prefix(txn.cursor(db=self._thumbnails), schema.list_prefix(record.uid))
        if not record.keypoints:
            delete_prefix(txn.cursor(db=self._keypoints), schema.list_prefix(record.uid))
        self._put_list(txn, record)
        detail = _settings(record) | ({"cause": change.cause} if change.cause else {})
        self._audit(txn, [AuditRecord(change.time, change.actor, AUDIT_LIST_UPDATE, change.name, "", detail)])
        return record

    def _delete_list(self, txn: Transaction, change: ListDeleted) -> ListRecord:
        """Delete a list and everything stored under it."""
        record = self._get_list(txn, change.name)
        txn.delete(schema.list_key(change.name), db=self._lists)
        detail = {"entries_deleted": str(record.entry_count)}
        self._audit(txn, [AuditRecord(change.time, change.actor, AUDIT_LIST_DELETE, change.name, "", detail)])
        prefix = schema.list_prefix(record.uid)
        entry_dbs = (
            self._entries,
            self._entry_ids,
            self._digests,
            self._md5,
            self._vectors,
            self._thumbnails,
            self._keypoints,
        )
        for db in (*entry_dbs, self._changes, self._snapshots, self._snapshot_pieces, self._snapshot_sums):
            delete_prefix(txn.cursor(db=db), prefix)
        return record

    def _add_entries(self, txn: Transaction, change: EntriesAdded) -> list[AddOutcome | Exception]:
        """Store entries: idempotent by `entry_key`, and by MD5. Each gets its outcome or its own error (an id
        already used by other bytes); the others are stored together."""
        results: list[AddOutcome | Exception] = []
        audit: list[AuditRecord] = []
        record = self._get_list(txn, change.list)
        if change.model != record.model and any(item.embedding for item in change.entries):
            raise InvalidArgument(
                f"the embeddings are from model {change.model!r} but list {change.list!r} uses {record.model!r}",
                "EMBEDDING_MODEL_MISMATCH",
            )
        prefix = schema.list_prefix(record.uid)
        seq, number, count = record.next_seq, record.next_change, record.entry_count
        pdq_only = record.pdq_only_count
        for item in change.entries:
            key = prefix + entry_key(item.sha256, item.md5, item.pdq)
            existing = txn.get(key, db=self._digests)
            if existing is None and item.md5:
                existing = txn.get(prefix + item.md5, db=self._md5)
            if existing is not None:
                entry = self._entry(txn, record.uid, schema.SEQ.unpack(existing)[0])
                results.append(AddOutcome(entry, duplicate=True, change=0, embedding=None))
                continue
            if txn.get(prefix + item.id.encode(), db=self._entry_ids) is not None:
                results.append(
                    AlreadyExists(
                        f"entry id {item.id!r} is already used on list {change.list!r} by other bytes",
                        "ENTRY_ID_EXISTS",
                    )
                )
                continue
            entry = EntryRecord(
                item.id,
                seq,
                item.sha256,
                item.pdq,
                item.pdq_quality,
                item.phash,
                change.model if item.embedding else "",
                item.meta,
                change.time,
                item.md5,
                change.actor,
            )
            seq_key = schema.seq_key(record.uid, seq)
            txn.put(seq_key, encode_entry(entry), db=self._entries)
            txn.put(prefix + item.id.encode(), schema.SEQ.pack(seq), db=self._entry_ids)
            txn.put(key, schema.SEQ.pack(seq), db=self._digests)
            if item.md5:
                txn.put(prefix + item.md5, schema.SEQ.pack(seq), db=self._md5)
            stored = None
            if item.embedding:  # the index gets what a restart would read back
                txn.put(seq_key, item.embedding, db=self._vectors)
                stored = decode_embedding(item.embedding)
            if item.thumbnail and record.thumbnails:
                txn.put(seq_key, item.thumbnail, db=self._thumbnails)
            if item.keypoints and record.keypoints:
                txn.put(seq_key, item.keypoints, db=self._keypoints)
            txn.put(schema.seq_key(record.uid, number), encode_logged_change(schema.OP_ADD, seq), db=self._changes)
            detail = _add_detail(entry)
            audit.append(AuditRecord(change.time, change.actor, AUDIT_ENTRY_ADD, change.list, item.id, detail))
            results.append(AddOutcome(entry, duplicate=False, change=number, embedding=stored))
            seq, number, count = seq + 1, number + 1, count + 1
            if pdq_only is not None:
                pdq_only += is_pdq_only(entry)
        record = replace(record, next_seq=seq, next_change=number, entry_count=count, pdq_only_count=pdq_only)
        self._put_list(txn, record)
        self._audit(txn, audit)
        return results

    def _stored_entry(self, txn: Transaction, record: ListRecord, entry_id: str) -> EntryRecord:
        raw_seq = txn.get(schema.list_prefix(record.uid) + entry_id.encode(), db=self._entry_ids)
        if raw_seq is None:
            raise NotFound(f"entry {entry_id[:80]!r} is not on list {record.name!r}", "ENTRY_NOT_FOUND")
        return self._entry(txn, record.uid, schema.SEQ.unpack(raw_seq)[0])

    def _remove_entry(self, txn: Transaction, change: EntryRemoved) -> Removed:
        record = self._get_list(txn, change.list)
        entry = self._stored_entry(txn, record, change.entry_id)
        prefix = schema.list_prefix(record.uid)
        key = schema.seq_key(record.uid, entry.seq)
        txn.delete(key, db=self._entries)
        txn.delete(key, db=self._vectors)
        txn.delete(key, db=self._thumbnails)
        txn.delete(key, db=self._keypoints)
        txn.delete(prefix + entry.id.encode(), db=self._entry_ids)
        txn.delete(prefix + entry_key(entry.sha256, entry.md5, entry.pdq), db=self._digests)
        md5_key = prefix + entry.md5 if entry.md5 else b""
        if md5_key and txn.get(md5_key, db=self._md5) == schema.SEQ.pack(entry.seq):  # else it finds another entry
            txn.delete(md5_key, db=self._md5)
        number = record.next_change
        txn.put(schema.seq_key(record.uid, number), encode_logged_change(schema.OP_REMOVE, entry.seq), db=self._changes)
        detail = _add_detail(entry)
        self._audit(txn, [AuditRecord(change.time, change.actor, AUDIT_ENTRY_REMOVE, change.list, entry.id, detail)])
        pdq_only = record.pdq_only_count
        if pdq_only is not None:
            pdq_only -= is_pdq_only(entry)
        self._put_list(
            txn, replace(record, next_change=number + 1, entry_count=record.entry_count - 1, pdq_only_count=pdq_only)
        )
        return Removed(entry, number)

    def _stored_keys(self, txn: Transaction) -> list[KeyRecord]:
        return [_key_record(raw, key) for key, raw in txn.cursor(db=self._keys)]

    def _create_key(self, txn: Transaction, change: KeyCreated) -> KeyRecord:
        """Store a new key under the next id ("k1", "k2", ...). The first key must be an admin key, or nobody
        could manage keys afterwards."""
        if change.role != ADMIN and not any(not record.revoked for record in self._stored_keys(txn)):
            raise FailedPrecondition(
                "no keys exist yet: the first key must be an admin key, or nobody could manage keys afterwards",
                "FIRST_KEY_NOT_ADMIN",
            )
        number = int(txn.get(schema.KEY_NEXT_KEY_NUMBER, default=b"1", db=self._meta))
        txn.put(schema.KEY_NEXT_KEY_NUMBER, str(number + 1).encode(), db=self._meta)
        record = KeyRecord(
            f"k{number}", change.name, change.role, list(change.lists), change.digest, change.time, change.actor
        )
        txn.put(record.id.encode(), encode_key(record), db=self._keys)
        detail = {"key": record.id, "role": change.role, "lists": ",".join(change.lists), "name": change.name}
        self._audit(txn, [AuditRecord(change.time, change.actor, AUDIT_KEY_CREATE, "", "", detail)])
        return record

    def _revoke_key(self, txn: Transaction, change: KeyRevoked) -> KeyRecord:
        """Mark a key revoked (kept, so audit records still name it); revoking twice changes nothing. The last
        admin key stays, so somebody can always manage keys."""
        keys = {record.id: record for record in self._stored_keys(txn)}
        record = keys.get(change.key_id)
        if record is None:
            raise NotFound(f"key {change.key_id!r} does not exist", "KEY_NOT_FOUND")
        if record.revoked:
            return record
        admins = [other for other in keys.values() if other.role == ADMIN and not other.revoked]
        if record.role == ADMIN and admins == [record]:
            raise FailedPrecondition(
                f"key {record.id!r} is the last admin key; create another admin key before revoking it, "
                "so that somebody can still manage keys",
                "LAST_ADMIN_KEY",
            )
        record = replace(record, revoked=change.time)
        txn.put(record.id.encode(), encode_key(record), db=self._keys)
        detail = {"key": record.id, "role": record.role}
        self._audit(txn, [AuditRecord(change.time, change.actor, AUDIT_KEY_REVOKE, "", "", detail)])
        return record

    def _confirm_entry(self, txn: Transaction, change: EntryConfirmed) -> Confirmed:
        record = self._get_list(txn, change.list)
        entry = self._stored_entry(txn, record, change.entry_id)
        audit = AuditRecord(change.time, change.actor, AUDIT_ENTRY_CONFIRM, change.list, entry.id, change.detail)
        self._audit(txn, [audit])
        return Confirmed(record, self._with_added_by(txn, record.name, entry))

    # Comparing replicas -----------------------------------------------------------------------------------

    def replicated_contents(self) -> dict[bytes, list[tuple[bytes, bytes]]]:
        """Every record of every replicated database (meta without its node-local keys), in key order, read in
        one transaction: what two replicas that applied the same changes hold alike, byte for byte."""
        with self.environment.read() as txn:
            return {
                name: [
                    (bytes(key), bytes(value))
                    for key, value in txn.cursor(db=self.environment.db(name))
                    if name != schema.DB_META or bytes(key) not in schema.NODE_LOCAL_META_KEYS
                ]
                for name in schema.REPLICATED_DATABASES
            }
