"""How the replicated records are laid out as bytes, and how a damaged one is told apart.

Records are JSON (settings, meta, hashes as hex) and raw bytes (embeddings as float16, index snapshots);
nothing is pickled. Hashes are bytes in the records the server works with: they are written as hex, as
format 3 has always kept them, and read back as bytes here. Decoders raise CorruptRecord saying what is
wrong; the callers name the record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from lookalike.index.list_index import EMBEDDING_DIM
from lookalike.server.hashes import MD5, PDQ, PHASH, SHA256, HashCodec
from lookalike.server.records import LIST_KINDS, AuditRecord, EntryRecord, KeyRecord, ListRecord
from lookalike.server.storage import schema
from lookalike.server.storage.errors import CorruptRecord

_ENTRY_HASHES: tuple[tuple[str, HashCodec], ...] = (("sha256", SHA256), ("pdq", PDQ), ("md5", MD5), ("phash", PHASH))


def json_object(raw: bytes | memoryview) -> dict[str, object]:
    """A stored JSON object; raises CorruptRecord."""
    try:
        fields = json.loads(bytes(raw))
    except ValueError as error:  # UnicodeDecodeError too
        raise CorruptRecord(f"not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise CorruptRecord("not a JSON object")
    return fields


def fields_into[R](cls: Callable[..., R], fields: dict[str, object]) -> R:
    """The record `cls` of these fields (their names checked, not their types); raises CorruptRecord."""
    try:
        return cls(**fields)
    except TypeError as error:  # a field missing or unknown
        raise CorruptRecord(f"its fields do not fit: {error}") from None


def decode_record[R](cls: Callable[..., R], raw: bytes | memoryview) -> R:
    """A stored JSON record of the dataclass `cls` (its field names checked, not their types); raises
    CorruptRecord."""
    return fields_into(cls, json_object(raw))


# Lists --------------------------------------------------------------------------------------------------


def encode_list(record: ListRecord) -> bytes:
    return json.dumps(asdict(record)).encode()


def decode_list(raw: bytes | memoryview) -> ListRecord:
    """A stored list record; raises CorruptRecord."""
    fields = json_object(raw)
    fields.setdefault("pdq_only_count", None)  # a list stored before the count was kept
    return fields_into(ListRecord, fields)


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
            ("keypoints", isinstance(record.keypoints, bool)),
        )
        if not right
    ]
    if wrong:
        raise CorruptRecord(f"bad {', '.join(wrong)}")


# Entries ------------------------------------------------------------------------------------------------


def entry_fields(entry: EntryRecord) -> dict[str, object]:
    """An entry as JSON fields, its hashes as hex (as entries are stored, and within stored checks)."""
    fields = dict(vars(entry))
    for name, codec in _ENTRY_HASHES:
        fields[name] = codec.format(fields[name])
    return fields


def entry_from_fields(fields: dict[str, object]) -> EntryRecord:
    """An entry from its JSON fields (`entry_fields`); raises CorruptRecord. Checking each hash's hex here
    (its cost is within the noise of decoding the JSON) keeps a bad one from failing later, in an index."""
    for name, codec in _ENTRY_HASHES:
        if name in fields:
            text = fields[name]
            value = codec.stored(text) if isinstance(text, str) else None
            if value is None:
                raise CorruptRecord("a hash is not hex of its length")
            fields[name] = value
    return fields_into(EntryRecord, fields)


def encode_entry(entry: EntryRecord) -> bytes:
    return json.dumps(entry_fields(entry)).encode()


def decode_entry(raw: bytes | memoryview, seq: int) -> EntryRecord:
    """A stored entry record (under sequence number `seq`); raises CorruptRecord."""
    entry = entry_from_fields(json_object(raw))
    if entry.seq != seq:
        raise CorruptRecord(f"it says seq {entry.seq!r}")
    return entry


def check_entry_fields(entry: EntryRecord) -> None:
    """What `decode_entry` leaves to the reader: the types of the fields that are not hashes."""
    wrong = [
        name
        for name, right in (
            ("id", isinstance(entry.id, str) and bool(entry.id)),
            ("pdq_quality", isinstance(entry.pdq_quality, int) and 0 <= entry.pdq_quality <= 100),
            ("model", isinstance(entry.model, str)),
            ("meta", isinstance(entry.meta, dict) and all(isinstance(v, str) for v in entry.meta.values())),
            ("created", isinstance(entry.created, int | float)),
        )
        if not right
    ]
    if wrong:
        raise CorruptRecord(f"bad {', '.join(wrong)}")


def decode_embedding(raw: bytes | memoryview) -> np.ndarray:
    """float32 from a stored embedding (`records.encode_embedding`): float16 since format 2, float32 before.
    Raises CorruptRecord for any other length."""
    if len(raw) == 4 * EMBEDDING_DIM:
        return np.frombuffer(raw, dtype="<f4")
    if len(raw) != 2 * EMBEDDING_DIM:
        raise CorruptRecord(f"its embedding holds {len(raw)} bytes, not {2 * EMBEDDING_DIM}")
    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def encode_logged_change(op: bytes, seq: int) -> bytes:
    return op + schema.SEQ.pack(seq)


def decode_logged_change(raw: bytes | memoryview) -> tuple[bytes, int]:
    """A change log record: its operation and the entry's sequence number; raises CorruptRecord."""
    value = bytes(raw)
    if len(value) != 1 + schema.SEQ.size or value[:1] not in (schema.OP_ADD, schema.OP_REMOVE):
        raise CorruptRecord(f"{len(value)} bytes, operation {value[:1]!r}")
    return value[:1], int(schema.SEQ.unpack(value[1:])[0])


# API keys and the audit log ---------------------------------------------------------------------------------


def encode_key(record: KeyRecord) -> bytes:
    return json.dumps(asdict(record) | {"digest": SHA256.format(record.digest)}).encode()


def decode_key(raw: bytes | memoryview) -> KeyRecord:
    """A stored API key record; raises CorruptRecord (a digest that is not hex is left for
    `check_key_fields` to name)."""
    fields = json_object(raw)
    digest = fields.get("digest")
    if isinstance(digest, str) and (value := SHA256.stored(digest)):
        fields["digest"] = value
    return fields_into(KeyRecord, fields)


def check_key_fields(record: KeyRecord, key: bytes | memoryview) -> None:
    """As `check_list_fields`, for an API key record."""
    wrong = [
        name
        for name, right in (
            ("id", record.id == bytes(key).decode(errors="replace")),
            ("name", isinstance(record.name, str)),
            ("role", isinstance(record.role, str)),
            ("lists", isinstance(record.lists, list) and all(isinstance(item, str) for item in record.lists)),
            ("digest", isinstance(record.digest, bytes) and len(record.digest) == SHA256.size),
            ("created", _number(record.created)),
            ("created_by", isinstance(record.created_by, str)),
            ("revoked", _number(record.revoked)),
        )
        if not right
    ]
    if wrong:
        raise CorruptRecord(f"bad {', '.join(wrong)}")


def encode_audit(record: AuditRecord) -> bytes:
    return json.dumps(vars(record)).encode()  # flat: no deep copy, as `asdict` would make


def decode_audit(raw: bytes | memoryview) -> AuditRecord:
    return decode_record(AuditRecord, raw)


# Index snapshots ------------------------------------------------------------------------------------------


def checksum(data: bytes | memoryview) -> bytes:
    """8 bytes that change when any of the data does: its little-endian 64-bit words summed, with its
    tail and length. numpy sums about 4 GB/s on the development box, where zlib.crc32 managed 0.3-2.3."""
    words = len(data) // 8
    total = int(np.frombuffer(data, dtype="<u8", count=words).sum(dtype=np.uint64)) if words else 0
    tail = int.from_bytes(bytes(memoryview(data)[words * 8 :]), "little")
    return schema.SEQ.pack((total + tail + len(data)) & 0xFFFF_FFFF_FFFF_FFFF)
