"""Node-local: stored checks by decision, newest first, and checks counted per hour by decision (see
`lookalike.server.check_index`), kept in the transactions that write results.

`check_decisions` holds two keys per finished check (values empty): one in the family of every key's checks,
`A`, decision, completion time, `owned_key(owner, id)`; one in its owner's family, `O`, owner, NUL, decision,
completion time, id. Each family reads newest first by walking its range backwards. `check_counts` holds one
record per clock hour and list (list uid 0: every check): three counters, accept, review and reject, big-endian.
A folder whose checks were stored before this index existed gets its stored checks indexed once at start-up
(`schema.KEY_CHECK_DECISIONS_INDEXED`); their counts were never kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from lookalike.client.errors import InvalidArgument
from lookalike.server.check_index import (
    ACCEPT,
    ALL_CHECKS,
    HOUR,
    REJECT,
    REVIEW,
    DecisionCounts,
    HourCounts,
    IndexedCheck,
    hour_of,
)
from lookalike.server.storage import schema
from lookalike.server.storage.environment import Environment, Transaction

DECISION_CODES = {ACCEPT: b"a", REVIEW: b"v", REJECT: b"r"}
EVERY_KEY = b"A"
BY_OWNER = b"O"


def index_keys(check: IndexedCheck) -> list[bytes]:
    code = DECISION_CODES[check.decision]
    when = schema.time_key(check.completed)
    return [
        EVERY_KEY + code + when + schema.owned_key(check.owner, check.id),
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
    rest = key[len(family) + schema.TIME_KEY_SIZE :]
    return rest if owner is None else schema.owned_key(owner, rest.decode())


def _token(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def _after_token(token: str, family: bytes) -> bytes:
    try:
        key = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if not key.startswith(family) or len(key) <= len(family) + schema.TIME_KEY_SIZE:
        raise InvalidArgument(
            f"page token {token[:40]!r} is not one this server gave for this decision and owner: ask the first "
            "page again without one",
            "PAGE_TOKEN_INVALID",
        )
    return key


class CheckIndex:
    """The decision index and hourly counts of one data folder (see the module's doc)."""

    def __init__(self, environment: Environment, kept_seconds: float) -> None:
        self.environment = environment
        self.kept_seconds = kept_seconds
        self._decisions = environment.db(schema.DB_CHECK_DECISIONS)
        self._counts = environment.db(schema.DB_CHECK_COUNTS)
        self._checks = environment.db(schema.DB_CHECKS)
        self._meta = environment.db(schema.DB_META)

    # Writing, in the ledger's transactions ----------------------------------------------------------

    def add(self, txn: Transaction, check: IndexedCheck) -> None:
        for key in index_keys(check):
            txn.put(key, b"", db=self._decisions)

    def forget(self, txn: Transaction, check: IndexedCheck) -> None:
        for key in index_keys(check):
            txn.delete(key, db=self._decisions)

    def forget_stored(self, txn: Transaction, raw: bytes | memoryview) -> None:
        """Drop the index keys of a stored check (its JSON) being deleted."""
        indexed = indexed_from_json(raw)
        if indexed is not None:
            self.forget(txn, indexed)

    def count(self, txn: Transaction, results: Iterable[tuple[float, str, dict[int, str]]]) -> None:
        """Count finished checks, each given as (when, its decision, the decision of each list uid it covered),
        summed first so that a batch writes each hour's record of a list once."""
        added: dict[tuple[int, int], Counter[str]] = {}
        for when, decision, lists in results:
            hour = hour_of(when)
            for uid, counted in ((ALL_CHECKS, decision), *lists.items()):
                added.setdefault((hour, uid), Counter())[counted] += 1
        for (hour, uid), more in added.items():
            key = schema.counts_key(hour, uid)
            raw = txn.get(key, db=self._counts)
            accept, review, reject = (0, 0, 0) if raw is None else _decode_counts_or_zero(raw)
            value = schema.CHECK_COUNTS.pack(accept + more[ACCEPT], review + more[REVIEW], reject + more[REJECT])
            txn.put(key, value, db=self._counts)

    def prune(self, txn: Transaction, now: float) -> int:
        """Delete hourly counts older than `kept_seconds`; returns how many."""
        end = schema.time_key(hour_of(now - self.kept_seconds))
        cursor = txn.cursor(db=self._counts)
        deleted = 0
        if cursor.first():
            while bytes(cursor.key()[: schema.TIME_KEY_SIZE]) < end:
                deleted += 1
                if not cursor.delete():
                    break
        return deleted

    def index_stored(self) -> int:
        """Index every finished stored check, once per folder (checks stored before the index existed);
        returns how many were indexed (0 once done)."""
        with self.environment.read() as txn:
            if txn.get(schema.KEY_CHECK_DECISIONS_INDEXED, db=self._meta) is not None:
                return 0
        with self.environment.transaction() as txn:
            if txn.get(schema.KEY_CHECK_DECISIONS_INDEXED, db=self._meta) is not None:
                return 0
            indexed = 0
            for _, raw in txn.cursor(db=self._checks):
                check = indexed_from_json(raw)
                if check is not None:
                    self.add(txn, check)
                    indexed += 1
            txn.put(schema.KEY_CHECK_DECISIONS_INDEXED, b"1", db=self._meta)
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
        with self.environment.read() as txn:
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
        with self.environment.read() as txn:
            return [HourCounts(hour, self._read(txn, hour, uid)) for hour in range(first_hour, last_hour + HOUR, HOUR)]

    def last_day(self, uids: Sequence[int], now: float | None = None) -> dict[int, DecisionCounts]:
        """Each list's counts over the current clock hour and the 23 before it."""
        last = hour_of(time.time() if now is None else now)
        first = last - 23 * HOUR
        with self.environment.read() as txn:
            return {
                uid: sum((self._read(txn, hour, uid) for hour in range(first, last + HOUR, HOUR)), DecisionCounts())
                for uid in uids
            }

    def _read(self, txn: Transaction, hour: int, uid: int) -> DecisionCounts:
        raw = txn.get(schema.counts_key(hour, uid), db=self._counts)
        return DecisionCounts() if raw is None else DecisionCounts(*_decode_counts_or_zero(raw))


def _decode_counts_or_zero(raw: bytes | memoryview) -> tuple[int, int, int]:
    """A damaged hourly record counts as zeros (`lookalike verify` reports it)."""
    try:
        return decode_counts(raw)
    except ValueError:
        return 0, 0, 0


def check_of_key(key: bytes) -> bytes:
    """The `owned_key` of the stored check an index key names; ValueError when it is no index key. (An index key
    may outlive its check when a server of an earlier version deleted it: reads skip those.)"""
    family_size = 2 if key[:1] == EVERY_KEY else key.find(b"\0") + 2 if key[:1] == BY_OWNER else 0
    if not family_size or key[family_size - 1 : family_size] not in DECISION_CODES.values():
        raise ValueError("not a key of the decision index")
    rest = key[family_size + schema.TIME_KEY_SIZE :]
    if not rest:
        raise ValueError("a key of the decision index without a check id")
    return rest if key[:1] == EVERY_KEY else schema.owned_key(key[1 : family_size - 2].decode(), rest.decode())


def decode_counts(raw: bytes | memoryview) -> tuple[int, int, int]:
    """An hourly record's three counters; ValueError when it is not one."""
    if len(raw) != schema.CHECK_COUNTS.size:
        raise ValueError(f"{len(raw)} bytes, not {schema.CHECK_COUNTS.size}")
    accept, review, reject = schema.CHECK_COUNTS.unpack(bytes(raw))
    return int(accept), int(review), int(reject)
