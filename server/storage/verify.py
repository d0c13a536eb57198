"""`lookalike verify DATA_DIR`: read every record of a data folder and report each one that is damaged.

It changes nothing. While no server runs on the folder it holds the server's lock file shared (so none can
start meanwhile) and opens LMDB read-only without LMDB's lock file, which also works on a read-only copy.
While a server runs, it reads beside it as one more LMDB reader (registering in LMDB's lock file, the only
thing it writes), in one read transaction: what it reads is one consistent moment, and the server's file
may grow by what the server writes meanwhile, as with any long read.

Every record is decoded as the server would, with every field checked, and records that point at others
(an entry's id, digests, embedding, change log, snapshot) are checked against them. Checksums of index
snapshots are recomputed. Exit status: 0 when every record reads, 1 when any is damaged, 2 when the folder
cannot be verified at all.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import lmdb

from lookalike.server.records import EntryRecord, ListRecord
from lookalike.server.storage.check_index import check_of_key, decode_counts
from lookalike.server.storage.codec import (
    check_entry_fields,
    check_key_fields,
    check_list_fields,
    checksum,
    decode_audit,
    decode_embedding,
    decode_entry,
    decode_key,
    decode_list,
    decode_logged_change,
    json_object,
)
from lookalike.server.storage.errors import CorruptRecord
from lookalike.server.storage.feedback import decode_feedback
from lookalike.server.storage.flood import decode_entry_key, decode_guard, decode_rate
from lookalike.server.storage.outbox import decode_delivery
from lookalike.server.storage.schema import (
    CHECK_COUNTS_KEY_SIZE,
    DATA_FILE,
    DB_AUDIT,
    DB_CHANGES,
    DB_CHECK_COUNTS,
    DB_CHECK_DECISIONS,
    DB_CHECK_EXPIRY,
    DB_CHECK_IMAGES,
    DB_CHECK_PENDING,
    DB_CHECKS,
    DB_DIGESTS,
    DB_ENTRIES,
    DB_ENTRY_IDS,
    DB_FEEDBACK,
    DB_GUARDS,
    DB_KEYPOINTS,
    DB_KEYS,
    DB_LISTS,
    DB_MD5,
    DB_META,
    DB_OUTBOX,
    DB_RATES,
    DB_SNAPSHOT_PIECES,
    DB_SNAPSHOT_SUMS,
    DB_SNAPSHOTS,
    DB_THUMBNAILS,
    DB_VECTORS,
    KEY_FORMAT_VERSION,
    LOCK_FILE,
    MAX_DATABASES,
    META_COUNTERS,
    READABLE_FORMAT_VERSIONS,
    SEQ,
    SEQ_KEY_SIZE,
    UID,
    split_owned_key,
)

type Raw = bytes | memoryview


@dataclass(frozen=True)
class Problem:
    """One damaged record: its database, its key (as text), the list it belongs to ("" if none), what is wrong."""

    database: str
    key: str
    list: str
    problem: str


@dataclass
class Report:
    problems: list[Problem]
    checked: int = 0


def _text(key: bytes) -> str:
    return key.decode(errors="replace")


def _owned_text(key: bytes) -> str:
    """A stored check's key (`owned_key`) as "OWNER/ID"."""
    owner, name = split_owned_key(key)
    return f"{owner}/{name}"


def _seq_text(key: bytes) -> str:
    """An entry-like key as "LIST_UID:SEQ" (hex when it is not one)."""
    if len(key) != SEQ_KEY_SIZE:
        return key.hex()
    return f"{UID.unpack(key[:4])[0]}:{SEQ.unpack(key[4:])[0]}"


class _Verifier:
    """The checks, in one read transaction."""

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        self.env = env
        self.txn = txn
        self.report = Report([])
        self.lists: dict[int, ListRecord] = {}
        self.entry_counts: dict[int, int] = {}
        self._dbs: dict[bytes, lmdb._Database | None] = {}

    def db(self, name: bytes) -> lmdb._Database | None:
        if name not in self._dbs:
            try:
                self._dbs[name] = self.env.open_db(name, txn=self.txn, create=False)
            except lmdb.NotFoundError:
                self._dbs[name] = None  # never written: nothing to check
        return self._dbs[name]

    def records(self, name: bytes) -> Iterator[tuple[bytes, Raw]]:
        db = self.db(name)
        if db is None:
            return
        for key, value in self.txn.cursor(db=db):
            self.report.checked += 1
            yield bytes(key), value

    def bad(self, database: bytes, key: bytes, text: Callable[[bytes], str], problem: object) -> None:
        if database == DB_LISTS:
            list_name = _text(key)
        elif database in _BY_LIST and len(key) >= UID.size:
            uid = UID.unpack(key[:4])[0]
            list_name = self.lists[uid].name if uid in self.lists else f"#{uid}"
        else:
            list_name = ""
        self.report.problems.append(Problem(database.decode(), text(key), list_name, str(problem)))

    def each(self, database: bytes, text: Callable[[bytes], str], check: Callable[[bytes, Raw], object]) -> None:
        """Run `check` on every record of `database`; it raises CorruptRecord for a damaged one, which is
        reported with its key as `text` gives it."""
        for key, value in self.records(database):
            try:
                check(key, value)
            except CorruptRecord as error:
                self.bad(database, key, text, error)

    def entry(self, uid: int, seq: int) -> EntryRecord | None:
        """The entry stored at (uid, seq), None when there is none or it is damaged (reported on its own)."""
        raw = self.txn.get(UID.pack(uid) + SEQ.pack(seq), db=self.db(DB_ENTRIES))
        if raw is None:
            return None
        try:
            return decode_entry(raw, seq)
        except CorruptRecord:
            return None

    def known_list(self, uid: int) -> None:
        if uid not in self.lists:
            raise CorruptRecord(f"it belongs to no list (list #{uid})")

    # The checks ---------------------------------------------------------------------------------

    def run(self) -> Report:
        self.each(DB_META, _text, self.meta)
        self.each(DB_LISTS, _text, self.list_record)
        self.each(DB_KEYS, _text, lambda key, raw: check_key_fields(decode_key(raw), key))
        self.each(DB_ENTRIES, _seq_text, self.entry_record)
        for uid, record in self.lists.items():
            if self.entry_counts.get(uid, 0) != record.entry_count:
                problem = f"it counts {record.entry_count} entries; {self.entry_counts.get(uid, 0)} are stored"
                self.bad(DB_LISTS, record.name.encode(), _text, problem)
        self.each(DB_VECTORS, _seq_text, self.vector)
        for database in (DB_THUMBNAILS, DB_KEYPOINTS):
            self.each(database, _seq_text, lambda key, raw: self.points_at_an_entry(key))
        self.each(DB_ENTRY_IDS, self.prefixed_text, self.entry_id)
        for database in (DB_DIGESTS, DB_MD5):
            self.each(database, lambda key: key.hex(), self.digest)
        self.each(DB_CHANGES, _seq_text, self.change)
        self.each(DB_SNAPSHOTS, lambda key: key.hex(), self.snapshot)
        self.each(DB_SNAPSHOT_PIECES, lambda key: key.hex(), self.snapshot_piece)
        self.each(DB_AUDIT, lambda key: key.hex(), lambda key, raw: decode_audit(raw))
        self.each(DB_CHECKS, _owned_text, self.stored_check)
        for database in (DB_CHECK_PENDING, DB_CHECK_IMAGES):
            self.each(database, _owned_text, self.about_a_stored_check)
        self.each(DB_CHECK_EXPIRY, lambda key: key.hex(), lambda key, raw: None)
        self.each(DB_CHECK_DECISIONS, lambda key: key.hex(), self.decision_key)
        self.each(DB_CHECK_COUNTS, lambda key: key.hex(), self.hourly_counts)
        self.each(DB_OUTBOX, _owned_text, lambda key, raw: decode_delivery(raw))
        self.each(DB_FEEDBACK, lambda key: key.hex(), lambda key, raw: decode_feedback(raw))
        self.each(DB_GUARDS, lambda key: key.hex(), self.flood_guard)
        self.each(DB_RATES, lambda key: key.hex(), self.flood_rate)
        return self.report

    @staticmethod
    def prefixed_text(key: bytes) -> str:
        return f"{UID.unpack(key[:4])[0]}:{_text(key[4:])}" if len(key) > UID.size else key.hex()

    @staticmethod
    def meta(key: bytes, raw: Raw) -> None:
        value = bytes(raw)
        if key == KEY_FORMAT_VERSION and not (value.isdigit() and int(value) in READABLE_FORMAT_VERSIONS):
            raise CorruptRecord(f"format version {value[:20]!r}")
        if key in META_COUNTERS and not value.isdigit():
            raise CorruptRecord(f"not a number: {value[:20]!r}")

    def list_record(self, key: bytes, raw: Raw) -> None:
        record = decode_list(raw)
        check_list_fields(record, key)
        if record.uid in self.lists:
            raise CorruptRecord(f"its uid {record.uid} is also list {self.lists[record.uid].name!r}'s")
        self.lists[record.uid] = record

    def entry_record(self, key: bytes, raw: Raw) -> None:
        if len(key) != SEQ_KEY_SIZE:
            raise CorruptRecord(f"a key of {len(key)} bytes")
        uid, seq = UID.unpack(key[:4])[0], SEQ.unpack(key[4:])[0]
        self.known_list(uid)
        self.entry_counts[uid] = self.entry_counts.get(uid, 0) + 1
        check_entry_fields(decode_entry(raw, seq))
        if seq >= self.lists[uid].next_seq:
            raise CorruptRecord(f"seq {seq} is past the list's next, {self.lists[uid].next_seq}")

    def vector(self, key: bytes, raw: Raw) -> None:
        decode_embedding(raw)
        self.points_at_an_entry(key)

    def points_at_an_entry(self, key: bytes) -> None:
        if len(key) != SEQ_KEY_SIZE:
            raise CorruptRecord(f"a key of {len(key)} bytes")
        uid = UID.unpack(key[:4])[0]
        self.known_list(uid)
        if self.txn.get(key, db=self.db(DB_ENTRIES)) is None:
            raise CorruptRecord("it belongs to no entry")

    def entry_id(self, key: bytes, raw: Raw) -> None:
        seq = self.seq_value(key, raw)
        entry = self.entry(UID.unpack(key[:4])[0], seq)
        if entry is not None and entry.id != _text(key[4:]):
            raise CorruptRecord(f"it names seq {seq}, whose entry is {entry.id!r}")

    def digest(self, key: bytes, raw: Raw) -> None:
        self.seq_value(key, raw)

    def seq_value(self, key: bytes, raw: Raw) -> int:
        """The entry sequence number a lookup record holds, which must name a stored entry."""
        if len(key) <= UID.size or len(raw) != SEQ.size:
            raise CorruptRecord(f"a key of {len(key)} bytes, a value of {len(raw)}")
        uid, seq = UID.unpack(key[:4])[0], SEQ.unpack(raw)[0]
        self.known_list(uid)
        if self.txn.get(UID.pack(uid) + SEQ.pack(seq), db=self.db(DB_ENTRIES)) is None:
            raise CorruptRecord(f"it names seq {seq}, which is not stored")
        return int(seq)

    def change(self, key: bytes, raw: Raw) -> None:
        if len(key) != SEQ_KEY_SIZE:
            raise CorruptRecord(f"a key of {len(key)} bytes")
        uid, number = UID.unpack(key[:4])[0], SEQ.unpack(key[4:])[0]
        self.known_list(uid)
        decode_logged_change(raw)
        if number >= self.lists[uid].next_change:
            raise CorruptRecord(f"change {number} is past the list's next, {self.lists[uid].next_change}")

    def snapshot(self, key: bytes, raw: Raw) -> None:
        if len(key) != UID.size:
            raise CorruptRecord(f"a key of {len(key)} bytes")
        uid = UID.unpack(key)[0]
        self.known_list(uid)
        if len(raw) < SEQ.size:
            raise CorruptRecord(f"{len(raw)} bytes")
        change = SEQ.unpack(raw[: SEQ.size])[0]
        if change >= self.lists[uid].next_change:
            raise CorruptRecord(f"it holds change {change}, past the list's last, {self.lists[uid].next_change - 1}")
        summed = self.txn.get(key, db=self.db(DB_SNAPSHOT_SUMS))
        if summed is not None and summed[: SEQ.size] == raw[: SEQ.size]:
            if summed[SEQ.size :] != checksum(raw[SEQ.size :]):
                raise CorruptRecord("it does not match its checksum; the next start rebuilds the index from entries")

    def snapshot_piece(self, key: bytes, raw: Raw) -> None:
        if len(key) != 2 * UID.size:
            raise CorruptRecord(f"a key of {len(key)} bytes")
        self.known_list(UID.unpack(key[:4])[0])
        summed = self.txn.get(key, db=self.db(DB_SNAPSHOT_SUMS))
        if summed is not None and bytes(summed) != checksum(raw):
            raise CorruptRecord("it does not match its checksum; the next start rebuilds the index from entries")

    @staticmethod
    def stored_check(key: bytes, raw: Raw) -> None:
        """A stored check is keyed by its owner and id (`owned_key`); its record must say the same."""
        record = json_object(raw)
        owner, check_id = split_owned_key(key)
        if (record.get("owner"), record.get("id")) != (owner, check_id) or not isinstance(record.get("status"), str):
            raise CorruptRecord(
                f"its owner and id are {str(record.get('owner'))[:40]!r}, {str(record.get('id'))[:40]!r} under the "
                f"key of {owner[:40]!r}, {check_id[:40]!r}; its status {record.get('status')!r}"
            )

    def about_a_stored_check(self, key: bytes, raw: Raw) -> None:
        if self.txn.get(key, db=self.db(DB_CHECKS)) is None:
            raise CorruptRecord("it belongs to no stored check")

    @staticmethod
    def decision_key(key: bytes, raw: Raw) -> None:
        try:
            check_of_key(key)
        except (ValueError, UnicodeDecodeError) as error:
            raise CorruptRecord(str(error)) from None

    @staticmethod
    def hourly_counts(key: bytes, raw: Raw) -> None:
        if len(key) != CHECK_COUNTS_KEY_SIZE:
            raise CorruptRecord(f"a key of {len(key)} bytes")
        try:
            decode_counts(raw)
        except ValueError as error:
            raise CorruptRecord(f"its counts: {error}") from None

    @staticmethod
    def flood_guard(key: bytes, raw: Raw) -> None:
        decode_entry_key(key)
        decode_guard(raw)

    @staticmethod
    def flood_rate(key: bytes, raw: Raw) -> None:
        decode_entry_key(key)
        decode_rate(raw)


_BY_LIST = {
    DB_ENTRIES,
    DB_VECTORS,
    DB_THUMBNAILS,
    DB_KEYPOINTS,
    DB_ENTRY_IDS,
    DB_DIGESTS,
    DB_MD5,
    DB_CHANGES,
    DB_SNAPSHOTS,
    DB_SNAPSHOT_PIECES,
}
"""Databases whose keys start with the uid of the list they belong to."""


class CannotVerify(Exception):
    """The folder cannot be verified at all (exit status 2)."""


def verify(path: Path) -> Report:
    """Every damaged record of the data folder at `path`; changes nothing (see the module's doc)."""
    if not (path / DATA_FILE).is_file():
        raise CannotVerify(f"{path} holds no Lookalike data ({DATA_FILE} is missing)")
    lock: IO[str] | None = None
    server_running = False
    try:
        if (path / LOCK_FILE).exists():
            lock = (path / LOCK_FILE).open("r")
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)  # no server may start while this reads
            except OSError:
                server_running = True  # it holds the lock: read beside it as a registered LMDB reader
        try:
            env = lmdb.open(str(path), readonly=True, lock=server_running, max_dbs=MAX_DATABASES, subdir=True)
        except lmdb.Error as error:
            raise CannotVerify(f"{path} cannot be opened: {error}") from None
        try:
            with env.begin(buffers=True) as txn:
                return _Verifier(env, txn).run()
        finally:
            env.close()
    finally:
        if lock is not None:
            lock.close()
