"""Every name the data folder holds: its files, every LMDB database, the meta keys, the key layouts, the format.

Nothing outside `lookalike.server.storage` names a database or lays out a key (the stored checks' ledger holds
`owned_key`s, made here, as the identity of the checks it has in hand); a name here is a persisted name
(renaming one breaks stored data). Databases are either replicated (the same bytes on every node that applied
the same changes: lists, entries, their thumbnails and what finds them, keys, the audit log) or node-local (what
one node keeps for itself: index snapshots and the change log they prune, stored checks and their decision index
and hourly counts, webhooks, feedback, flood guard).
"""

from __future__ import annotations

import struct

FORMAT_VERSION = 3
"""Bumped whenever a stored layout changes: 2 stores embeddings as float16 (1 stored float32); 3 keys stored
checks and their webhooks by owner and id (2 by id alone)."""
READABLE_FORMAT_VERSIONS = (1, 2, 3)
"""Older folders this server reads (and upgrades in place, so an older server refuses them)."""
FORMAT_FLOAT16_EMBEDDINGS = 2
"""Reached by opening a format 1 folder, with nothing rewritten: float32 embeddings are read beside float16 ones."""
FORMAT_CHECKS_BY_OWNER = 3
"""The format that keys stored checks by `owned_key(owner, id)`; format 2 keyed them by id alone. Opening an
older folder rekeys them (`storage.checks.upgrade_to_checks_by_owner`), so opening brings any readable folder
to FORMAT_VERSION."""

LOCK_FILE = "lookalike.lock"
DATA_FILE = "data.mdb"
LMDB_LOCK_FILE = "lock.mdb"
WRITE_PROBE_FILE = ".lookalike-write-probe-{pid}"
MAX_DATABASES = 64
"""LMDB's `max_dbs`: every database below (25), the format 2 ones an upgrade reads (5), and room to grow."""

# Replicated databases --------------------------------------------------------------------------------------

DB_META = b"meta"
"""Format version, counters and the applied sequence (replicated); the webhook secret (node-local)."""
DB_LISTS = b"lists"
"""List name → list record (JSON)."""
DB_ENTRIES = b"entries"
"""`seq_key(uid, seq)` → entry record (JSON; its hashes as hex)."""
DB_ENTRY_IDS = b"entry_ids"
"""`list_prefix(uid)` + entry id → seq."""
DB_DIGESTS = b"digests"
"""`list_prefix(uid)` + `entry_key(...)` → seq: what makes an entry the same entry."""
DB_MD5 = b"md5"
"""`list_prefix(uid)` + MD5 → seq, so an MD5 given alone finds the entry that has it."""
DB_VECTORS = b"vectors"
"""`seq_key(uid, seq)` → embedding (float16 little-endian; float32 before format 2)."""
DB_THUMBNAILS = b"thumbnails"
"""`seq_key(uid, seq)` → a small WebP of the entry's picture, for lists that keep them (`ListRecord.thumbnails`):
made by the node that fingerprinted the picture and carried to the others in its `EntriesAdded`; deleted with
the entry, the list, and when the list's setting is turned off."""
DB_KEYPOINTS = b"keypoints"
"""`seq_key(uid, seq)` → the entry picture's ORB keypoints (`server/keypoints.py`), read only for the few
candidates of a check that its embedding leaves unsure; made by the node that fingerprinted the picture and
carried in its `EntriesAdded`; deleted with the entry and the list. Entries added by hashes have none."""
DB_KEYS = b"keys"
"""Key id → API key record (JSON; the SHA-256 of its secret as hex, never the secret)."""
DB_AUDIT = b"audit"
"""`audit_key(time, seq)` → audit record (JSON)."""

# Node-local databases --------------------------------------------------------------------------------------

DB_CHANGES = b"changes"
"""`seq_key(uid, change)` → op + entry seq: each list's changes since its index snapshot, replayed at start-up
(written with every replicated change; pruned by each node's own snapshots)."""
DB_SNAPSHOTS = b"snapshots"
"""`list_prefix(uid)` → change + index snapshot blob."""
DB_SNAPSHOT_PIECES = b"snapshot_pieces"
"""`piece_key(uid, number)` → a piece of a large index's snapshot."""
DB_SNAPSHOT_SUMS = b"snapshot_sums"
"""Checksums of snapshots (keyed as in `snapshots`, valued change + sum) and of their pieces (keyed as in
`snapshot_pieces`): a snapshot's bytes are loaded into the index as they are, so damage would give wrong
distances and scores instead of an error. Snapshots saved before sums were kept load unchecked."""
DB_CHECKS = b"checks_by_owner"
"""`owned_key(owner, id)` → stored check (JSON)."""
DB_CHECK_IMAGES = b"check_images_by_owner"
"""`owned_key(owner, id)` → a pending deferred check's image bytes."""
DB_CHECK_EXPIRY = b"check_expiry_by_owner"
"""`expiry_key(expires, owned_key)` → nothing: stored checks by the time their retention ends."""
DB_CHECK_PENDING = b"check_pending_by_owner"
"""The keys of pending checks (values empty), so a start finds them without reading every stored check: written
with the check when deferred, deleted in the transaction that finishes it (a pending check has no expiry, so
the sweep never deletes one)."""
DB_OUTBOX = b"webhook_outbox_by_owner"
"""`owned_key(owner, check id)` → webhook delivery (JSON)."""
DB_CHECK_DECISIONS = b"check_decisions"
"""Finished stored checks by decision and completion time (keys laid out in `storage.check_index`; values empty)."""
DB_CHECK_COUNTS = b"check_counts"
"""`counts_key(hour, list uid)` → `CHECK_COUNTS`: checks per clock hour by decision (list uid 0: every check)."""
DB_FEEDBACK = b"feedback"
"""`time_key(time)` + FEEDBACK_TIE_BREAKER_SIZE random bytes → feedback record (JSON)."""
DB_GUARDS = b"flood_guards"
"""`FLOOD_KEY` (list uid, entry seq) → flood guard (JSON)."""
DB_RATES = b"flood_rates"
"""`FLOOD_KEY` (list uid, entry seq) → `FLOOD_RATE` (short count, long count, updated)."""

DB_CHECKS_BY_ID = b"checks"
DB_CHECK_IMAGES_BY_ID = b"check_images"
DB_CHECK_EXPIRY_BY_ID = b"check_expiry"
"""Format 2's expiry keys: the time, then the check id."""
DB_CHECK_PENDING_BY_ID = b"check_pending"
DB_OUTBOX_BY_ID = b"webhook_outbox"
FORMAT_2_DATABASES = {
    DB_CHECKS_BY_ID: DB_CHECKS,
    DB_CHECK_IMAGES_BY_ID: DB_CHECK_IMAGES,
    DB_CHECK_EXPIRY_BY_ID: DB_CHECK_EXPIRY,
    DB_CHECK_PENDING_BY_ID: DB_CHECK_PENDING,
    DB_OUTBOX_BY_ID: DB_OUTBOX,
}
"""Format 2's databases, keyed by check id alone, and those the upgrade to format 3 moves them to (then drops
them)."""

REPLICATED_DATABASES = (
    DB_META,
    DB_LISTS,
    DB_ENTRIES,
    DB_ENTRY_IDS,
    DB_DIGESTS,
    DB_MD5,
    DB_VECTORS,
    DB_THUMBNAILS,
    DB_KEYPOINTS,
    DB_KEYS,
    DB_AUDIT,
)
NODE_LOCAL_DATABASES = (
    DB_CHANGES,
    DB_SNAPSHOTS,
    DB_SNAPSHOT_PIECES,
    DB_SNAPSHOT_SUMS,
    DB_CHECKS,
    DB_CHECK_IMAGES,
    DB_CHECK_EXPIRY,
    DB_CHECK_PENDING,
    DB_CHECK_DECISIONS,
    DB_CHECK_COUNTS,
    DB_OUTBOX,
    DB_FEEDBACK,
    DB_GUARDS,
    DB_RATES,
)
DATABASES = REPLICATED_DATABASES + NODE_LOCAL_DATABASES
"""Every database a server opens (and so creates in a new folder)."""

# Meta keys ----------------------------------------------------------------------------------------------

KEY_FORMAT_VERSION = b"format_version"
KEY_NEXT_LIST_UID = b"next_list_uid"
KEY_NEXT_KEY_NUMBER = b"next_key_number"
KEY_NEXT_AUDIT_SEQ = b"next_audit_seq"
KEY_APPLIED_SEQUENCE = b"applied_sequence"
"""The sequence number of the last change committed, written in that change's transaction: a change at or
below it was applied already (single node: a local count; cluster mode: the change log's sequence)."""
KEY_WEBHOOK_SECRET = b"webhook_secret"
"""Node-local: the secret this server signs webhooks with."""
KEY_CHECK_DECISIONS_INDEXED = b"check_decisions_indexed"
"""Node-local: set once the checks a folder stored before `check_decisions` existed have been indexed."""
META_COUNTERS = (KEY_NEXT_LIST_UID, KEY_NEXT_KEY_NUMBER, KEY_NEXT_AUDIT_SEQ, KEY_APPLIED_SEQUENCE)
"""Meta values that are decimal numbers (ASCII digits)."""
NODE_LOCAL_META_KEYS = (KEY_WEBHOOK_SECRET, KEY_CHECK_DECISIONS_INDEXED)

# Key layouts --------------------------------------------------------------------------------------------

UID = struct.Struct(">I")
SEQ = struct.Struct(">Q")
TIME_KEY_SIZE = SEQ.size
SEQ_KEY_SIZE = UID.size + SEQ.size
OP_ADD = b"A"
OP_REMOVE = b"R"
"""A change log record: one of these, then the entry's seq."""
FLOOD_KEY = struct.Struct(">IQ")
"""List uid, entry seq."""
FLOOD_RATE = struct.Struct(">ddd")
"""Short count, long count, updated (unix seconds)."""
CHECK_COUNTS = struct.Struct(">QQQ")
"""An hour's checks by decision: accept, review, reject."""
CHECK_COUNTS_KEY_SIZE = TIME_KEY_SIZE + UID.size
FEEDBACK_TIE_BREAKER_SIZE = 8
"""Random bytes after the time in a feedback record's key, so records sent at the same microsecond are all kept."""


def list_prefix(uid: int) -> bytes:
    """What every key of a list's records starts with."""
    return UID.pack(uid)


def seq_key(uid: int, seq: int) -> bytes:
    """An entry's (or a change's) key: the list, then the number, so a list's records sort together, in order."""
    return UID.pack(uid) + SEQ.pack(seq)


def split_seq_key(key: bytes | memoryview) -> tuple[int, int]:
    """(uid, number) of a `seq_key`."""
    return int(UID.unpack(key[: UID.size])[0]), int(SEQ.unpack(key[UID.size : SEQ_KEY_SIZE])[0])


def piece_key(uid: int, number: int) -> bytes:
    return UID.pack(uid) + UID.pack(number)


def list_key(name: str) -> bytes:
    return name.encode()


def time_key(when: float) -> bytes:
    """A time as a key prefix (TIME_KEY_SIZE bytes, big-endian µs, never below 0): keys sort by time."""
    return SEQ.pack(max(0, int(when * 1_000_000)))


def audit_key(when: float, seq: int) -> bytes:
    """Time (µs) then a counter: `since` is a range start, and equal times keep their order."""
    return time_key(when) + SEQ.pack(seq)


def owned_key(owner: str, name: str) -> bytes:
    """The key of a record that belongs to an API key (a stored check): each key's names are its own.
    Owner (a key id, "" for the keyless caller), NUL, then the name (printable, so never NUL)."""
    return owner.encode() + b"\0" + name.encode()


def split_owned_key(key: bytes) -> tuple[str, str]:
    """(owner, name) of an `owned_key`."""
    owner, _, name = key.partition(b"\0")
    return owner.decode(), name.decode()


def counts_key(hour: int, uid: int) -> bytes:
    """An hourly check count's key: the hour's start, then the list uid (0: every check)."""
    return time_key(hour) + UID.pack(uid)


def expiry_key(expires: float, key: bytes) -> bytes:
    """A stored check's expiry record: when its retention ends, then its `owned_key`."""
    return time_key(expires) + key
