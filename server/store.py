"""LMDB: the source of truth for lists, entries, fingerprints, meta, index snapshots, API keys and the audit log.

Every write is one transaction that also appends to the list's change log, so an
index snapshot can name the last change it holds and a restart replays only what
came after. Records are JSON (settings, meta) and raw bytes (embeddings, index
snapshots); nothing is pickled. Every persisted name is a constant here.
Every change also writes its audit record in its own transaction, so a record
can be neither lost nor written for a change that did not happen.

Entries are keyed for idempotency in `digests` by their SHA-256; an entry known
only by hashes (a shared hash list) has none, so it is keyed by a digest of its
MD5, else of its PDQ (`entry_key`): re-importing a list adds nothing twice. MD5s
have their own lookup (`md5`), so an MD5 given alone finds the entry that has it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import lmdb
import numpy as np

from lookalike.client.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    LookalikeError,
    NotFound,
    ResourceExhausted,
)
from lookalike.index.list_index import EMBEDDING_DIM

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""Bumped whenever a stored layout changes: 2 stores embeddings as float16 (1 stored float32); 3 keys stored
checks and their webhooks by owner and id (2 by id alone)."""
READABLE_FORMAT_VERSIONS = (1, 2, 3)
"""Older folders this server reads (and upgrades in place, so an older server refuses them)."""
FORMAT_UPGRADED_ON_OPEN = 2
"""Opening a folder upgrades it this far (float32 embeddings are read beside float16 ones). A later
format needs its records rewritten: the module that owns them runs that step through `Store.upgrade`."""

DB_META = b"meta"
DB_LISTS = b"lists"
DB_ENTRIES = b"entries"
DB_ENTRY_IDS = b"entry_ids"
DB_DIGESTS = b"digests"
DB_MD5 = b"md5"
DB_VECTORS = b"vectors"
DB_CHANGES = b"changes"
DB_SNAPSHOTS = b"snapshots"
DB_SNAPSHOT_PIECES = b"snapshot_pieces"
DB_SNAPSHOT_SUMS = b"snapshot_sums"
"""Checksums of snapshots (keyed as in `snapshots`, valued change + sum) and of their pieces (keyed as in
`snapshot_pieces`): a snapshot's bytes are loaded into the index as they are, so damage would give wrong
distances and scores instead of an error. Snapshots saved before sums were kept load unchecked."""
DB_KEYS = b"keys"
DB_THUMBNAILS = b"thumbnails"
"""Small WebP thumbnails of the entries of lists that opted in (`ListRecord.thumbnails`), keyed as in `entries`:
written with the entry, deleted with it, with its list, and with the setting turned off."""
DB_AUDIT = b"audit"
LOCK_FILE = "lookalike.lock"
DATA_FILE = "data.mdb"
LMDB_LOCK_FILE = "lock.mdb"
WRITE_PROBE_FILE = ".lookalike-write-probe-{pid}"
KEY_FORMAT_VERSION = b"format_version"
KEY_NEXT_LIST_UID = b"next_list_uid"
KEY_NEXT_KEY_NUMBER = b"next_key_number"
KEY_NEXT_AUDIT_SEQ = b"next_audit_seq"
META_COUNTERS = (KEY_NEXT_LIST_UID, KEY_NEXT_KEY_NUMBER, KEY_NEXT_AUDIT_SEQ)

OP_ADD = b"A"
OP_REMOVE = b"R"

AUDIT_LIST_CREATE = "list.create"
AUDIT_LIST_UPDATE = "list.update"
AUDIT_LIST_DELETE = "list.delete"
AUDIT_ENTRY_ADD = "entry.add"
AUDIT_ENTRY_REMOVE = "entry.remove"
AUDIT_KEY_CREATE = "key.create"
AUDIT_KEY_REVOKE = "key.revoke"
AUDIT_ENTRY_CONFIRM = "entry.confirm"

LIST_KIND_DISALLOW = "disallow"
LIST_KIND_ALLOW = "allow"
LIST_KINDS = (LIST_KIND_DISALLOW, LIST_KIND_ALLOW)

LIST_NAME = re.compile(r"^[a-z0-9_-]{1,64}\Z")  # \Z: `$` would also accept a trailing newline
LISTS_NAMED_MAX = 256
"""List names one request may carry (a check's, a key's): more than any caller needs, few enough that
authorizing, logging and checking them stays cheap whatever a caller sends."""
LISTS_NAMED_MAX_BYTES = LISTS_NAMED_MAX * 64
ENTRY_ID_MAX = 256
META_MAX_ITEMS = 64
META_MAX_CHARS = 4096
DESCRIPTION_MAX_CHARS = 4096
AUDIT_LOOKUP_SECONDS = 1.0
AUDIT_LOOKUP_RECORDS = 10_000
"""How far after an entry's creation its audit record is looked for (entries stored before the adding key
was kept with them): the record is written in the same transaction, at the same moment since audit
records began sharing the entry's time, a moment later before that."""

ADD_RESERVE_SHARE = 0.01
ADD_RESERVE_MIN_BYTES = 128 * 1024
"""Adds stop this far short of a full map (the larger of the two): a removal copies pages before it
frees any, so a map filled to the last page could not be emptied without a restart."""

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
"""What LMDB reports when the disk will not take a write: no space, a quota, a file size limit (RLIMIT_FSIZE,
or the file system's largest file), and EIO, which LMDB also reports for a write cut short by a filling disk."""
STORAGE_RETRY_SECONDS = 1.0
"""How often background writers (stored checks, deferred checks) try again while the disk is full."""

_UID = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
TIME_KEY_SIZE = _SEQ.size


@dataclass(frozen=True)
class ListRecord:
    uid: int
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    model: str
    created: float
    entry_count: int = 0
    next_seq: int = 1
    next_change: int = 1
    dihedral: bool = True
    """Checks also match PDQ's rotations and mirrors; lists stored before the setting existed did."""
    kind: str = LIST_KIND_DISALLOW
    """"allow": its matches never flag a check, and outrank disallow matches (lists made before kinds: disallow)."""
    pdq_only_count: int | None = 0
    """Entries with a PDQ hash and no embedding, which only a PDQ search finds; None on lists stored
    before the count was kept (unknown)."""
    thumbnails: bool = False
    """Pictures added keep a small thumbnail (`DB_THUMBNAILS`); off by default, and on lists stored before it
    existed: no picture is kept unless a list opts in."""


@dataclass(frozen=True)
class EntryRecord:
    """An entry's fingerprints and meta; the picture itself is never stored."""

    id: str
    seq: int
    sha256: str
    pdq: str
    pdq_quality: int
    phash: str
    model: str
    meta: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    md5: str = ""
    added_by: str | None = None
    """Id of the key that added it ("" for the keyless loopback caller); None on entries stored before it
    was kept with them, whose reads fill it from the audit log (`_with_added_by`)."""


@dataclass(frozen=True)
class EntryScan:
    """A stretch of a list's entries read newest first: those kept, and the sequence number to read on
    below (0: the oldest entry was reached)."""

    entries: list[EntryRecord]
    resume_before: int


@dataclass(frozen=True)
class NewEntry:
    """What an add asks to store; `id` empty means generate one."""

    id: str
    sha256: str
    pdq: str
    pdq_quality: int
    phash: str
    model: str
    embedding: np.ndarray | None
    meta: dict[str, str]
    md5: str = ""
    thumbnail: bytes | None = None
    """Kept only when the list keeps thumbnails."""


@dataclass(frozen=True)
class AddOutcome:
    entry: EntryRecord
    duplicate: bool
    change: int  # 0 for a duplicate: nothing changed
    embedding: np.ndarray | None


@dataclass(frozen=True)
class KeyRecord:
    """An API key without its secret: `digest` is the SHA-256 of the secret, hex."""

    id: str
    name: str
    role: str
    lists: list[str]
    digest: str
    created: float
    created_by: str = ""
    revoked: float = 0.0


@dataclass(frozen=True)
class AuditRecord:
    """One change: when, by which key ("" before any key existed), what, on which list and entry."""

    time: float
    key_id: str
    action: str
    list: str = ""
    entry_id: str = ""
    detail: dict[str, str] = field(default_factory=dict)


class OnList(Protocol):
    """A record that names the list it is about ("" for none), as paged by `Store.page`."""

    @property
    def list(self) -> str: ...


@dataclass(frozen=True)
class Change:
    number: int
    op: bytes
    seq: int


class CorruptRecord(ValueError):
    """A stored record that does not decode as what it should be; the message says how."""


VERIFY_HINT = "run `lookalike verify DATA_DIR`"
"""Ends every DATA_CORRUPT message (`serve` names its own folder instead of DATA_DIR in start-up errors)."""


def corrupt(record: str, problem: object) -> DataLoss:
    """DATA_LOSS (DATA_CORRUPT) naming a stored record that cannot be read, and what to run."""
    return DataLoss(f"{record} is corrupt ({problem}); {VERIFY_HINT}", "DATA_CORRUPT")


class StorageFull(ResourceExhausted):
    """RESOURCE_EXHAUSTED with reason STORAGE_FULL: the LMDB map or the disk under it is full. A class of its
    own so that background writers can tell it from other failures, wait and try again, without a traceback."""

    def __init__(self, message: str, reason: str = "STORAGE_FULL") -> None:
        super().__init__(message, reason)


def validate_list_name(name: str) -> None:
    if not LIST_NAME.match(name):
        raise InvalidArgument(
            f"list name {name[:80]!r} is invalid: use 1-64 lowercase letters, digits, '-' or '_'", "LIST_NAME_INVALID"
        )


def validate_lists_named(names: Sequence[str]) -> None:
    """Refuse more list names than any real caller sends, before any other work is done for them."""
    if len(names) > LISTS_NAMED_MAX:
        raise InvalidArgument(
            f"{len(names):,} list names in one request; at most {LISTS_NAMED_MAX}: name fewer", "LISTS_TOO_MANY"
        )
    size = sum(len(name.encode()) for name in names)
    if size > LISTS_NAMED_MAX_BYTES:
        raise InvalidArgument(
            f"list names of {size:,} bytes in one request; at most {LISTS_NAMED_MAX_BYTES:,} "
            "(a list name has at most 64 characters)",
            "LISTS_TOO_MANY",
        )


def validate_thresholds(review: float, reject: float) -> None:
    if not (0.0 <= review <= 1.0 and 0.0 <= reject <= 1.0):
        raise InvalidArgument(
            f"thresholds must lie in [0, 1] (review {review}, reject {reject})", "THRESHOLD_OUT_OF_RANGE"
        )
    if review > reject:
        raise InvalidArgument(
            f"review threshold {review} is above reject threshold {reject}; review must be ≤ reject",
            "THRESHOLD_ORDER",
        )


def validate_description(description: str) -> None:
    # Every list record is read on every check of all lists: keep them small.
    if len(description) > DESCRIPTION_MAX_CHARS:
        raise InvalidArgument(
            f"description has {len(description):,} characters; at most {DESCRIPTION_MAX_CHARS} are kept",
            "DESCRIPTION_TOO_LONG",
        )


def validate_entry_id(entry_id: str) -> None:
    # Bytes, not characters: the id is part of an LMDB key (at most 511 bytes).
    if not entry_id.isprintable() or len(entry_id.encode()) > ENTRY_ID_MAX or entry_id != entry_id.strip():
        raise InvalidArgument(
            f"entry id {entry_id[:40]!r} is invalid: up to {ENTRY_ID_MAX} bytes (UTF-8) of printable characters, "
            "no leading or trailing spaces",
            "ENTRY_ID_INVALID",
        )


def validate_meta(meta: dict[str, str]) -> None:
    if len(meta) > META_MAX_ITEMS or sum(len(k) + len(v) for k, v in meta.items()) > META_MAX_CHARS:
        raise InvalidArgument(
            f"meta too large: at most {META_MAX_ITEMS} keys and {META_MAX_CHARS} characters in all",
            "META_TOO_LARGE",
        )


def entry_key(sha256: str, md5: str = "", pdq: str = "") -> bytes:
    """What makes an entry the same entry (32 bytes, its `digests` key): its SHA-256, else a
    digest of its MD5, else of its PDQ. The prefixes keep the three kinds apart."""
    if sha256:
        return bytes.fromhex(sha256)
    if md5:
        return hashlib.sha256(b"lookalike-md5:" + bytes.fromhex(md5)).digest()
    if pdq:
        return hashlib.sha256(b"lookalike-pdq:" + bytes.fromhex(pdq)).digest()
    raise InvalidArgument("an entry needs a SHA-256, an MD5 or a PDQ hash", "HASH_MISSING")


def _add_detail(entry: EntryRecord) -> dict[str, str]:
    """The audit detail of an add: the identifier the entry is known by."""
    if entry.sha256:
        return {"sha256": entry.sha256}
    return {"md5": entry.md5} if entry.md5 else {"pdq": entry.pdq}


def json_object(raw: bytes | memoryview) -> dict[str, object]:
    """A stored JSON object; raises CorruptRecord."""
    try:
        fields = json.loads(bytes(raw))
    except ValueError as error:  # UnicodeDecodeError too
        raise CorruptRecord(f"not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise CorruptRecord("not a JSON object")
    return fields


def _record[R](cls: Callable[..., R], fields: dict[str, object]) -> R:
    try:
        return cls(**fields)
    except TypeError as error:  # a field missing or unknown
        raise CorruptRecord(f"its fields do not fit: {error}") from None


def decode_record[R](cls: Callable[..., R], raw: bytes | memoryview) -> R:
    """A stored JSON record of the dataclass `cls` (its field names checked, not their types); raises
    CorruptRecord."""
    return _record(cls, json_object(raw))


def decode_list(raw: bytes | memoryview) -> ListRecord:
    """A stored list record; raises CorruptRecord."""
    fields = json_object(raw)
    fields.setdefault("pdq_only_count", None)  # a list stored before the count was kept
    return _record(ListRecord, fields)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: object, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def check_list_fields(record: ListRecord, key: bytes | memoryview) -> None:
    """Every field of a list record of the type and range it must have (the decoder checks only their names);
    raises CorruptRecord."""
    wrong = [
        name
        for name, right in (
            ("uid", _count(record.uid, 1)),
            ("name", record.name == bytes(key).decode(errors="replace")),
            ("description", isinstance(record.description, str)),
            ("review_threshold", _number(record.review_threshold) and 0 <= record.review_threshold <= 1),
            ("reject_threshold", _number(record.reject_threshold) and 0 <= record.reject_threshold <= 1),
            ("model", isinstance(record.model, str)),
            ("created", _number(record.created)),
            ("entry_count", _count(record.entry_count)),
            ("next_seq", _count(record.next_seq, 1)),
            ("next_change", _count(record.next_change, 1)),
            ("dihedral", isinstance(record.dihedral, bool)),
            ("kind", record.kind in LIST_KINDS),
            ("pdq_only_count", record.pdq_only_count is None or _count(record.pdq_only_count)),
            ("thumbnails", isinstance(record.thumbnails, bool)),
        )
        if not right
    ]
    if wrong:
        raise CorruptRecord(f"bad {', '.join(wrong)}")


def check_key_fields(record: KeyRecord, key: bytes | memoryview) -> None:
    """As `check_list_fields`, for an API key record."""
    wrong = [
        name
        for name, right in (
            ("id", record.id == bytes(key).decode(errors="replace")),
            ("name", isinstance(record.name, str)),
            ("role", isinstance(record.role, str)),
            ("lists", isinstance(record.lists, list) and all(isinstance(item, str) for item in record.lists)),
            ("digest", isinstance(record.digest, str) and len(record.digest) == 64 and bool(_HEX(record.digest))),
            ("created", _number(record.created)),
            ("created_by", isinstance(record.created_by, str)),
            ("revoked", _number(record.revoked)),
        )
        if not right
    ]
    if wrong:
        raise CorruptRecord(f"bad {', '.join(wrong)}")


def _list_record(raw: bytes | memoryview, key: bytes | memoryview, check_fields: bool = False) -> ListRecord:
    try:
        record = decode_list(raw)
        if check_fields:
            check_list_fields(record, key)
        return record
    except CorruptRecord as error:
        raise corrupt(f"the record of list {bytes(key).decode(errors='replace')!r}", error) from None


def _is_pdq_only(entry: EntryRecord) -> bool:
    """A PDQ hash and no embedding (an entry's model is set exactly when it has one)."""
    return bool(entry.pdq) and not entry.model


_HEX = re.compile(r"[0-9a-f]*").fullmatch


def decode_entry(raw: bytes | memoryview, seq: int) -> EntryRecord:
    """A stored entry record (under sequence number `seq`); raises CorruptRecord. The checks beyond the
    JSON (their cost is within the noise of decoding it) keep a bad hash from failing later, in an index."""
    entry = decode_record(EntryRecord, raw)
    if entry.seq != seq:
        raise CorruptRecord(f"it says seq {entry.seq!r}")
    if (
        len(entry.sha256) not in (0, 64)
        or len(entry.pdq) not in (0, 64)
        or len(entry.md5) not in (0, 32)
        or len(entry.phash) not in (0, 16)
        or not _HEX(entry.sha256 + entry.pdq + entry.md5 + entry.phash)
    ):
        raise CorruptRecord("a hash is not hex of its length")
    return entry


def _is_hex(text: str, chars: int) -> bool:
    return len(text) == chars and all(c in "0123456789abcdef" for c in text)


def _delete_prefix(cursor: lmdb.Cursor, prefix: bytes, up_to: int | None = None) -> None:
    """Delete the keys starting with `prefix` (and, given `up_to`, whose sequence suffix is ≤ it)."""
    if not cursor.set_range(prefix):
        return
    while bytes(cursor.key()).startswith(prefix):
        if up_to is not None and _SEQ.unpack(cursor.key()[4:])[0] > up_to:
            return
        if not cursor.delete():
            return


def time_key(when: float) -> bytes:
    """A time as a key prefix (TIME_KEY_SIZE bytes, big-endian µs, never below 0): keys sort by time."""
    return _SEQ.pack(max(0, int(when * 1_000_000)))


def owned_key(owner: str, name: str) -> bytes:
    """The key of a record that belongs to an API key (a stored check): each key's names are its own.
    Owner (a key id, "" for the keyless caller), NUL, then the name (printable, so never NUL)."""
    return owner.encode() + b"\0" + name.encode()


def split_owned_key(key: bytes) -> tuple[str, str]:
    """(owner, name) of an `owned_key`."""
    owner, _, name = key.partition(b"\0")
    return owner.decode(), name.decode()


def _audit_key(when: float, seq: int) -> bytes:
    """Time (µs) then a counter: `since` is a range start, and equal times keep their order."""
    return time_key(when) + _SEQ.pack(seq)


def _list_key(name: str) -> bytes:
    return name.encode()


def _seq_key(uid: int, seq: int) -> bytes:
    return _UID.pack(uid) + _SEQ.pack(seq)


def encode_embedding(vector: np.ndarray) -> bytes:
    """Embeddings are stored as float16: a cosine moves by about 1e-4, and at 1 KiB a 512-d vector
    fits inside an LMDB page beside others, where 2 KiB of float32 took a 4 KiB overflow page."""
    return np.asarray(vector, dtype="<f2").tobytes()


def decode_embedding(raw: bytes | memoryview) -> np.ndarray:
    """float32 from a stored embedding: float16 since format 2, float32 before (twice the bytes).
    Raises CorruptRecord for any other length."""
    if len(raw) == 4 * EMBEDDING_DIM:
        return np.frombuffer(raw, dtype="<f4")
    if len(raw) != 2 * EMBEDDING_DIM:
        raise CorruptRecord(f"its embedding holds {len(raw)} bytes, not {2 * EMBEDDING_DIM}")
    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def decode_change(raw: bytes | memoryview) -> tuple[bytes, int]:
    """A change log record: its operation and the entry's sequence number; raises CorruptRecord."""
    value = bytes(raw)
    if len(value) != 1 + _SEQ.size or value[:1] not in (OP_ADD, OP_REMOVE):
        raise CorruptRecord(f"{len(value)} bytes, operation {value[:1]!r}")
    return value[:1], int(_SEQ.unpack(value[1:])[0])


def decode_key(raw: bytes | memoryview) -> KeyRecord:
    """A stored API key record; raises CorruptRecord."""
    return decode_record(KeyRecord, raw)


def _key_record(raw: bytes | memoryview, key: bytes | memoryview, check_fields: bool = False) -> KeyRecord:
    try:
        record = decode_key(raw)
        if check_fields:
            check_key_fields(record, key)
        return record
    except CorruptRecord as error:
        raise corrupt(f"the record of API key {bytes(key).decode(errors='replace')!r}", error) from None


def checksum(data: bytes | memoryview) -> bytes:
    """8 bytes that change when any of the data does: its little-endian 64-bit words summed, with its
    tail and length. numpy sums about 4 GB/s on the development box, where zlib.crc32 managed 0.3-2.3."""
    words = len(data) // 8
    total = int(np.frombuffer(data, dtype="<u8", count=words).sum(dtype=np.uint64)) if words else 0
    tail = int.from_bytes(bytes(memoryview(data)[words * 8 :]), "little")
    return _SEQ.pack((total + tail + len(data)) & 0xFFFF_FFFF_FFFF_FFFF)


def _prefix(uid: int) -> bytes:
    return _UID.pack(uid)


def _iter_entries(
    txn: lmdb.Transaction,
    entries: lmdb._Database,
    vectors: lmdb._Database | None,
    uid: int,
    list_name: str,
    step: int = 1,
) -> Iterator[tuple[EntryRecord, np.ndarray | None]]:
    """A list's entries with their embeddings (none read when `vectors` is None) in sequence order;
    every `step`-th only (decoding the rest would cost most of a sampling pass). A record that does
    not decode raises DataLoss naming it."""
    prefix = _prefix(uid)
    cursor = txn.cursor(db=entries)
    vector_cursor = None if vectors is None else txn.cursor(db=vectors)
    if not cursor.set_range(prefix):
        return
    position = 0
    for key in cursor.iternext(keys=True, values=False):
        if not bytes(key).startswith(prefix):
            break
        if position % step == 0:
            vector = None if vector_cursor is None else vector_cursor.get(key)
            seq = _SEQ.unpack(key[4:])[0]
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
    _txn: lmdb.Transaction
    _entries: lmdb._Database
    _vectors: lmdb._Database

    @property
    def change(self) -> int:
        return self.record.next_change - 1

    def entries(self, step: int = 1) -> Iterator[tuple[EntryRecord, np.ndarray | None]]:
        return _iter_entries(self._txn, self._entries, self._vectors, self.record.uid, self.record.name, step)


class Store:
    """Lists and entries in one LMDB environment under the data folder."""

    def __init__(self, path: Path, map_size: int) -> None:
        _prepare_folder(path)
        self.path = path
        # One server per data folder: a second would keep its own indexes and miss the first's writes.
        self._lock_file = (path / LOCK_FILE).open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise FailedPrecondition(
                f"data folder {path} is in use by another Lookalike server; stop it or use another --data",
                "DATA_FOLDER_IN_USE",
            ) from None
        try:
            self.env = lmdb.open(str(path), map_size=map_size, max_dbs=32, max_readers=512, subdir=True)
        except lmdb.Error as error:
            self._lock_file.close()
            raise FailedPrecondition(
                f"data folder {path} cannot be opened: {error}", "DATA_FOLDER_UNREADABLE"
            ) from None
        self._disk = _DiskFullState(path / DATA_FILE)
        self._named_dbs: dict[bytes, lmdb._Database] = {}
        """Every named database opened, for the reserve check's count of pages in use."""
        self._meta = self.open_db(DB_META)
        self._lists = self.open_db(DB_LISTS)
        self._entries = self.open_db(DB_ENTRIES)
        self._entry_ids = self.open_db(DB_ENTRY_IDS)
        self._digests = self.open_db(DB_DIGESTS)
        self._md5 = self.open_db(DB_MD5)
        self._vectors = self.open_db(DB_VECTORS)
        self._changes = self.open_db(DB_CHANGES)
        self._snapshots = self.open_db(DB_SNAPSHOTS)
        self._snapshot_pieces = self.open_db(DB_SNAPSHOT_PIECES)
        self._snapshot_sums = self.open_db(DB_SNAPSHOT_SUMS)
        self._keys = self.open_db(DB_KEYS)
        self._audit_log = self.open_db(DB_AUDIT)
        self._thumbnails = self.open_db(DB_THUMBNAILS)
        try:
            self._check_format()
            self._check_small_records()
        except LookalikeError:
            self.close()
            raise

    def close(self) -> None:
        self.env.close()
        self._lock_file.close()

    def _check_format(self) -> None:
        with self._guard(), self._write() as txn:
            stored = txn.get(KEY_FORMAT_VERSION, db=self._meta)
            if stored == str(FORMAT_VERSION).encode():
                return  # nothing to write: a start on a full disk still serves reads
            if stored is not None and not bytes(stored).isdigit():
                raise corrupt("the meta record 'format_version'", f"{bytes(stored)[:20]!r}")
            if stored is None:  # a new folder: nothing to upgrade
                txn.put(KEY_FORMAT_VERSION, str(FORMAT_VERSION).encode(), db=self._meta)
            elif int(stored) in READABLE_FORMAT_VERSIONS:
                if int(stored) < FORMAT_UPGRADED_ON_OPEN:
                    txn.put(KEY_FORMAT_VERSION, str(FORMAT_UPGRADED_ON_OPEN).encode(), db=self._meta)
            else:
                raise FailedPrecondition(
                    f"data folder {self.path} holds format version {int(stored)}; this server reads "
                    f"version {FORMAT_VERSION}",
                    "DATA_FORMAT_VERSION",
                )

    def _check_small_records(self) -> None:
        """Read every meta counter, list and key record at start-up (a few kilobytes): a corrupt one stops the
        start with DATA_LOSS naming it. Entry records are checked when read: at 10M entries reading all
        would make a start take minutes."""
        with self.env.begin() as txn:
            for name in META_COUNTERS:
                value = txn.get(name, db=self._meta)
                if value is not None and not bytes(value).isdigit():
                    raise corrupt(f"the meta record {name.decode()!r}", f"{bytes(value)[:20]!r}")
            for key, raw in txn.cursor(db=self._lists):
                _list_record(raw, key, check_fields=True)
            for key, raw in txn.cursor(db=self._keys):
                _key_record(raw, key, check_fields=True)

    def _write(self) -> lmdb.Transaction:
        return self.env.begin(write=True)

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
        thumbnails: bool = False,
    ) -> ListRecord:
        validate_list_name(name)
        validate_thresholds(review_threshold, reject_threshold)
        validate_description(description)
        if kind not in LIST_KINDS:
            raise InvalidArgument(
                f"list kind {kind!r} is unknown; use one of {', '.join(LIST_KINDS)}", "LIST_KIND_UNKNOWN"
            )
        with self._guard(), self._write() as txn:
            if txn.get(_list_key(name), db=self._lists) is not None:
                raise AlreadyExists(f"list {name!r} already exists", "LIST_EXISTS")
            uid = int(txn.get(KEY_NEXT_LIST_UID, default=b"1", db=self._meta))
            txn.put(KEY_NEXT_LIST_UID, str(uid + 1).encode(), db=self._meta)
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
                thumbnails=thumbnails,
            )
            self._put_list(txn, record)
            self.record_audit(txn, actor, AUDIT_LIST_CREATE, name, detail=_settings(record))
        return record

    def _put_list(self, txn: lmdb.Transaction, record: ListRecord) -> None:
        txn.put(_list_key(record.name), json.dumps(asdict(record)).encode(), db=self._lists)

    def _get_list(self, txn: lmdb.Transaction, name: str) -> ListRecord:
        validate_list_name(name)  # before the lookup: LMDB refuses an empty key with its own error
        raw = txn.get(_list_key(name), db=self._lists)
        if raw is None:
            raise NotFound(f"list {name!r} does not exist", "LIST_NOT_FOUND")
        return _list_record(raw, _list_key(name))

    def get_list(self, name: str) -> ListRecord:
        with self.env.begin() as txn:
            return self._get_list(txn, name)

    def lists(self) -> list[ListRecord]:
        with self.env.begin() as txn:
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
        thumbnails: bool | None = None,
    ) -> ListRecord:
        """`cause` says what made the change when not a person's direct edit (e.g. "calibrate"); it is audited.
        Turning `thumbnails` off deletes the list's thumbnails in the same transaction."""
        with self._guard(), self._write() as txn:
            record = self._get_list(txn, name)
            record = replace(
                record,
                description=record.description if description is None else description,
                review_threshold=record.review_threshold if review_threshold is None else review_threshold,
                reject_threshold=record.reject_threshold if reject_threshold is None else reject_threshold,
                dihedral=record.dihedral if dihedral is None else dihedral,
                thumbnails=record.thumbnails if thumbnails is None else thumbnails,
            )
            validate_thresholds(record.review_threshold, record.reject_threshold)
            validate_description(record.description)
            if not record.thumbnails:
                _delete_prefix(txn.cursor(db=self._thumbnails), _prefix(record.uid))
            self._put_list(txn, record)
            detail = _settings(record) | ({"cause": cause} if cause else {})
            self.record_audit(txn, actor, AUDIT_LIST_UPDATE, name, detail=detail)
        return record

    def delete_list(self, name: str, actor: str = "") -> ListRecord:
        """Delete a list and everything stored under it, in one transaction."""
        with self._guard(), self._write() as txn:
            record = self._get_list(txn, name)
            txn.delete(_list_key(name), db=self._lists)
            self.record_audit(txn, actor, AUDIT_LIST_DELETE, name, detail={"entries_deleted": str(record.entry_count)})
            prefix = _prefix(record.uid)
            entry_dbs = (self._entries, self._entry_ids, self._digests, self._md5, self._vectors, self._thumbnails)
            for db in (*entry_dbs, self._changes, self._snapshots, self._snapshot_pieces, self._snapshot_sums):
                _delete_prefix(txn.cursor(db=db), prefix)
        return record

    # Entries -------------------------------------------------------------

    def add_entries(self, name: str, items: Sequence[NewEntry], actor: str = "") -> list[AddOutcome | Exception]:
        """Store several entries in one transaction: idempotent by `entry_key`, and by MD5.

        Each item gets its outcome or its own error (an id already used by other
        bytes); the good ones are committed together.
        """
        results: list[AddOutcome | Exception] = []
        audit: list[AuditRecord] = []
        with self._guard(), self._write() as txn:
            self._ensure_room_to_grow(txn)
            record = self._get_list(txn, name)
            prefix = _prefix(record.uid)
            seq, change, count = record.next_seq, record.next_change, record.entry_count
            pdq_only = record.pdq_only_count
            for item in items:
                key = prefix + entry_key(item.sha256, item.md5, item.pdq)
                existing = txn.get(key, db=self._digests)
                if existing is None and item.md5:
                    existing = txn.get(prefix + bytes.fromhex(item.md5), db=self._md5)
                if existing is not None:
                    entry = self._entry(txn, record.uid, _SEQ.unpack(existing)[0])
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
                seq_key = _seq_key(record.uid, seq)
                txn.put(seq_key, json.dumps(vars(entry)).encode(), db=self._entries)  # flat: no asdict deep copy
                txn.put(prefix + entry_id.encode(), _SEQ.pack(seq), db=self._entry_ids)
                txn.put(key, _SEQ.pack(seq), db=self._digests)
                if item.md5:
                    txn.put(prefix + bytes.fromhex(item.md5), _SEQ.pack(seq), db=self._md5)
                stored = None
                if item.embedding is not None:  # the index gets what a restart would read back
                    encoded = encode_embedding(item.embedding)
                    txn.put(seq_key, encoded, db=self._vectors)
                    stored = decode_embedding(encoded)
                if item.thumbnail is not None and record.thumbnails:
                    txn.put(seq_key, item.thumbnail, db=self._thumbnails)
                txn.put(_seq_key(record.uid, change), OP_ADD + _SEQ.pack(seq), db=self._changes)
                audit.append(AuditRecord(entry.created, actor, AUDIT_ENTRY_ADD, name, entry_id, _add_detail(entry)))
                results.append(AddOutcome(entry, duplicate=False, change=change, embedding=stored))
                seq, change, count = seq + 1, change + 1, count + 1
                if pdq_only is not None:
                    pdq_only += _is_pdq_only(entry)
            self._put_list(
                txn, replace(record, next_seq=seq, next_change=change, entry_count=count, pdq_only_count=pdq_only)
            )
            self._audit_all(txn, audit)
        return results

    def count_pdq_only(self, name: str, attempts: int = 3) -> bool:
        """Count the hash-only entries of a list stored before the count was kept; True once saved.

        The entries are read in a read transaction, so writers go on meanwhile (at 10M entries the
        scan takes about a minute), and the count is saved only if the list did not change in
        between. A list that keeps changing is counted at last under the write lock, once."""
        for _ in range(attempts):
            with self.env.begin() as txn:
                record = self._uncounted_list(txn, name)
                if record is None:
                    return False
                count = self._scan_pdq_only(txn, record)
            with self._guard(), self._write() as txn:
                now = self._uncounted_list(txn, name)
                if now is None:
                    return False
                if now.uid == record.uid and now.next_change == record.next_change:
                    self._put_list(txn, replace(now, pdq_only_count=count))
                    return True
        with self._guard(), self._write() as txn:
            record = self._uncounted_list(txn, name)
            if record is None:
                return False
            self._put_list(txn, replace(record, pdq_only_count=self._scan_pdq_only(txn, record)))
            return True

    def _uncounted_list(self, txn: lmdb.Transaction, name: str) -> ListRecord | None:
        try:
            record = self._get_list(txn, name)
        except NotFound:
            return None
        return record if record.pdq_only_count is None else None

    def _scan_pdq_only(self, txn: lmdb.Transaction, record: ListRecord) -> int:
        entries = _iter_entries(txn, self._entries, None, record.uid, record.name)
        return sum(_is_pdq_only(entry) for entry, _ in entries)

    def remove_entry(self, name: str, entry_id: str, actor: str = "") -> tuple[EntryRecord, int]:
        """Remove an entry; returns it and the change number of the removal."""
        with self._guard(), self._write() as txn:
            record = self._get_list(txn, name)
            prefix = _prefix(record.uid)
            raw_seq = txn.get(prefix + entry_id.encode(), db=self._entry_ids)
            if raw_seq is None:
                raise NotFound(f"entry {entry_id[:80]!r} is not on list {name!r}", "ENTRY_NOT_FOUND")
            seq = _SEQ.unpack(raw_seq)[0]
            entry = self._entry(txn, record.uid, seq)
            key = _seq_key(record.uid, seq)
            txn.delete(key, db=self._entries)
            txn.delete(key, db=self._vectors)
            txn.delete(key, db=self._thumbnails)
            txn.delete(prefix + entry_id.encode(), db=self._entry_ids)
            txn.delete(prefix + entry_key(entry.sha256, entry.md5, entry.pdq), db=self._digests)
            md5_key = prefix + bytes.fromhex(entry.md5) if entry.md5 else b""
            if md5_key and txn.get(md5_key, db=self._md5) == _SEQ.pack(seq):  # else it finds another entry
                txn.delete(md5_key, db=self._md5)
            change = record.next_change
            txn.put(_seq_key(record.uid, change), OP_REMOVE + _SEQ.pack(seq), db=self._changes)
            self.record_audit(txn, actor, AUDIT_ENTRY_REMOVE, name, entry_id, _add_detail(entry))
            pdq_only = record.pdq_only_count
            if pdq_only is not None:
                pdq_only -= _is_pdq_only(entry)
            self._put_list(
                txn,
                replace(record, next_change=change + 1, entry_count=record.entry_count - 1, pdq_only_count=pdq_only),
            )
        return entry, change

    def _entry(self, txn: lmdb.Transaction, uid: int, seq: int) -> EntryRecord:
        raw = txn.get(_seq_key(uid, seq), db=self._entries)
        if raw is None:
            raise NotFound(f"entry #{seq} is gone", "ENTRY_NOT_FOUND")
        try:
            return decode_entry(raw, seq)
        except CorruptRecord as error:
            raise self._corrupt_entry(txn, uid, seq, error) from None

    def _corrupt_entry(self, txn: lmdb.Transaction, uid: int, seq: int, error: CorruptRecord) -> DataLoss:
        return corrupt(f"entry seq {seq} of list {self._list_name(txn, uid)}", error)

    def _list_name(self, txn: lmdb.Transaction, uid: int) -> str:
        """The name of list `uid` (for messages; "#uid" when none decodes)."""
        for key, raw in txn.cursor(db=self._lists):
            try:
                if decode_list(raw).uid == uid:
                    return bytes(key).decode()
            except CorruptRecord:
                continue
        return f"#{uid}"

    def get_entry(self, name: str, entry_id: str) -> EntryRecord:
        with self.env.begin() as txn:
            record = self._get_list(txn, name)
            raw_seq = txn.get(_prefix(record.uid) + entry_id.encode(), db=self._entry_ids)
            if raw_seq is None:
                raise NotFound(f"entry {entry_id[:80]!r} is not on list {name!r}", "ENTRY_NOT_FOUND")
            return self._with_added_by(txn, name, self._entry(txn, record.uid, _SEQ.unpack(raw_seq)[0]))

    def thumbnail(self, name: str, entry_id: str) -> bytes | None:
        """The thumbnail kept with an entry (None: its list keeps none, or it has none); NOT_FOUND when the
        entry is not on the list."""
        with self.env.begin() as txn:
            record = self._get_list(txn, name)
            raw_seq = txn.get(_prefix(record.uid) + entry_id.encode(), db=self._entry_ids)
            if raw_seq is None:
                raise NotFound(f"entry {entry_id[:80]!r} is not on list {name!r}", "ENTRY_NOT_FOUND")
            found = txn.get(_seq_key(record.uid, _SEQ.unpack(raw_seq)[0]), db=self._thumbnails)
            return None if found is None else bytes(found)

    def entries_newest_first(
        self, name: str, before: int, limit: int, budget: int, keep: Callable[[EntryRecord], bool]
    ) -> EntryScan:
        """Entries of list `name` below sequence number `before`, newest first: up to `limit` that `keep`
        accepts, reading at most `budget` (one short read transaction, however large the list)."""
        kept: list[EntryRecord] = []
        resume = 0
        with self.env.begin() as txn:
            record = self._get_list(txn, name)
            prefix = _prefix(record.uid)
            cursor = txn.cursor(db=self._entries)
            found = cursor.prev() if cursor.set_range(_seq_key(record.uid, before)) else cursor.last()
            read = 0
            while found and bytes(cursor.key()).startswith(prefix):
                entry = self._entry(txn, record.uid, _SEQ.unpack(cursor.key()[len(prefix) :])[0])
                read += 1
                if keep(entry):
                    kept.append(entry)
                found = cursor.prev() and bytes(cursor.key()).startswith(prefix)
                if found and (len(kept) == limit or read == budget):
                    resume = entry.seq
                    break
            return EntryScan([self._with_added_by(txn, name, entry) for entry in kept], resume)

    def entries_named(self, name: str, text: str, seqs: Collection[int] = ()) -> list[EntryRecord]:
        """The entries of list `name` that `text` names exactly, newest first: by id, or as the hex of a
        SHA-256 or MD5 (looked up in `digests` and `md5`, never scanned), or at `seqs` (PDQ hashes, found
        by the caller in the index) when their PDQ is `text`."""
        hexed = text.lower()
        with self.env.begin() as txn:
            record = self._get_list(txn, name)
            prefix = _prefix(record.uid)
            keys = [(self._entry_ids, text.encode())] if len(text.encode()) <= ENTRY_ID_MAX else []
            if _is_hex(hexed, 64):
                keys += [(self._digests, bytes.fromhex(hexed)), (self._digests, entry_key("", "", hexed))]
            if _is_hex(hexed, 32):
                keys += [(self._md5, bytes.fromhex(hexed)), (self._digests, entry_key("", hexed))]
            found = {_SEQ.unpack(raw)[0] for db, key in keys if (raw := txn.get(prefix + key, db=db)) is not None}
            entries = []
            for seq in sorted(found | set(seqs), reverse=True):
                try:
                    entry = self._entry(txn, record.uid, seq)
                except NotFound:  # removed: its id or digest keys went with it, an index hit may linger
                    continue
                if entry.id == text or hexed in (entry.sha256, entry.md5, entry.pdq):
                    entries.append(self._with_added_by(txn, name, entry))
            return entries

    def _with_added_by(self, txn: lmdb.Transaction, name: str, entry: EntryRecord) -> EntryRecord:
        """The entry with the key that added it: kept with entries since it was, read from its audit record
        for those stored before (written with the entry, at its creation time or just after; "" if none)."""
        if entry.added_by is not None:
            return entry
        cursor = txn.cursor(db=self._audit_log)
        end = time_key(entry.created + AUDIT_LOOKUP_SECONDS)
        if cursor.set_range(time_key(entry.created)):
            for read, (key, raw) in enumerate(cursor):
                if bytes(key[:TIME_KEY_SIZE]) > end or read == AUDIT_LOOKUP_RECORDS:
                    break
                audit = json.loads(bytes(raw))
                if (audit["action"], audit["list"], audit["entry_id"]) == (AUDIT_ENTRY_ADD, name, entry.id):
                    return replace(entry, added_by=audit["key_id"])
        return replace(entry, added_by="")

    def entries_by_seq(self, uid: int, seqs: Sequence[int]) -> dict[int, EntryRecord]:
        """Entries still present, by sequence number (matching reads their meta)."""
        found: dict[int, EntryRecord] = {}
        with self.env.begin() as txn:
            for seq in seqs:
                raw = txn.get(_seq_key(uid, seq), db=self._entries)
                if raw is not None:
                    try:
                        found[seq] = decode_entry(raw, seq)
                    except CorruptRecord as error:
                        raise self._corrupt_entry(txn, uid, seq, error) from None
        return found

    def seq_for_digest(self, uid: int, sha256: bytes) -> int | None:
        with self.env.begin() as txn:
            raw = txn.get(_prefix(uid) + sha256, db=self._digests)
        return None if raw is None else int(_SEQ.unpack(raw)[0])

    def seq_for_md5(self, uid: int, md5: bytes) -> int | None:
        with self.env.begin() as txn:
            raw = txn.get(_prefix(uid) + md5, db=self._md5)
        return None if raw is None else int(_SEQ.unpack(raw)[0])

    def entries_page(
        self, uid: int, after_seq: int, limit: int, with_embeddings: bool
    ) -> list[tuple[EntryRecord, bytes | None]]:
        """Up to `limit` entries after sequence `after_seq`, with their embeddings' raw bytes when
        asked: an export reads page by page, so no transaction waits on a slow reader."""
        prefix = _prefix(uid)
        page: list[tuple[EntryRecord, bytes | None]] = []
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._entries)
            if not cursor.set_range(_seq_key(uid, after_seq + 1)):
                return page
            for key, raw in cursor:
                if not bytes(key).startswith(prefix) or len(page) >= limit:
                    break
                vector = txn.get(key, db=self._vectors) if with_embeddings else None
                seq = _SEQ.unpack(key[4:])[0]
                try:
                    embedding = None if vector is None else decode_embedding(vector).tobytes()
                    page.append((decode_entry(raw, seq), embedding))
                except CorruptRecord as error:
                    raise self._corrupt_entry(txn, uid, seq, error) from None
        return page

    def embeddings(self, uid: int, seqs: Sequence[int]) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        with self.env.begin() as txn:
            for seq in seqs:
                raw = txn.get(_seq_key(uid, seq), db=self._vectors)
                if raw is not None:
                    try:
                        found[seq] = decode_embedding(raw)
                    except CorruptRecord as error:
                        raise self._corrupt_entry(txn, uid, seq, error) from None
        return found

    def iter_entries(self, uid: int) -> Iterator[tuple[EntryRecord, np.ndarray | None]]:
        """Every entry of a list with its embedding, in sequence order."""
        with self.env.begin() as txn:
            yield from _iter_entries(txn, self._entries, self._vectors, uid, self._list_name(txn, uid))

    @contextmanager
    def list_view(self, uid: int) -> Iterator[ListView]:
        """One list as of one moment (a read transaction), to rebuild its index from."""
        with self.env.begin() as txn:
            lists = txn.cursor(db=self._lists)
            record = next((r for key, raw in lists if (r := _list_record(raw, key)).uid == uid), None)
            if record is None:
                raise NotFound(f"list #{uid} does not exist", "LIST_NOT_FOUND")
            yield ListView(record, txn, self._entries, self._vectors)

    # Change log and index snapshots ---------------------------------------

    def changes_after(self, uid: int, after: int) -> list[Change]:
        prefix = _prefix(uid)
        changes: list[Change] = []
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._changes)
            if cursor.set_range(_seq_key(uid, after + 1)):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    number = _SEQ.unpack(key[4:])[0]
                    try:
                        changes.append(Change(number, *decode_change(value)))
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
        prefix = _prefix(uid)
        blob_sum = checksum(blob)  # before the write lock
        piece_sums = {number: checksum(data) for number, data in (pieces or {}).items()}
        with self._guard(), self._write() as txn:
            if not any(_list_record(raw, key).uid == uid for key, raw in txn.cursor(db=self._lists)):
                return False
            self._ensure_room_to_grow(txn)
            txn.put(prefix, _SEQ.pack(change) + blob, db=self._snapshots)
            txn.put(prefix, _SEQ.pack(change) + blob_sum, db=self._snapshot_sums)
            for number, data in (pieces or {}).items():
                txn.put(prefix + _UID.pack(number), data, db=self._snapshot_pieces)
                txn.put(prefix + _UID.pack(number), piece_sums[number], db=self._snapshot_sums)
            cursor = txn.cursor(db=self._snapshot_pieces)
            kept = set(piece_numbers) | set(pieces or {})
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                if _UID.unpack(cursor.key()[4:])[0] in kept:
                    found = cursor.next()
                else:
                    txn.delete(cursor.key(), db=self._snapshot_sums)
                    found = cursor.delete()
            _delete_prefix(txn.cursor(db=self._changes), prefix, up_to=change)
        return True

    def snapshot_pieces(self, uid: int) -> Iterator[tuple[int, memoryview]]:
        """The stored pieces of a list's snapshot, each valid only until the next is read; raises
        CorruptRecord for one that does not match its checksum."""
        prefix = _prefix(uid)
        with self.env.begin(buffers=True) as txn:
            cursor = txn.cursor(db=self._snapshot_pieces)
            found = cursor.set_range(prefix)
            while found and bytes(cursor.key()).startswith(prefix):
                number = _UID.unpack(bytes(cursor.key()[4:]))[0]
                expected = txn.get(cursor.key(), db=self._snapshot_sums)
                if expected is not None and checksum(cursor.value()) != bytes(expected):
                    raise CorruptRecord(f"snapshot piece {number} does not match its checksum")
                yield number, cursor.value()
                found = cursor.next()

    def load_snapshot(self, uid: int) -> tuple[int, bytes] | None:
        """The stored snapshot's change and blob; raises CorruptRecord when too short to hold them, or
        not matching its checksum."""
        with self.env.begin() as txn:
            raw = txn.get(_prefix(uid), db=self._snapshots)
            summed = txn.get(_prefix(uid), db=self._snapshot_sums)
        if raw is None:
            return None
        if len(raw) < _SEQ.size:
            raise CorruptRecord(f"the snapshot record holds {len(raw)} bytes")
        blob = bytes(raw[_SEQ.size :])
        if summed is not None and summed[: _SEQ.size] == raw[: _SEQ.size] and summed[_SEQ.size :] != checksum(blob):
            raise CorruptRecord("the snapshot does not match its checksum")
        return int(_SEQ.unpack(raw[:8])[0]), blob

    def snapshot_change(self, uid: int) -> int:
        """The change the stored snapshot reflects (0 when none), without reading it whole."""
        with self.env.begin(buffers=True) as txn:
            raw = txn.get(_prefix(uid), db=self._snapshots)
            return 0 if raw is None or len(raw) < _SEQ.size else int(_SEQ.unpack(bytes(raw[:8]))[0])

    # API keys ----------------------------------------------------------------

    def keys(self) -> list[KeyRecord]:
        """Every key ever created, revoked ones included, in creation order."""
        with self.env.begin() as txn:
            records = [_key_record(raw, key) for key, raw in txn.cursor(db=self._keys)]
        return sorted(records, key=lambda record: (record.created, int(record.id.lstrip("k") or 0)))

    def create_key(self, name: str, role: str, lists: Sequence[str], digest: str, actor: str = "") -> KeyRecord:
        """Store a new key under the next id ("k1", "k2", ...); the caller validates role and lists."""
        with self._guard(), self._write() as txn:
            number = int(txn.get(KEY_NEXT_KEY_NUMBER, default=b"1", db=self._meta))
            txn.put(KEY_NEXT_KEY_NUMBER, str(number + 1).encode(), db=self._meta)
            record = KeyRecord(f"k{number}", name, role, list(lists), digest, time.time(), actor)
            txn.put(record.id.encode(), json.dumps(asdict(record)).encode(), db=self._keys)
            detail = {"key": record.id, "role": role, "lists": ",".join(lists), "name": name}
            self.record_audit(txn, actor, AUDIT_KEY_CREATE, detail=detail)
        return record

    def revoke_key(self, key_id: str, actor: str = "") -> KeyRecord:
        """Mark a key revoked (kept, so audit records still name it); revoking twice changes nothing."""
        with self._guard(), self._write() as txn:
            raw = txn.get(key_id.encode(), db=self._keys) if key_id else None
            if raw is None:
                raise NotFound(f"key {key_id!r} does not exist", "KEY_NOT_FOUND")
            record = _key_record(raw, key_id.encode())
            if record.revoked:
                return record
            record = replace(record, revoked=time.time())
            txn.put(record.id.encode(), json.dumps(asdict(record)).encode(), db=self._keys)
            self.record_audit(txn, actor, AUDIT_KEY_REVOKE, detail={"key": record.id, "role": record.role})
        return record

    # Audit log -----------------------------------------------------------------

    def record_audit(
        self,
        txn: lmdb.Transaction,
        actor: str,
        action: str,
        list_name: str = "",
        entry_id: str = "",
        detail: dict[str, str] | None = None,
    ) -> None:
        """Append one audit record inside the caller's transaction, with the change it describes."""
        self._audit_all(txn, [AuditRecord(time.time(), actor, action, list_name, entry_id, detail or {})])

    def _audit_all(self, txn: lmdb.Transaction, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        first = int(txn.get(KEY_NEXT_AUDIT_SEQ, default=b"1", db=self._meta))
        txn.put(KEY_NEXT_AUDIT_SEQ, str(first + len(records)).encode(), db=self._meta)
        for seq, record in enumerate(records, start=first):
            txn.put(_audit_key(record.time, seq), json.dumps(vars(record)).encode(), db=self._audit_log)

    def audit(
        self, list_name: str = "", since: float = 0.0, limit: int = 1000, page_token: str = ""
    ) -> tuple[list[AuditRecord], str]:
        """Audit records oldest first, from `since` (or after `page_token`), on one list or all.

        Returns up to `limit` records and the token of the next page ("" at the end).
        """

        def decode(raw: bytes) -> AuditRecord:
            return decode_record(AuditRecord, raw)

        return self.page(self._audit_log, 2 * _SEQ.size, decode, list_name, since, limit, page_token)

    def page[R: OnList](
        self,
        db: lmdb._Database,
        key_size: int,
        decode: Callable[[bytes], R],
        list_name: str = "",
        since: float = 0.0,
        limit: int = 1000,
        page_token: str = "",
    ) -> tuple[list[R], str]:
        """Records of a database keyed by `time_key` (keys of `key_size` bytes) oldest first, from `since`
        (or after `page_token`), on one list or all.

        Returns up to `limit` records and the token of the next page ("" at the end).
        """
        if page_token:
            try:
                last = bytes.fromhex(page_token)
            except ValueError:
                last = b""
            if len(last) != key_size:
                raise InvalidArgument(
                    f"page token {page_token[:40]!r} is not one this server gave", "PAGE_TOKEN_INVALID"
                )
            start = last + b"\0"  # just after the last record of the previous page
        else:
            start = time_key(since)
        records: list[R] = []
        page_end = ""
        with self.env.begin() as txn:
            cursor = txn.cursor(db=db)
            if not cursor.set_range(start):
                return records, ""
            for key, raw in cursor:
                try:
                    record = decode(bytes(raw))
                except (ValueError, TypeError) as error:  # CorruptRecord, or another module's decoder failing
                    name = next((n.decode() for n, d in self._named_dbs.items() if d == db), "?")
                    raise corrupt(f"record {bytes(key).hex()} of database {name!r}", error) from None
                if list_name and record.list != list_name:
                    continue
                if len(records) == limit:
                    return records, page_end
                records.append(record)
                page_end = bytes(key).hex()
        return records, ""

    def _guard(self) -> _WriteGuard:
        return _WriteGuard(self._disk)

    # For the modules that keep their own named databases here (checks, webhooks, feedback, flood guard) --

    def open_db(self, name: bytes) -> lmdb._Database:
        db = self._named_dbs[name] = self.env.open_db(name)
        return db

    def _ensure_room_to_grow(self, txn: lmdb.Transaction) -> None:
        """RESOURCE_EXHAUSTED once the map is within its reserve of full (see ADD_RESERVE_SHARE): the
        file has grown into the reserve, and its pages in use do not leave twice the reserve free
        (pages freed by removals are reused, so a folder emptied by removals takes adds again)."""
        info, page = self.env.info(), self.env.stat()["psize"]
        map_size = info["map_size"]
        reserve = max(ADD_RESERVE_MIN_BYTES, ADD_RESERVE_SHARE * map_size)
        if map_size - (info["last_pgno"] + 1) * page >= reserve:
            return
        in_use = sum(
            stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
            for stat in [txn.stat(), *(txn.stat(db) for db in self._named_dbs.values())]
        )
        if map_size - in_use * page < 2 * reserve:
            raise StorageFull(
                "the data folder's LMDB map is nearly full (a reserve is kept so that removals still work); "
                "restart the server with a larger --map-size"
            )

    @contextmanager
    def transaction(self, grows: bool = False) -> Iterator[lmdb.Transaction]:
        """A write transaction whose full map or disk becomes StorageFull (and is rolled back).
        One that `grows` the data is refused already within the reserve kept for removals."""
        with self._guard(), self._write() as txn:
            if grows:
                self._ensure_room_to_grow(txn)
            yield txn

    def upgrade(self, version: int, step: Callable[[lmdb.Transaction], None]) -> bool:
        """Bring a folder of an older format to `version`: `step` rewrites what changed, in the transaction
        that records the new version, so a crash midway leaves the old format whole. True when it ran."""
        with self.transaction() as txn:
            if int(txn.get(KEY_FORMAT_VERSION, default=b"0", db=self._meta)) >= version:
                return False
            step(txn)
            txn.put(KEY_FORMAT_VERSION, str(version).encode(), db=self._meta)
        return True

    def meta_value(self, key: bytes, make: Callable[[], bytes]) -> bytes:
        """A value in the meta database, made (and stored) by `make` the first time it is asked for."""
        with self.env.begin() as txn:
            found = txn.get(key, db=self._meta)
        if found is not None:
            return bytes(found)
        with self.transaction() as txn:
            raced = txn.get(key, db=self._meta)
            if raced is not None:
                return bytes(raced)
            made = make()
            txn.put(key, made, db=self._meta)
            return made


def _settings(record: ListRecord) -> dict[str, str]:
    return {
        "description": record.description,
        "review_threshold": f"{record.review_threshold:g}",
        "reject_threshold": f"{record.reject_threshold:g}",
        "model": record.model,
        "dihedral": str(record.dihedral).lower(),
        "kind": record.kind,
        "thumbnails": str(record.thumbnails).lower(),
    }


def _prepare_folder(path: Path) -> None:
    """Create the data folder if need be and make sure this process may write in it, by writing (as root,
    permissions say little: a read-only mount or an immutable folder refuse writes all the same)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FailedPrecondition(
            f"data folder {path} is a file, not a folder; pass a folder to --data", "DATA_FOLDER_NOT_A_FOLDER"
        ) from None
    except OSError as error:
        raise FailedPrecondition(
            f"data folder {path} cannot be created ({error.strerror}); create it or pass another --data",
            "DATA_FOLDER_NOT_WRITABLE",
        ) from None
    probe = path / WRITE_PROBE_FILE.format(pid=os.getpid())  # two servers starting at once do not collide
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
        for name in (LOCK_FILE, DATA_FILE, LMDB_LOCK_FILE):  # those there already must be writable too
            if (path / name).exists():
                os.close(os.open(path / name, os.O_WRONLY))
    except OSError as error:
        raise FailedPrecondition(
            f"data folder {path} is not writable ({error.strerror}: {error.filename}); give the server a "
            "folder it may write in",
            "DATA_FOLDER_NOT_WRITABLE",
        ) from None


def _refused_by_disk(error: lmdb.Error) -> bool:
    """Whether LMDB failed because the disk would not take the write (py-lmdb names only ENOSPC by class)."""
    text = str(error)
    return isinstance(error, lmdb.DiskError) or any(os.strerror(number) in text for number in DISK_FULL_ERRNOS)


class _DiskFullState:
    """Whether the disk refuses the store's writes; logged once when it starts and once when it ends.

    It ends when a write succeeds after the data file grew past its size at the refusal: writes that fit
    in pages freed meanwhile succeed on a full disk too, and would otherwise log an end and a start again
    on every write that does not fit."""

    def __init__(self, data_file: Path) -> None:
        self._data_file = data_file
        self._size_when_refused: int | None = None
        self._lock = threading.Lock()

    def _size(self) -> int:
        try:
            return self._data_file.stat().st_size
        except OSError:
            return 0

    def refused(self, error: lmdb.Error) -> StorageFull:
        with self._lock:
            if self._size_when_refused is None:
                self._size_when_refused = self._size()
                log.error(
                    "data folder %s: the disk refused a write (%s): it is full or the file reached a size limit; "
                    "writes get RESOURCE_EXHAUSTED (STORAGE_FULL) until space is freed, reads go on",
                    self._data_file.parent,
                    error,
                )
        return StorageFull(
            "the disk under the data folder is full (or its file reached a size limit); free space there: "
            "writes resume without a restart"
        )

    def committed(self) -> None:
        if self._size_when_refused is None:
            return
        with self._lock:
            if self._size_when_refused is not None and self._size() > self._size_when_refused:
                self._size_when_refused = None
                log.warning("data folder %s: the disk takes writes again", self._data_file.parent)


class _WriteGuard:
    """Turns a full LMDB map or disk into StorageFull (the write is rolled back)."""

    def __init__(self, disk: _DiskFullState) -> None:
        self.disk = disk

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if error is None:
            self.disk.committed()
        elif isinstance(error, lmdb.MapFullError):
            raise StorageFull(
                "the data folder's LMDB map is full; restart the server with a larger --map-size"
            ) from None
        elif isinstance(error, lmdb.Error) and _refused_by_disk(error):
            raise self.disk.refused(error) from None
