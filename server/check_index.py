"""Stored checks by decision, newest first, and checks counted per hour by decision: kept by the check
ledger in the transactions that write results, so the dashboard's review queue and charts read a few
keys instead of every stored check.

`check_decisions` holds two keys per finished check (values empty): one in the family of every key's
checks, `A`, decision, completion time, `owned_key(owner, id)`; one in its owner's family, `O`, owner,
NUL, decision, completion time, id. Each family reads newest first by walking its range backwards.
`check_counts` holds one record per clock hour and list (list uid 0: every check): three counters,
accept, review and reject, big-endian. A check counts once on the overall record, by its decision, and
once on each list it covered, by the decision that list gave on its own (`CheckResult.list_decisions`).
Counts outlive the checks (a check replaced or expired still happened) and are pruned after
`kept_seconds`. A folder whose checks were stored before this index existed gets its stored checks
indexed once at start-up (`KEY_INDEXED`); their counts were never kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import lmdb

from lookalike.client.errors import InvalidArgument
from lookalike.server.store import DB_META, TIME_KEY_SIZE, Store, owned_key, time_key

DB_CHECK_DECISIONS = b"check_decisions"
DB_CHECK_COUNTS = b"check_counts"
KEY_INDEXED = b"check_decisions_indexed"
"""Meta record set once the stored checks of a folder from before the index have been indexed."""
ACCEPT, REVIEW, REJECT = "accept", "review", "reject"
DECISION_CODES = {ACCEPT: b"a", REVIEW: b"v", REJECT: b"r"}
EVERY_KEY = b"A"
BY_OWNER = b"O"
ALL_CHECKS = 0
"""The list uid under which every check is counted (list uids start at 1)."""
HOUR = 3600
_UID = struct.Struct(">I")
_COUNTS = struct.Struct(">QQQ")
COUNTS_KEY_SIZE = TIME_KEY_SIZE + _UID.size


@dataclass(frozen=True)
class DecisionCounts:
    accept: int = 0
    review: int = 0
    reject: int = 0

    @property
    def total(self) -> int:
        return self.accept + self.review + self.reject

    def __add__(self, other: DecisionCounts) -> DecisionCounts:
        return DecisionCounts(self.accept + other.accept, self.review + other.review, self.reject + other.reject)


@dataclass(frozen=True)
class HourCounts:
    start: float
    """Unix seconds of the hour's start."""
    counts: DecisionCounts


@dataclass(frozen=True)
class IndexedCheck:
    """What a finished check is indexed by."""

    owner: str
    id: str
    decision: str
    completed: float


def hour_of(when: float) -> int:
    """The start of the clock hour `when` falls in (unix seconds)."""
    return int(when // HOUR * HOUR)


def index_keys(check: IndexedCheck) -> list[bytes]:
    code = DECISION_CODES[check.decision]
    when = time_key(check.completed)
    return [
        EVERY_KEY + code + when + owned_key(check.owner, check.id),
        BY_OWNER + check.owner.encode() + b"\0" + code + when + check.id.encode(),
    ]


def indexed_from_json(raw: bytes | memoryview) -> IndexedCheck | None:
    """What a stored check (its JSON) is indexed by; None when it is not finished with a decision (or does
    not decode: `lookalike verify` reports that)."""
    try:
        record = json.loads(bytes(raw))
        result = record.get("result") or {}
        decision = result.get("decision")
        if record.get("status") != "done" or decision not in DECISION_CODES:
            return None
        return IndexedCheck(str(record["owner"]), str(record["id"]), decision, float(record["completed"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _family(decision: str, owner: str | None) -> bytes:
    code = DECISION_CODES[decision]
    return EVERY_KEY + code if owner is None else BY_OWNER + owner.encode() + b"\0" + code


def _owned_key_of(family: bytes, key: bytes, owner: str | None) -> bytes:
    """The stored check an index key names (`owned_key`)."""
    rest = key[len(family) + TIME_KEY_SIZE :]
    return rest if owner is None else owned_key(owner, rest.decode())


def _token(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def _after_token(token: str, family: bytes) -> bytes:
    try:
        key = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if not key.startswith(family) or len(key) <= len(family) + TIME_KEY_SIZE:
        raise InvalidArgument(
            f"page token {token[:40]!r} is not one this server gave for this decision and owner: ask the first "
            "page again without one",
            "PAGE_TOKEN_INVALID",
        )
    return key


class CheckIndex:
    """The decision index and hourly counts of one store (see the module's doc)."""

    def __init__(self, store: Store, kept_seconds: float) -> None:
        self.store = store
        self.kept_seconds = kept_seconds
        self._decisions = store.open_db(DB_CHECK_DECISIONS)
        self._counts = store.open_db(DB_CHECK_COUNTS)
        self._meta = store.open_db(DB_META)

    # Writing, in the ledger's transactions ----------------------------------------------------------

    def add(self, txn: lmdb.Transaction, check: IndexedCheck) -> None:
        for key in index_keys(check):
            txn.put(key, b"", db=self._decisions)

    def forget(self, txn: lmdb.Transaction, check: IndexedCheck) -> None:
        for key in index_keys(check):
            txn.delete(key, db=self._decisions)

    def count(self, txn: lmdb.Transaction, results: Iterable[tuple[float, str, dict[int, str]]]) -> None:
        """Count finished checks, each given as (when, its decision, the decision of each list uid it covered),
        summed first so that a batch writes each hour's record of a list once."""
        added: dict[tuple[int, int], Counter[str]] = {}
        for when, decision, lists in results:
            hour = hour_of(when)
            for uid, counted in ((ALL_CHECKS, decision), *lists.items()):
                added.setdefault((hour, uid), Counter())[counted] += 1
        for (hour, uid), more in added.items():
            key = time_key(hour) + _UID.pack(uid)
            raw = txn.get(key, db=self._counts)
            accept, review, reject = _COUNTS.unpack(raw) if raw is not None and len(raw) == _COUNTS.size else (0, 0, 0)
            value = _COUNTS.pack(accept + more[ACCEPT], review + more[REVIEW], reject + more[REJECT])
            txn.put(key, value, db=self._counts)

    def prune(self, txn: lmdb.Transaction, now: float) -> int:
        """Delete hourly counts older than `kept_seconds`; returns how many."""
        end = time_key(hour_of(now - self.kept_seconds))
        cursor = txn.cursor(db=self._counts)
        deleted = 0
        if cursor.first():
            while bytes(cursor.key()[:TIME_KEY_SIZE]) < end:
                deleted += 1
                if not cursor.delete():
                    break
        return deleted

    def indexed_already(self) -> bool:
        with self.store.env.begin() as txn:
            return txn.get(KEY_INDEXED, db=self._meta) is not None

    def index_stored(self, txn: lmdb.Transaction, checks: lmdb._Database) -> int:
        """Index every finished stored check, once per folder (checks stored before the index existed)."""
        if txn.get(KEY_INDEXED, db=self._meta) is not None:
            return 0
        indexed = 0
        for _, raw in txn.cursor(db=checks):
            check = indexed_from_json(raw)
            if check is not None:
                self.add(txn, check)
                indexed += 1
        txn.put(KEY_INDEXED, b"1", db=self._meta)
        return indexed

    # Reading ------------------------------------------------------------------------------------

    def newest(
        self,
        decision: str,
        owner: str | None,
        limit: int,
        page_token: str = "",
        unwritten: Iterable[IndexedCheck] = (),
    ) -> tuple[list[bytes], str]:
        """The `owned_key`s of up to `limit` finished checks of `decision` (of one owner, or of every key when
        None), newest first from the start or after `page_token`, and the next page's token ("" at the end).
        `unwritten`: finished checks not yet written, merged in where their keys would be."""
        family = _family(decision, owner)
        # Just below the last key of the previous page, or below the family's range.
        bound = _after_token(page_token, family) if page_token else family[:-1] + bytes([family[-1] + 1])
        keys = {key for check in unwritten for key in index_keys(check) if key.startswith(family) and key < bound}
        with self.store.env.begin() as txn:
            cursor = txn.cursor(db=self._decisions)
            positioned = cursor.prev() if cursor.set_range(bound) else cursor.last()
            read = 0
            while positioned and read <= limit and (key := bytes(cursor.key())).startswith(family):
                keys.add(key)
                read += 1
                positioned = cursor.prev()
        page = sorted(keys, reverse=True)
        next_token = _token(page[limit - 1]) if len(page) > limit else ""
        return [_owned_key_of(family, key, owner) for key in page[:limit]], next_token

    def hours(self, uid: int, first_hour: int, last_hour: int) -> list[HourCounts]:
        """Counts of list `uid` (ALL_CHECKS: every check) per hour from `first_hour` to `last_hour` (hour starts),
        zeros included."""
        with self.store.env.begin() as txn:
            return [HourCounts(hour, self._read(txn, hour, uid)) for hour in range(first_hour, last_hour + HOUR, HOUR)]

    def last_day(self, uids: Sequence[int], now: float | None = None) -> dict[int, DecisionCounts]:
        """Each list's counts over the current clock hour and the 23 before it."""
        last = hour_of(time.time() if now is None else now)
        first = last - 23 * HOUR
        with self.store.env.begin() as txn:
            return {
                uid: sum((self._read(txn, hour, uid) for hour in range(first, last + HOUR, HOUR)), DecisionCounts())
                for uid in uids
            }

    def _read(self, txn: lmdb.Transaction, hour: int, uid: int) -> DecisionCounts:
        raw = txn.get(time_key(hour) + _UID.pack(uid), db=self._counts)
        return DecisionCounts(*decode_counts(raw)) if raw is not None and len(raw) == _COUNTS.size else DecisionCounts()


def check_of_key(key: bytes) -> bytes:
    """The `owned_key` of the stored check an index key names; ValueError when it is no index key. (An index key
    may outlive its check when a server of an earlier version deleted it: reads skip those.)"""
    family_size = 2 if key[:1] == EVERY_KEY else key.find(b"\0") + 2 if key[:1] == BY_OWNER else 0
    if not family_size or key[family_size - 1 : family_size] not in DECISION_CODES.values():
        raise ValueError("not a key of the decision index")
    rest = key[family_size + TIME_KEY_SIZE :]
    if not rest:
        raise ValueError("a key of the decision index without a check id")
    return rest if key[:1] == EVERY_KEY else owned_key(key[1 : family_size - 2].decode(), rest.decode())


def decode_counts(raw: bytes | memoryview) -> tuple[int, int, int]:
    """An hourly record's three counters; ValueError when it is not one."""
    if len(raw) != _COUNTS.size:
        raise ValueError(f"{len(raw)} bytes, not {_COUNTS.size}")
    accept, review, reject = _COUNTS.unpack(bytes(raw))
    return accept, review, reject
