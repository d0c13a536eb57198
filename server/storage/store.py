"""The replicated data and its index bookkeeping: lists, entries and their fingerprints, API keys, the audit log,
each list's change log and index snapshots.

Every write is one transaction that also appends to the list's change log, so an index snapshot can name the
last change it holds and a restart replays only what came after. Every change also writes its audit record in
its own transaction, so a record can be neither lost nor written for a change that did not happen.

Entries are keyed for idempotency in `digests` by their SHA-256; an entry known only by hashes (a shared hash
list) has none, so it is keyed by a digest of its MD5, else of its PDQ (`entry_key`): re-importing a list adds
nothing twice. MD5s have their own lookup (`md5`), so an MD5 given alone finds the entry that has it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

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
from lookalike.server.hashes import MD5, PDQ, SHA256
from lookalike.server.records import (
    AUDIT_ENTRY_ADD,
    AUDIT_ENTRY_REMOVE,
    AUDIT_KEY_CREATE,
    AUDIT_KEY_REVOKE,
    AUDIT_LIST_CREATE,
    AUDIT_LIST_DELETE,
    AUDIT_LIST_UPDATE,
    ENTRY_ID_MAX,
    LIST_KIND_DISALLOW,
    AddOutcome,
    AuditRecord,
    EntryRecord,
    EntryScan,
    KeyRecord,
    ListRecord,
    NewEntry,
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
    decode_change,
    decode_embedding,
    decode_entry,
    decode_key,
    decode_list,
    encode_audit,
    encode_embedding,
    encode_entry,
    encode_key,
    encode_list,
)
from lookalike.server.storage.environment import Environment, Transaction, delete_prefix
from lookalike.server.storage.errors import CorruptRecord, corrupt

log = logging.getLogger(__name__)

AUDIT_LOOKUP_SECONDS = 1.0
AUDIT_LOOKUP_RECORDS = 10_000
"""How far after an entry's creation its audit record is looked for (entries stored before the adding key
was kept with them): the record is written in the same transaction, at the same moment since audit
records began sharing the entry's time, a moment later before that."""


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

    def create_list(
        self,
        name: str,
        description: str,
        review_threshold: float,
        reject_threshold: float,
        model: str,
        actor: str = "",
        dihedral: bool = True,
        kind: str = LIST_KIND_DISALLOW,
    ) -> ListRecord:
        validate_list_name(name)
        validate_thresholds(review_threshold, reject_threshold)
        validate_description(description)
        validate_list_kind(kind)
        with self.environment.transaction() as txn:
            if txn.get(schema.list_key(name), db=self._lists) is not None:
                raise AlreadyExists(f"list {name!r} already exists", "LIST_EXISTS")
            uid = int(txn.get(schema.KEY_NEXT_LIST_UID, default=b"1", db=self._meta))
            txn.put(schema.KEY_NEXT_LIST_UID, str(uid + 1).encode(), db=self._meta)
            record = ListRecord(
                uid,
                name,
                description,
                review_threshold,
                reject_threshold,
                model,
                time.time(),
                dihedral=dihedral,
                kind=kind,
            )
            self._put_list(txn, record)
            self.record_audit(txn, actor, AUDIT_LIST_CREATE, name, detail=_settings(record))
        return record

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

    def update_list(
        self,
        name: str,
        description: str | None = None,
        review_threshold: float | None = None,
        reject_threshold: float | None = None,
        actor: str = "",
        dihedral: bool | None = None,
        cause: str = "",
    ) -> ListRecord:
        """`cause` says what made the change when not a person's direct edit (e.g. "calibrate"); it is audited."""
        with self.environment.transaction() as txn:
            record = self._get_list(txn, name)
            record = replace(
                record,
                description=record.description if description is None else description,
                review_threshold=record.review_threshold if review_threshold is None else review_threshold,
                reject_threshold=record.reject_threshold if reject_threshold is None else reject_threshold,
                dihedral=record.dihedral if dihedral is None else dihedral,
            )
            validate_thresholds(record.review_threshold, record.reject_threshold)
            validate_description(record.description)
            self._put_list(txn, record)
            detail = _settings(record) | ({"cause": cause} if cause else {})
            self.record_audit(txn, actor, AUDIT_LIST_UPDATE, name, detail=detail)
        return record

    def delete_list(self, name: str, actor: str = "") -> ListRecord:
        """Delete a list and everything stored under it, in one transaction."""
        with self.environment.transaction() as txn:
            record = self._get_list(txn, name)
            txn.delete(schema.list_key(name), db=self._lists)
            self.record_audit(txn, actor, AUDIT_LIST_DELETE, name, detail={"entries_deleted": str(record.entry_count)})
            prefix = schema.list_prefix(record.uid)
            entry_dbs = (self._entries, self._entry_ids, self._digests, self._md5, self._vectors)
            for db in (*entry_dbs, self._changes, self._snapshots, self._snapshot_pieces, self._snapshot_sums):
                delete_prefix(txn.cursor(db=db), prefix)
        return record

    # Entries -------------------------------------------------------------

    def add_entries(self, name: str, items: Sequence[NewEntry], actor: str = "") -> list[AddOutcome | Exception]:
        """Store several entries in one transaction: idempotent by `entry_key`, and by MD5.

        Each item gets its outcome or its own error (an id already used by other
        bytes); the good ones are committed together.
        """
        results: list[AddOutcome | Exception] = []
        audit: list[AuditRecord] = []
        with self.environment.transaction(grows=True) as txn:
            record = self._get_list(txn, name)
            prefix = schema.list_prefix(record.uid)
            seq, change, count = record.next_seq, record.next_change, record.entry_count
            pdq_only = record.pdq_only_count
            for item in items:
                key = prefix + entry_key(item.sha256, item.md5, item.pdq)
                existing = txn.get(key, db=self._digests)
                if existing is None and item.md5:
                    existing = txn.get(prefix + item.md5, db=self._md5)
                if existing is not None:
                    entry = self._entry(txn, record.uid, schema.SEQ.unpack(existing)[0])
                    results.append(AddOutcome(entry, duplicate=True, change=0, embedding=None))
                    continue
                entry_id = item.id or uuid.uuid4().hex
                if txn.get(prefix + entry_id.encode(), db=self._entry_ids) is not None:
                    results.append(
                        AlreadyExists(
                            f"entry id {entry_id!r} is already used on list {name!r} by other bytes",
                            "ENTRY_ID_EXISTS",
                        )
                    )
                    continue
                entry = EntryRecord(
                    entry_id,
                    seq,
                    item.sha256,
                    item.pdq,
                    item.pdq_quality,
                    item.phash,
                    item.model if item.embedding is not None else "",
                    item.meta,
                    time.time(),
                    item.md5,
                    actor,
                )
                seq_key = schema.seq_key(record.uid, seq)
                txn.put(seq_key, encode_entry(entry), db=self._entries)
                txn.put(prefix + entry_id.encode(), schema.SEQ.pack(seq), db=self._entry_ids)
                txn.put(key, schema.SEQ.pack(seq), db=self._digests)
                if item.md5:
                    txn.put(prefix + item.md5, schema.SEQ.pack(seq), db=self._md5)
                stored = None
                if item.embedding is not None:  # the index gets what a restart would read back
                    encoded = encode_embedding(item.embedding)
                    txn.put(seq_key, encoded, db=self._vectors)
                    stored = decode_embedding(encoded)
                txn.put(schema.seq_key(record.uid, change), schema.OP_ADD + schema.SEQ.pack(seq), db=self._changes)
                audit.append(AuditRecord(entry.created, actor, AUDIT_ENTRY_ADD, name, entry_id, _add_detail(entry)))
                results.append(AddOutcome(entry, duplicate=False, change=change, embedding=stored))
                seq, change, count = seq + 1, change + 1, count + 1
                if pdq_only is not None:
                    pdq_only += is_pdq_only(entry)
            self._put_list(
                txn, replace(record, next_seq=seq, next_change=change, entry_count=count, pdq_only_count=pdq_only)
            )
            self._audit_all(txn, audit)
        return results

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

    def remove_entry(self, name: str, entry_id: str, actor: str = "") -> tuple[EntryRecord, int]:
        """Remove an entry; returns it and the change number of the removal."""
        with self.environment.transaction() as txn:
            record = self._get_list(txn, name)
            prefix = schema.list_prefix(record.uid)
            raw_seq = txn.get(prefix + entry_id.encode(), db=self._entry_ids)
            if raw_seq is None:
                raise NotFound(f"entry {entry_id[:80]!r} is not on list {name!r}", "ENTRY_NOT_FOUND")
            seq = schema.SEQ.unpack(raw_seq)[0]
            entry = self._entry(txn, record.uid, seq)
            key = schema.seq_key(record.uid, seq)
            txn.delete(key, db=self._entries)
            txn.delete(key, db=self._vectors)
            txn.delete(prefix + entry_id.encode(), db=self._entry_ids)
            txn.delete(prefix + entry_key(entry.sha256, entry.md5, entry.pdq), db=self._digests)
            md5_key = prefix + entry.md5 if entry.md5 else b""
            if md5_key and txn.get(md5_key, db=self._md5) == schema.SEQ.pack(seq):  # else it finds another entry
                txn.delete(md5_key, db=self._md5)
            change = record.next_change
            txn.put(schema.seq_key(record.uid, change), schema.OP_REMOVE + schema.SEQ.pack(seq), db=self._changes)
            self.record_audit(txn, actor, AUDIT_ENTRY_REMOVE, name, entry_id, _add_detail(entry))
            pdq_only = record.pdq_only_count
            if pdq_only is not None:
                pdq_only -= is_pdq_only(entry)
            self._put_list(
                txn,
                replace(record, next_change=change + 1, entry_count=record.entry_count - 1, pdq_only_count=pdq_only),
            )
        return entry, change

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
                if bytes(key[:schema.TIME_KEY_SIZE]) > end or read == AUDIT_LOOKUP_RECORDS:
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
                        changes.append(LoggedChange(number, *decode_change(value)))
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
                txn.put(prefix + schema.UID.pack(number), data, db=self._snapshot_pieces)
                txn.put(prefix + schema.UID.pack(number), piece_sums[number], db=self._snapshot_sums)
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

    def create_key(self, name: str, role: str, lists: Sequence[str], digest: bytes, actor: str = "") -> KeyRecord:
        """Store a new key under the next id ("k1", "k2", ...); the caller validates role and lists."""
        with self.environment.transaction() as txn:
            number = int(txn.get(schema.KEY_NEXT_KEY_NUMBER, default=b"1", db=self._meta))
            txn.put(schema.KEY_NEXT_KEY_NUMBER, str(number + 1).encode(), db=self._meta)
            record = KeyRecord(f"k{number}", name, role, list(lists), digest, time.time(), actor)
            txn.put(record.id.encode(), encode_key(record), db=self._keys)
            detail = {"key": record.id, "role": role, "lists": ",".join(lists), "name": name}
            self.record_audit(txn, actor, AUDIT_KEY_CREATE, detail=detail)
        return record

    def revoke_key(self, key_id: str, actor: str = "") -> KeyRecord:
        """Mark a key revoked (kept, so audit records still name it); revoking twice changes nothing."""
        with self.environment.transaction() as txn:
            raw = txn.get(key_id.encode(), db=self._keys) if key_id else None
            if raw is None:
                raise NotFound(f"key {key_id!r} does not exist", "KEY_NOT_FOUND")
            record = _key_record(raw, key_id.encode())
            if record.revoked:
                return record
            record = replace(record, revoked=time.time())
            txn.put(record.id.encode(), encode_key(record), db=self._keys)
            self.record_audit(txn, actor, AUDIT_KEY_REVOKE, detail={"key": record.id, "role": record.role})
        return record

    # Audit log -----------------------------------------------------------------

    def record_audit(
        self,
        txn: Transaction,
        actor: str,
        action: str,
        list_name: str = "",
        entry_id: str = "",
        detail: dict[str, str] | None = None,
    ) -> None:
        """Append one audit record inside the caller's transaction, with the change it describes."""
        self._audit_all(txn, [AuditRecord(time.time(), actor, action, list_name, entry_id, detail or {})])

    def _audit_all(self, txn: Transaction, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        first = int(txn.get(schema.KEY_NEXT_AUDIT_SEQ, default=b"1", db=self._meta))
        txn.put(schema.KEY_NEXT_AUDIT_SEQ, str(first + len(records)).encode(), db=self._meta)
        for seq, record in enumerate(records, start=first):
            txn.put(schema.audit_key(record.time, seq), encode_audit(record), db=self._audit_log)

    def audit(
        self, list_name: str = "", since: float = 0.0, limit: int = 1000, page_token: str = ""
    ) -> tuple[list[AuditRecord], str]:
        """Audit records oldest first, from `since` (or after `page_token`), on one list or all.

        Returns up to `limit` records and the token of the next page ("" at the end).
        """
        key_size = 2 * schema.SEQ.size
        return self.environment.page(schema.DB_AUDIT, key_size, decode_audit, list_name, since, limit, page_token)

