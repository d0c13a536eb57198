"""Node-local: the flood guard's guarded entries and decayed match rates, by (list uid, entry seq)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from lookalike.server.storage import schema
from lookalike.server.storage.codec import decode_record
from lookalike.server.storage.environment import Environment, Transaction
from lookalike.server.storage.errors import CorruptRecord, corrupt

type EntryKey = tuple[int, int]
"""(list uid, entry seq)."""
type Counts = tuple[float, float, float]
"""A rate as stored: short count, long count, updated (unix seconds)."""


@dataclass(frozen=True)
class Guard:
    """An entry under guard: since when, and the decayed counts that tripped it."""

    list: str
    entry_id: str
    since: float
    recent: float
    """Reject-level matches in the short window when it tripped."""
    usual: float
    """What the usual rate would have given in the same window."""


def _encode_guard(guard: Guard) -> bytes:
    return json.dumps(asdict(guard)).encode()


def decode_guard(raw: bytes | memoryview) -> Guard:
    """A stored guard; raises CorruptRecord."""
    return decode_record(Guard, raw)


def decode_rate(raw: bytes | memoryview) -> Counts:
    """A stored rate; raises CorruptRecord."""
    if len(raw) != schema.FLOOD_RATE.size:
        raise CorruptRecord(f"a rate of {len(raw)} bytes")
    short, long, updated = schema.FLOOD_RATE.unpack(raw)
    return float(short), float(long), float(updated)


def decode_entry_key(key: bytes | memoryview) -> EntryKey:
    """The (list uid, entry seq) a guard or rate is kept under; raises CorruptRecord."""
    if len(key) != schema.FLOOD_KEY.size:
        raise CorruptRecord(f"a key of {len(key)} bytes")
    uid, seq = schema.FLOOD_KEY.unpack(key)
    return int(uid), int(seq)


class FloodTables:
    """The flood guard's state in one data folder."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self._guards = environment.db(schema.DB_GUARDS)
        self._rates = environment.db(schema.DB_RATES)

    def load(self) -> tuple[dict[EntryKey, Guard], dict[EntryKey, Counts]]:
        """Every guard and rate kept; DATA_LOSS naming the first that does not decode."""
        guards: dict[EntryKey, Guard] = {}
        rates: dict[EntryKey, Counts] = {}
        with self.environment.read() as txn:
            for key, value in txn.cursor(db=self._guards):
                try:
                    guards[decode_entry_key(key)] = decode_guard(value)
                except CorruptRecord as error:
                    raise corrupt(f"flood guard record {bytes(key).hex()}", error) from None
            for key, value in txn.cursor(db=self._rates):
                try:
                    rates[decode_entry_key(key)] = decode_rate(value)
                except CorruptRecord as error:
                    raise corrupt(f"flood guard record {bytes(key).hex()}", error) from None
        return guards, rates

    def put_guards(self, guards: Iterable[tuple[EntryKey, Guard]]) -> None:
        with self.environment.transaction() as txn:
            for key, guard in guards:
                txn.put(schema.FLOOD_KEY.pack(*key), _encode_guard(guard), db=self._guards)

    def lift(self, txn: Transaction, key: EntryKey, rate: Counts | None) -> None:
        """Drop an entry's guard and store its rate (None: it has none), in the caller's transaction."""
        packed = schema.FLOOD_KEY.pack(*key)
        txn.delete(packed, db=self._guards)
        if rate is not None:
            txn.put(packed, schema.FLOOD_RATE.pack(*rate), db=self._rates)

    def forget(self, keys: Iterable[EntryKey]) -> None:
        """Drop the guards and rates of removed entries."""
        with self.environment.transaction() as txn:
            for key in keys:
                txn.delete(schema.FLOOD_KEY.pack(*key), db=self._guards)
                txn.delete(schema.FLOOD_KEY.pack(*key), db=self._rates)

    def replace(self, rates: Iterable[tuple[EntryKey, Counts]], guards: Iterable[tuple[EntryKey, Guard]]) -> None:
        """Write both tables whole, in one transaction."""
        rows = [(schema.FLOOD_KEY.pack(*key), schema.FLOOD_RATE.pack(*counts)) for key, counts in rates]
        guarded = [(schema.FLOOD_KEY.pack(*key), _encode_guard(guard)) for key, guard in guards]
        with self.environment.transaction() as txn:
            txn.drop(self._rates, delete=False)
            for packed, value in rows:
                txn.put(packed, value, db=self._rates)
            txn.drop(self._guards, delete=False)
            for packed, value in guarded:
                txn.put(packed, value, db=self._guards)
