"""Every change that must reach every replica, as one record type, and its binary encoding.

A change is what one node accepted from a caller, with everything another node needs to apply it the same
way: ids and times are chosen by the accepting node and travel inside the record, fingerprints travel as
bytes (never the picture, never re-computed), and so do the thumbnails of lists that keep them.
`lookalike.server.writes.WritePath.apply` applies one; a single node calls it directly, cluster mode from the
change log.

Encoding (version 1): `VERSION KIND time actor body`, where

    u8        one byte; VERSION is 1 (a node refuses a record of a version it does not know)
    uvarint   LEB128, unsigned
    f64       IEEE 754 double, big-endian
    str       uvarint byte length, then UTF-8
    blob      uvarint byte length, then the bytes
    map       uvarint count, then (str key, str value) pairs, in order
    time      f64 unix seconds; actor: str, the id of the caller's API key ("" for the keyless caller)

    KIND  body
    1 ListCreated     name:str description:str review:f64 reject:f64 model:str dihedral:u8 kind:str
                      thumbnails:u8 [keypoints:u8] (absent, from a node before the setting: 1)
    2 ListUpdated     name:str present:u8 [description:str] [review:f64] [reject:f64] [dihedral:u8]
                      [thumbnails:u8] [keypoints:u8] cause:str
                      (present: bit 0 description, 1 review, 2 reject, 3 dihedral, 4 thumbnails, 5 keypoints)
    3 ListDeleted     name:str
    4 EntriesAdded    list:str model:str count:uvarint entry*
                      entry: id:str has:u8 [sha256:32] [md5:16] [pdq:32 quality:u8] [phash:8] [embedding:blob]
                      [thumbnail:blob] [keypoints:blob] meta:map
                      (has: bit 0 sha256, 1 md5, 2 pdq, 3 phash, 4 embedding, 5 thumbnail, 6 keypoints; an
                      embedding is float16 little-endian, as stored; a thumbnail a small WebP, a few kilobytes;
                      keypoints as `server/keypoints.py` encodes them, up to 18 KiB)
    5 EntryRemoved    list:str entry_id:str
    6 KeyCreated      name:str role:str lists:(uvarint count, str*) digest:32 (the SHA-256 of the secret)
    7 KeyRevoked      key_id:str
    8 EntryConfirmed  list:str entry_id:str detail:map (the audit detail: the accepting node's flood guard state)

No pickle, no JSON: hashes stay raw bytes and embeddings float16, so an entry with an embedding takes about
1.1 KiB (plus its keypoints' up to 18 KiB, and its thumbnail's few kilobytes on a list that keeps them) and a
hash-only entry about 100 bytes
plus its id and meta. A record must fit one NATS message
(1 MiB by default): `split_to_fit` cuts an EntriesAdded into several that each fit (a 1000-entry batch of
hash-only entries fits one; of pictures it takes about twenty), each applied in a transaction of its own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from lookalike.server.hashes import MD5, PDQ, PHASH, SHA256
from lookalike.server.records import LIST_KIND_DISALLOW, NewEntry

VERSION = 1
MESSAGE_LIMIT = 1 << 20
"""NATS's default max payload."""
RECORD_LIMIT = MESSAGE_LIMIT - 256
"""What a record may take of a message: the rest is left for its headers (the change log's HEADER_ROOM)."""

_F64 = struct.Struct(">d")


class MalformedChange(ValueError):
    """Bytes that do not decode as a change record of a version this server knows; the message says how."""


@dataclass(frozen=True, kw_only=True)
class _Change:
    time: float
    """Unix seconds, chosen by the node that accepted the change: the time every replica stores."""
    actor: str = ""
    """The id of the API key that made it ("" for the keyless loopback caller)."""


@dataclass(frozen=True, kw_only=True)
class ListCreated(_Change):
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    model: str
    dihedral: bool = True
    kind: str = LIST_KIND_DISALLOW
    thumbnails: bool = False
    keypoints: bool = True


@dataclass(frozen=True, kw_only=True)
class ListUpdated(_Change):
    """Settings to change (None: as they are); the merged thresholds are checked when it is applied."""

    name: str
    description: str | None = None
    review_threshold: float | None = None
    reject_threshold: float | None = None
    dihedral: bool | None = None
    thumbnails: bool | None = None
    """Turned off, the list's thumbnails are deleted as it is applied."""
    keypoints: bool | None = None
    """Turned off, the list's keypoints are deleted as it is applied."""
    cause: str = ""
    """What made the change when not a person's direct edit ("calibrate"); audited."""


@dataclass(frozen=True, kw_only=True)
class ListDeleted(_Change):
    name: str


@dataclass(frozen=True, kw_only=True)
class EntriesAdded(_Change):
    """Entries of pictures (fingerprinted by the accepting node) or of hashes (imported), for one list."""

    list: str
    model: str
    """The model the embeddings are of (the list's)."""
    entries: tuple[NewEntry, ...]


@dataclass(frozen=True, kw_only=True)
class EntryRemoved(_Change):
    list: str
    entry_id: str


@dataclass(frozen=True, kw_only=True)
class KeyCreated(_Change):
    """A new API key; its id ("k1", "k2", ...) is given when it is applied, the same on every replica."""

    name: str
    role: str
    lists: tuple[str, ...]
    digest: bytes
    """The SHA-256 of its secret (the secret itself never leaves the accepting node's reply)."""


@dataclass(frozen=True, kw_only=True)
class KeyRevoked(_Change):
    key_id: str


@dataclass(frozen=True, kw_only=True)
class EntryConfirmed(_Change):
    """An admin lifted an entry's flood guard (each node lifts its own, and takes its rate as usual)."""

    list: str
    entry_id: str
    detail: dict[str, str] = field(default_factory=dict)
    """What the accepting node's flood guard knew (guarded, since, recent matches), for the audit record."""


type Change = (
    ListCreated | ListUpdated | ListDeleted | EntriesAdded | EntryRemoved | KeyCreated | KeyRevoked | EntryConfirmed
)
KINDS: dict[type[_Change], int] = {
    ListCreated: 1,
    ListUpdated: 2,
    ListDeleted: 3,
    EntriesAdded: 4,
    EntryRemoved: 5,
    KeyCreated: 6,
    KeyRevoked: 7,
    EntryConfirmed: 8,
}
_BY_KIND = {kind: cls for cls, kind in KINDS.items()}
_HAS_SHA256, _HAS_MD5, _HAS_PDQ, _HAS_PHASH, _HAS_EMBEDDING, _HAS_THUMBNAIL, _HAS_KEYPOINTS = 1, 2, 4, 8, 16, 32, 64
_HAS_DESCRIPTION, _HAS_REVIEW, _HAS_REJECT, _HAS_DIHEDRAL, _HAS_THUMBNAILS, _HAS_KEYPOINTS_SETTING = 1, 2, 4, 8, 16, 32


# Encoding --------------------------------------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def u8(self, value: int) -> None:
        self.out.append(value)

    def uvarint(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"{value} is negative")
        while value >= 0x80:
            self.out.append(value & 0x7F | 0x80)
            value >>= 7
        self.out.append(value)

    def f64(self, value: float) -> None:
        self.out += _F64.pack(value)

    def blob(self, value: bytes) -> None:
        self.uvarint(len(value))
        self.out += value

    def text(self, value: str) -> None:
        self.blob(value.encode())

    def map(self, value: dict[str, str]) -> None:
        self.uvarint(len(value))
        for key, item in value.items():
            self.text(key)
            self.text(item)

    def fixed(self, value: bytes, size: int, what: str) -> None:
        if len(value) != size:
            raise ValueError(f"{what} of {len(value)} bytes, not {size}")
        self.out += value


def _entry(writer: _Writer, entry: NewEntry) -> None:
    has = (
        (_HAS_SHA256 if entry.sha256 else 0)
        | (_HAS_MD5 if entry.md5 else 0)
        | (_HAS_PDQ if entry.pdq else 0)
        | (_HAS_PHASH if entry.phash else 0)
        | (_HAS_EMBEDDING if entry.embedding else 0)
        | (_HAS_THUMBNAIL if entry.thumbnail else 0)
        | (_HAS_KEYPOINTS if entry.keypoints else 0)
    )
    writer.text(entry.id)
    writer.u8(has)
    if entry.sha256:
        writer.fixed(entry.sha256, SHA256.size, "a SHA-256")
    if entry.md5:
        writer.fixed(entry.md5, MD5.size, "an MD5")
    if entry.pdq:
        writer.fixed(entry.pdq, PDQ.size, "a PDQ hash")
        writer.u8(entry.pdq_quality)
    if entry.phash:
        writer.fixed(entry.phash, PHASH.size, "a pHash")
    if entry.embedding:
        writer.blob(entry.embedding)
    if entry.thumbnail:
        writer.blob(entry.thumbnail)
    if entry.keypoints:
        writer.blob(entry.keypoints)
    writer.map(entry.meta)


def _body(writer: _Writer, change: Change) -> None:
    match change:
        case ListCreated():
            writer.text(change.name)
            writer.text(change.description)
            writer.f64(change.review_threshold)
            writer.f64(change.reject_threshold)
            writer.text(change.model)
            writer.u8(change.dihedral)
            writer.text(change.kind)
            writer.u8(change.thumbnails)
            writer.u8(change.keypoints)
        case ListUpdated():
            writer.text(change.name)
            present = (
                (_HAS_DESCRIPTION if change.description is not None else 0)
                | (_HAS_REVIEW if change.review_threshold is not None else 0)
                | (_HAS_REJECT if change.reject_threshold is not None else 0)
                | (_HAS_DIHEDRAL if change.dihedral is not None else 0)
                | (_HAS_THUMBNAILS if change.thumbnails is not None else 0)
                | (_HAS_KEYPOINTS_SETTING if change.keypoints is not None else 0)
            )
            writer.u8(present)
            if change.description is not None:
                writer.text(change.description)
            if change.review_threshold is not None:
                writer.f64(change.review_threshold)
            if change.reject_threshold is not None:
                writer.f64(change.reject_threshold)
            if change.dihedral is not None:
                writer.u8(change.dihedral)
            if change.thumbnails is not None:
                writer.u8(change.thumbnails)
            if change.keypoints is not None:
                writer.u8(change.keypoints)
            writer.text(change.cause)
        case ListDeleted():
            writer.text(change.name)
        case EntriesAdded():
            writer.text(change.list)
            writer.text(change.model)
            writer.uvarint(len(change.entries))
            for entry in change.entries:
                _entry(writer, entry)
        case EntryRemoved():
            writer.text(change.list)
            writer.text(change.entry_id)
        case KeyCreated():
            writer.text(change.name)
            writer.text(change.role)
            writer.uvarint(len(change.lists))
            for name in change.lists:
                writer.text(name)
            writer.fixed(change.digest, SHA256.size, "a key digest")
        case KeyRevoked():
            writer.text(change.key_id)
        case EntryConfirmed():
            writer.text(change.list)
            writer.text(change.entry_id)
            writer.map(change.detail)


def _head(writer: _Writer, change: Change) -> None:
    writer.u8(VERSION)
    writer.u8(KINDS[type(change)])
    writer.f64(change.time)
    writer.text(change.actor)


def encode_change(change: Change) -> bytes:
    """The record's bytes (see the module's doc); ValueError for a field that cannot be encoded (a hash of
    the wrong length, a quality or flag outside a byte)."""
    writer = _Writer()
    _head(writer, change)
    _body(writer, change)
    return bytes(writer.out)


# Decoding --------------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise MalformedChange(f"it ends at byte {len(self.data)}, {size} bytes wanted at {self.at}")
        value = bytes(self.data[self.at : self.at + size])
        self.at += size
        return value

    def u8(self) -> int:
        return self.take(1)[0]

    def flag(self) -> bool:
        value = self.u8()
        if value > 1:
            raise MalformedChange(f"a flag of {value} at byte {self.at - 1}")
        return bool(value)

    def uvarint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise MalformedChange(f"a number longer than 64 bits at byte {self.at}")

    def f64(self) -> float:
        return float(_F64.unpack(self.take(_F64.size))[0])

    def blob(self) -> bytes:
        return self.take(self.uvarint())

    def text(self) -> str:
        at = self.at
        try:
            return self.blob().decode()
        except UnicodeDecodeError:
            raise MalformedChange(f"text at byte {at} is not UTF-8") from None

    def map(self) -> dict[str, str]:
        return {self.text(): self.text() for _ in range(self.uvarint())}


def _read_entry(reader: _Reader) -> NewEntry:
    entry_id = reader.text()
    has = reader.u8()
    if has >= 2 * _HAS_KEYPOINTS:
        raise MalformedChange(f"entry {entry_id[:40]!r} has unknown parts ({has:#x})")
    sha256 = reader.take(SHA256.size) if has & _HAS_SHA256 else b""
    md5 = reader.take(MD5.size) if has & _HAS_MD5 else b""
    pdq, quality = (reader.take(PDQ.size), reader.u8()) if has & _HAS_PDQ else (b"", 0)
    phash = reader.take(PHASH.size) if has & _HAS_PHASH else b""
    embedding = reader.blob() if has & _HAS_EMBEDDING else b""
    thumbnail = reader.blob() if has & _HAS_THUMBNAIL else b""
    keypoints = reader.blob() if has & _HAS_KEYPOINTS else b""
    return NewEntry(entry_id, sha256, pdq, quality, phash, embedding, reader.map(), md5, thumbnail, keypoints)


def _read_body(reader: _Reader, cls: type[_Change], time: float, actor: str) -> Change:
    if cls is ListCreated:
        return ListCreated(
            time=time,
            actor=actor,
            name=reader.text(),
            description=reader.text(),
            review_threshold=reader.f64(),
            reject_threshold=reader.f64(),
            model=reader.text(),
            dihedral=reader.flag(),
            kind=reader.text(),
            thumbnails=reader.flag(),
            keypoints=reader.flag() if reader.at < len(reader.data) else True,
        )
    if cls is ListUpdated:
        name, present = reader.text(), reader.u8()
        return ListUpdated(
            time=time,
            actor=actor,
            name=name,
            description=reader.text() if present & _HAS_DESCRIPTION else None,
            review_threshold=reader.f64() if present & _HAS_REVIEW else None,
            reject_threshold=reader.f64() if present & _HAS_REJECT else None,
            dihedral=reader.flag() if present & _HAS_DIHEDRAL else None,
            thumbnails=reader.flag() if present & _HAS_THUMBNAILS else None,
            keypoints=reader.flag() if present & _HAS_KEYPOINTS_SETTING else None,
            cause=reader.text(),
        )
    if cls is ListDeleted:
        return ListDeleted(time=time, actor=actor, name=reader.text())
    if cls is EntriesAdded:
        list_name, model = reader.text(), reader.text()
        entries = tuple(_read_entry(reader) for _ in range(reader.uvarint()))
        return EntriesAdded(time=time, actor=actor, list=list_name, model=model, entries=entries)
    if cls is EntryRemoved:
        return EntryRemoved(time=time, actor=actor, list=reader.text(), entry_id=reader.text())
    if cls is KeyCreated:
        name, role = reader.text(), reader.text()
        lists = tuple(reader.text() for _ in range(reader.uvarint()))
        return KeyCreated(time=time, actor=actor, name=name, role=role, lists=lists, digest=reader.take(SHA256.size))
    if cls is KeyRevoked:
        return KeyRevoked(time=time, actor=actor, key_id=reader.text())
    return EntryConfirmed(time=time, actor=actor, list=reader.text(), entry_id=reader.text(), detail=reader.map())


def decode_change(data: bytes) -> Change:
    """The change `encode_change` wrote; MalformedChange for anything else (another version, a kind this
    server does not know, bytes cut short or left over)."""
    reader = _Reader(data)
    version = reader.u8()
    if version != VERSION:
        raise MalformedChange(f"record version {version}; this server reads version {VERSION}")
    kind = reader.u8()
    cls = _BY_KIND.get(kind)
    if cls is None:
        raise MalformedChange(f"unknown kind {kind}")
    change = _read_body(reader, cls, reader.f64(), reader.text())
    if reader.at != len(reader.data):
        raise MalformedChange(f"{len(reader.data) - reader.at} bytes left over after the record")
    return change


# Fitting messages ------------------------------------------------------------------------------------------


def split_to_fit(change: Change, limit: int = RECORD_LIMIT) -> list[Change]:
    """`change` as records of at most `limit` bytes encoded: itself, or an EntriesAdded cut into runs of its
    entries, in order (each is applied in a transaction of its own). ValueError for a change that cannot
    fit (no entry can be that large within the limits on ids and meta)."""
    if not isinstance(change, EntriesAdded):
        size = len(encode_change(change))
        if size > limit:
            raise ValueError(f"a {type(change).__name__} of {size} bytes does not fit {limit}")
        return [change]
    head = len(encode_change(replace(change, entries=())))
    pieces: list[Change] = []
    run: list[NewEntry] = []
    used = head
    for entry, size in zip(change.entries, _entry_sizes(change.entries), strict=True):
        if head + size + _COUNT_ROOM > limit:
            raise ValueError(f"entry {entry.id[:40]!r} takes {size} bytes encoded; a record may take {limit}")
        if run and used + size + _COUNT_ROOM > limit:
            pieces.append(replace(change, entries=tuple(run)))
            run, used = [], head
        run.append(entry)
        used += size
    if run or not pieces:
        pieces.append(replace(change, entries=tuple(run)))
    return pieces


_COUNT_ROOM = 4
"""Bytes the entry count may take beyond the one an empty record holds."""


def _entry_sizes(entries: tuple[NewEntry, ...]) -> Iterator[int]:
    for entry in entries:
        writer = _Writer()
        _entry(writer, entry)
        yield len(writer.out)
