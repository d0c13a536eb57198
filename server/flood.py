"""Flood guard: one entry suddenly matching far more often than usual stops rejecting until an admin confirms it.

Shared hash lists sometimes carry the hash of something common (a stock photo, a
meme template). Such an entry would reject thousands of innocent uploads, so each
disallow entry's reject-level matches are counted twice, with exponential decay over
a short window and a long one. The decayed count over a window of τ seconds reads
as "matches per τ", so `short / τs` is the recent rate and `long / τl` the usual
one. When the recent rate exceeds `factor` × the usual rate (and the short count is
at least `min_matches`, give or take `MATCH_SLACK`), the entry is guarded: its matches are sent to review
instead of rejected, which shows in the check's reply, in metrics and in
`lookalike lists show`. A guard is stored in LMDB at once, so it survives restarts;
rates are saved on every sweep and at shutdown, so a restart does not forget what
"usual" was. An admin's confirmation lifts the guard and declares the present rate
usual (the long count is raised to match), so the same rate does not trip it again
while a further burst still would.

In cluster mode (`share`) the counts are kept cluster-wide (`shared_state.SharedFlood`): each match adds to
the entry's counts in a key-value map by compare-and-set, so matches on every node add up, and a guard
tripped on one node reaches every node through a watch, within a second. While NATS is unreachable a node
counts on its own (and says so), so checks go on.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from lookalike.client.errors import LookalikeError
from lookalike.server.records import EntryRecord, ListRecord
from lookalike.server.shared_state import SharedFlood
from lookalike.server.storage.environment import Transaction
from lookalike.server.storage.errors import CorruptRecord, StorageFull
from lookalike.server.storage.flood import EntryKey, FloodTables, Guard, decode_guard
from lookalike.server.storage.store import Store

log = logging.getLogger(__name__)

FORGOTTEN_BELOW = 0.05
"""A rate whose long count decayed below this is dropped rather than saved (nothing usual to remember)."""

MATCH_SLACK = 0.1
"""n matches in quick succession decay to just under n; they still count as n."""

@dataclass(frozen=True)
class FloodSettings:
    min_matches: int = 25
    """0: the guard is off."""
    factor: float = 20.0
    short_window: float = 600.0
    long_window: float = 86400.0


class _Rate:
    """Exponentially decayed counts of one entry's reject-level matches."""

    __slots__ = ("long", "short", "updated")

    def __init__(self, short: float = 0.0, long: float = 0.0, updated: float = 0.0) -> None:
        self.short = short
        self.long = long
        self.updated = updated

    def add_one(self, now: float, settings: FloodSettings) -> None:
        self.decay(now, settings)
        self.short += 1
        self.long += 1

    def decay(self, now: float, settings: FloodSettings) -> None:
        elapsed = max(0.0, now - self.updated)
        self.short *= math.exp(-elapsed / settings.short_window)
        self.long *= math.exp(-elapsed / settings.long_window)
        self.updated = now

    def usual_in_short_window(self, settings: FloodSettings) -> float:
        return self.long * settings.short_window / settings.long_window

    def take_as_usual(self, settings: FloodSettings) -> float:
        """The long count that makes the present short rate the usual one (a confirmation's)."""
        return max(self.long, self.short * settings.long_window / settings.short_window)

    def encode(self) -> bytes:
        """As the cluster-wide map keeps it."""
        return json.dumps([self.short, self.long, self.updated]).encode()

    @classmethod
    def decode(cls, raw: bytes | None, now: float) -> _Rate:
        return cls(updated=now) if raw is None else cls(*(float(count) for count in json.loads(raw)))


class FloodGuard:
    """Per-entry match rates of one server, and the entries under guard."""

    def __init__(self, store: Store, settings: FloodSettings) -> None:
        self.settings = settings
        self._tables = FloodTables(store.environment)
        self._lock = threading.Lock()
        guards, rates = self._tables.load()
        self._guards: dict[EntryKey, Guard] = guards
        self._rates: dict[EntryKey, _Rate] = {key: _Rate(*counts) for key, counts in rates.items()}
        self._shared: SharedFlood | None = None

    def share(self, shared: SharedFlood) -> None:
        """Cluster mode: count matches and keep guards cluster-wide from now on (once the watch stands)."""
        shared.watch_guards(self._guard_changed)
        self._shared = shared

    def _guard_changed(self, uid: int, seq: int, raw: bytes | None) -> None:
        """A guard tripped (or lifted: None) on any node, this one included."""
        with self._lock:
            if raw is None:
                self._guards.pop((uid, seq), None)
                return
            try:
                self._guards[(uid, seq)] = decode_guard(raw)
            except CorruptRecord as error:
                log.warning("flood guard of entry %d of list uid %d is unreadable: %s", seq, uid, error)

    @property
    def enabled(self) -> bool:
        return self.settings.min_matches > 0

    def observe(self, record: ListRecord, entries: Sequence[EntryRecord], now: float | None = None) -> None:
        """Count one reject-level match of each entry (one check's); guard those that now trip."""
        if not self.enabled or not entries:
            return
        now = time.time() if now is None else now
        tripped: list[tuple[EntryKey, Guard]] = []
        counted = self._count_shared(record.uid, entries, now) if self._shared is not None else {}
        with self._lock:
            for entry in entries:
                key = (record.uid, entry.seq)
                rate = counted.get(key)
                if rate is not None:
                    self._rates[key] = rate
                else:
                    rate = self._rates.get(key)
                    if rate is None:
                        rate = self._rates[key] = _Rate(updated=now)
                    rate.add_one(now, self.settings)
                if key not in self._guards and self._trips(rate):
                    guard = Guard(record.name, entry.id, now, rate.short, rate.usual_in_short_window(self.settings))
                    self._guards[key] = guard
                    tripped.append((key, guard))
            if tripped:
                try:
                    self._tables.put_guards(tripped)
                except StorageFull:
                    pass  # the check goes on; `save_rates` stores the guard once the disk has room
        self._share_guards(tripped)
        for _, guard in tripped:
            log.warning(
                "flood guard: entry %r on list %r matched %.0f times in the last %.0f s (usual %.1f); its rejects "
                "go to review until an admin confirms it",
                guard.entry_id,
                guard.list,
                guard.recent,
                self.settings.short_window,
                guard.usual,
            )

    def _count_shared(self, uid: int, entries: Sequence[EntryRecord], now: float) -> dict[EntryKey, _Rate]:
        """Count one match of each entry cluster-wide; the counts as they now stand (those NATS took)."""
        assert self._shared is not None

        def add_one(raw: bytes | None) -> bytes:
            rate = _Rate.decode(raw, now)
            rate.add_one(now, self.settings)
            return rate.encode()

        counted: dict[EntryKey, _Rate] = {}
        try:
            for entry in entries:
                counted[(uid, entry.seq)] = _Rate.decode(self._shared.update(uid, entry.seq, add_one), now)
        except LookalikeError as error:
            log.warning("flood guard: counting on this node alone for now: %s", error.message)
        return counted

    def _share_guards(self, tripped: list[tuple[EntryKey, Guard]]) -> None:
        if self._shared is None:
            return
        try:
            for (uid, seq), guard in tripped:
                self._shared.put_guard(uid, seq, json.dumps(asdict(guard)).encode())
        except LookalikeError as error:
            log.warning("flood guard: a guard is known to this node only: %s", error.message)

    def _trips(self, rate: _Rate) -> bool:
        settings = self.settings
        if rate.short < settings.min_matches - MATCH_SLACK:
            return False
        return rate.short / settings.short_window > settings.factor * rate.long / settings.long_window

    def guard_of(self, uid: int, seq: int) -> Guard | None:
        return self._guards.get((uid, seq))

    def guarded(self, uid: int) -> list[Guard]:
        """A list's guarded entries, oldest guard first."""
        with self._lock:
            found = [guard for (list_uid, _), guard in self._guards.items() if list_uid == uid]
        return sorted(found, key=lambda guard: (guard.since, guard.entry_id))

    def counts_by_list(self) -> dict[str, int]:
        with self._lock:
            guards = list(self._guards.values())
        counts: dict[str, int] = {}
        for guard in guards:
            counts[guard.list] = counts.get(guard.list, 0) + 1
        return counts

    def confirmation(self, uid: int, seq: int, now: float | None = None) -> dict[str, str]:
        """What confirming an entry records in the audit log: whether it is guarded (since when) and its recent
        matches, as this node's guard sees them (the change carries it to every replica)."""
        now = time.time() if now is None else now
        with self._lock:
            rate, guard = self._rates.get((uid, seq)), self._guards.get((uid, seq))
            detail = {"guarded": "false"}
            if rate is not None:
                recent = rate.short * math.exp(-max(0.0, now - rate.updated) / self.settings.short_window)
                detail["recent_matches"] = f"{recent:.1f}"
            if guard is not None:
                detail |= {"guarded": "true", "since": f"{guard.since:.3f}"}
        return detail

    @contextmanager
    def lifting(self, now: float | None = None) -> Iterator[Callable[[Transaction, EntryKey], None]]:
        """Lift guards in a transaction of the caller's (a confirmation's): `lift(txn, (uid, seq))` stores the
        entry's rate with its present rate taken as usual, and drops its guard; once the block ends without an
        error (the transaction committed), the guard is lifted here too. The guard's lock is held meanwhile, so
        a save of the rates cannot write the guard back."""
        now = time.time() if now is None else now
        lifted: dict[EntryKey, float | None] = {}
        """Each entry lifted, and the long count to take as usual (None: it has no rate)."""

        def lift(txn: Transaction, key: EntryKey) -> None:
            rate = self._rates.get(key)
            if rate is None:
                self._tables.lift(txn, key, None)
                lifted[key] = None
                return
            rate.decay(now, self.settings)
            usual = rate.take_as_usual(self.settings)
            self._tables.lift(txn, key, (rate.short, usual, rate.updated))
            lifted[key] = usual

        with self._lock:
            yield lift
            for key, usual in lifted.items():
                rate = self._rates.get(key)
                if rate is not None and usual is not None:
                    rate.long = usual
                self._guards.pop(key, None)
        if self._shared is not None:
            self._lift_shared(list(lifted), now)

    def _lift_shared(self, keys: list[EntryKey], now: float) -> None:
        """Lift the guards cluster-wide, the cluster's present rates taken as usual (the same counts whichever
        node, or how many, apply the confirmation)."""
        assert self._shared is not None

        def take_as_usual(raw: bytes | None) -> bytes:
            rate = _Rate.decode(raw, now)
            rate.decay(now, self.settings)
            rate.long = rate.take_as_usual(self.settings)
            return rate.encode()

        try:
            for uid, seq in keys:
                self._shared.update(uid, seq, take_as_usual)
                self._shared.drop_guard(uid, seq)
        except LookalikeError as error:
            log.warning("flood guard: a confirmation is known to this node only: %s", error.message)

    def forget(self, uid: int, seqs: Iterable[int] | None = None) -> None:
        """Drop the rates and guards of removed entries (`seqs`), or of a deleted list (all)."""
        only = None if seqs is None else set(seqs)
        with self._lock:
            keys = {k for k in (*self._rates, *self._guards) if k[0] == uid and (only is None or k[1] in only)}
            for key in keys:
                self._rates.pop(key, None)
                self._guards.pop(key, None)
            if keys:
                try:
                    self._tables.forget(keys)
                except StorageFull:
                    pass  # the removal stands; `save_rates` rewrites both tables once the disk has room
        if self._shared is not None:
            try:
                for uid_, seq in keys | {(uid, seq) for seq in only or ()}:
                    self._shared.forget(uid_, seq)
            except LookalikeError as error:
                log.warning("flood guard: removed entries' counts stay in the cluster's map: %s", error.message)

    def save_rates(self, now: float | None = None) -> int:
        """Write every rate still worth remembering, and the guards (one transaction); forget the rest.
        Returns how many rates. Both tables are written whole, so a write the disk refused earlier (a guard
        tripped, entries forgotten) is made good here."""
        now = time.time() if now is None else now
        with self._lock:
            for key, rate in list(self._rates.items()):
                rate.decay(now, self.settings)
                if rate.long < FORGOTTEN_BELOW and key not in self._guards:
                    del self._rates[key]
            rows = [(key, (rate.short, rate.long, rate.updated)) for key, rate in self._rates.items()]
            # Under the lock: a guard lifted meanwhile must not be written back.
            self._tables.replace(rows, self._guards.items())
        return len(rows)
