"""Stored checks: deferred checks and their worker pool, results kept for a while, the expiry sweep.

Every check's result is stored (JSON, never the image) for `check_retention`
seconds, keyed by its owner (the caller's key id) and its id (the request id): each
key's ids are its own, so two keys may use the same request id. A caller can read it again
(`GetCheck`), send feedback on it, and calibration can see the score
distribution. A synchronous check hands its result to a writer thread that
commits whatever has queued up within a tenth of a second in one transaction, so
the check itself pays for a queue put, not an LMDB commit; until written it is
served from memory. A crash may lose the last unwritten results (nothing else: a
check that asked for a webhook is written before it is answered, with its outbox entry).

A deferred check is written at once, with its image bytes (or the URL to fetch),
and answered with its id; worker threads run it through the same `check` as any
other, then store the result, drop the image and queue the webhook in one
transaction. Pending checks are queued again on start-up, so a restart loses
none. A key reads its own checks (an admin names the owner to read another's);
another key's id reads as not found. A synchronous check of an id that the same
key's deferred check still holds is refused before it runs, never answered and then
dropped. Format 2 folders kept checks by id alone: opening one rekeys them (`storage.checks`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import copy_context
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lookalike.client.errors import AlreadyExists, InvalidArgument, LookalikeError, NotFound, ResourceExhausted
from lookalike.index import configure_threads
from lookalike.server.check_index import IndexedCheck
from lookalike.server.config import ServerConfig
from lookalike.server.fetch import check_url
from lookalike.server.fingerprint import Hashes, Place
from lookalike.server.hashes import MD5, PDQ, PHASH, SHA256, HashCodec
from lookalike.server.scoring import Evidence
from lookalike.server.service import (
    Candidate,
    CheckResult,
    Downgrade,
    LookalikeService,
    Match,
    raise_if_abandoned,
)
from lookalike.server.shared_state import DeferredQueue, NodeState, QueuedCheck, node_state
from lookalike.server.sources import image_bytes
from lookalike.server.storage.check_index import CheckIndex
from lookalike.server.storage.checks import CheckTables
from lookalike.server.storage.codec import entry_fields, entry_from_fields
from lookalike.server.storage.environment import Transaction
from lookalike.server.storage.errors import STORAGE_RETRY_SECONDS, CorruptRecord, StorageFull
from lookalike.server.storage.outbox import Delivery
from lookalike.server.storage.schema import owned_key, split_owned_key
from lookalike.server.storage.store import Store
from lookalike.server.webhooks import WebhookOutbox

log = logging.getLogger(__name__)

PENDING, DONE, FAILED = "pending", "done", "failed"
CHECK_ID_MAX = 256
WRITE_BATCH = 512
WRITER_IDLE_SECONDS = 0.2
WRITE_GATHER_SECONDS = 0.1
"""How long the writer waits, after a result arrives, for more to commit with it."""
WORKER_POLL_SECONDS = 0.2
COUNTS_KEPT_AT_LEAST = 86400.0
"""Hourly check counts are kept as long as checks (`--check-retention`), and at least a day (the lists' last 24 h)."""
HELD_RESULTS_MAX = 20_000
"""Results of synchronous checks kept in memory (and readable) while the disk is full, written once it has room;
past this many the oldest are dropped: their checks were answered, only the stored copies are lost."""


@dataclass(frozen=True)
class CheckOrder:
    """What a deferred check was asked to do, to run it later exactly as asked."""

    lists: list[str]
    meta: dict[str, str]
    top_k: int = 0
    min_score: float | None = None
    scope: list[str] | None = None
    """The lists the caller may check when it names none (None: no limit)."""
    url: str = ""
    """The image URL to fetch when the check runs; empty when the bytes were sent."""


@dataclass(frozen=True)
class StoredCheck:
    id: str
    owner: str
    """Key id of the caller ("" for the keyless loopback caller)."""
    status: str
    submitted: float
    completed: float = 0.0
    expires: float = 0.0
    order: CheckOrder | None = None
    """Kept while pending."""
    result: CheckResult | None = None
    error: dict[str, str] | None = None
    """code, message, reason of a failed check."""
    callback_url: str = ""

    @property
    def key(self) -> bytes:
        return owned_key(self.owner, self.id)

    @property
    def indexed(self) -> IndexedCheck | None:
        """What the decision index files it under; None unless finished with a decision."""
        if self.status != DONE or self.result is None:
            return None
        return IndexedCheck(self.owner, self.id, self.result.decision, self.completed)


def validate_check_id(check_id: str) -> None:
    if not check_id or not check_id.isprintable() or len(check_id.encode()) > CHECK_ID_MAX:
        raise InvalidArgument(
            f"check id {check_id[:40]!r} is invalid: 1 to {CHECK_ID_MAX} bytes (UTF-8) of printable characters",
            "CHECK_ID_INVALID",
        )


# JSON of stored checks ---------------------------------------------------------------


def result_to_json(result: CheckResult) -> dict[str, Any]:
    hashes = result.hashes
    return {
        "request_id": result.request_id,
        "timestamp": result.timestamp,
        "hashes": [
            SHA256.format(hashes.sha256),
            PDQ.format(hashes.pdq),
            hashes.pdq_quality,
            PHASH.format(hashes.phash),
            MD5.format(hashes.md5),
        ],
        "decision": result.decision,
        "matches": [
            {
                "list": m.list,
                "entry": entry_fields(m.entry),
                "score": m.score,
                "evidence": asdict(m.evidence),
                "decision": m.decision,
                "list_kind": m.list_kind,
                "guarded": m.guarded,
            }
            for m in result.matches
        ],
        "meta": result.meta,
        "downgrades": [asdict(d) for d in result.downgrades],
        "candidates": [[c.list, c.id, c.score] for c in result.candidates],
    }


def _hash(codec: HashCodec, text: str) -> bytes:
    value = codec.stored(text)
    if value is None:
        raise CorruptRecord(f"{codec.what} is not hex of its length")
    return value


def _evidence(fields: dict[str, Any]) -> Evidence:
    """Evidence as stored, its places made Places again. Results stored before places were kept hold
    `pdq_in_view` instead (whether the PDQ was of a picture inside the upload): their places read as unknown."""
    fields = dict(fields)
    fields.pop("pdq_in_view", None)
    for name in ("pdq_place", "embedding_place"):
        place = fields.get(name)
        if place is not None:
            left, top, right, bottom = place["box"]
            fields[name] = Place(place["kind"], (left, top, right, bottom), place["frame"])
    return Evidence(**fields)


def result_from_json(raw: dict[str, Any]) -> CheckResult:
    sha256, pdq, quality, phash, md5 = raw["hashes"]
    matches = [
        Match(
            m["list"],
            entry_from_fields(m["entry"]),
            m["score"],
            _evidence(m["evidence"]),
            m["decision"],
            m["list_kind"],
            m["guarded"],
        )
        for m in raw["matches"]
    ]
    return CheckResult(
        request_id=raw["request_id"],
        timestamp=raw["timestamp"],
        hashes=Hashes(_hash(SHA256, sha256), _hash(PDQ, pdq), quality, _hash(PHASH, phash), _hash(MD5, md5)),
        decision=raw["decision"],
        matches=matches,
        meta=raw["meta"],
        downgrades=[Downgrade(**d) for d in raw["downgrades"]],
        candidates=[Candidate(*c) for c in raw["candidates"]],
    )


def _to_bytes(check: StoredCheck) -> bytes:
    record = {
        "id": check.id,
        "owner": check.owner,
        "status": check.status,
        "submitted": check.submitted,
        "completed": check.completed,
        "expires": check.expires,
        "order": None if check.order is None else asdict(check.order),
        "result": None if check.result is None else result_to_json(check.result),
        "error": check.error,
        "callback_url": check.callback_url,
    }
    return json.dumps(record).encode()


def _from_bytes(raw: bytes | memoryview) -> StoredCheck:
    record = json.loads(bytes(raw))
    order = record.pop("order")
    result = record.pop("result")
    return StoredCheck(
        **record,
        order=None if order is None else CheckOrder(**order),
        result=None if result is None else result_from_json(result),
    )


def _not_found(check_id: str, hint: str = "") -> NotFound:
    return NotFound(f"check {check_id[:CHECK_ID_MAX]!r} does not exist (or has expired){hint}", "CHECK_NOT_FOUND")


def _held_by_pending(check_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"check id {check_id!r} is held by your deferred check, still pending; use unique request ids",
        "CHECK_ID_TAKEN",
    )


class _Stopping(Exception):
    """Raised inside a deferred check when the server stops: it stays pending for the next start."""


@dataclass
class _InHand:
    """Keys of checks in flight, by `owned_key`: synchronous results waiting for the writer (readable
    meanwhile) and pending deferred checks, so neither is stored over the other."""

    unwritten: dict[bytes, StoredCheck] = field(default_factory=dict)
    pending: set[bytes] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class CheckLedger:
    """Stored checks of one server: recording, deferring, running deferred ones, expiring."""

    def __init__(
        self,
        store: Store,
        service: LookalikeService,
        config: ServerConfig,
        outbox: WebhookOutbox,
        render: Callable[[StoredCheck], bytes],
        shared: NodeState | None = None,
        joins_later: bool = False,
    ) -> None:
        """`shared`: what this node shares with others in cluster mode (None: a single node's own).
        `joins_later`: a cluster node that started without NATS; `join` shares from the time NATS answers."""
        self.store = store
        self.shared = shared or node_state(None, "", config.check_retention)
        self._joins_later = joins_later and not self.shared.checks.shared
        self._apart: DeferredQueue | None = None
        """After `join`: the node-local queue of the checks deferred before, which the workers still run."""
        self.service = service
        self.config = config
        self.outbox = outbox
        self._render = render
        self.index = CheckIndex(store.environment, max(config.check_retention, COUNTS_KEPT_AT_LEAST))
        self._tables = CheckTables(store.environment, outbox.table, self.index)
        indexed = self.index.index_stored()
        if indexed:
            log.info("%d stored checks indexed by decision", indexed)
        self._writes: queue.Queue[StoredCheck] = queue.Queue()
        self._in_hand = _InHand()
        self._unshared: dict[bytes, StoredCheck] = {}
        """Stored checks NATS did not take (cluster mode), by key, shared again now and then (`_share_again`)."""
        self._held: deque[StoredCheck] = deque()
        """Results the writer could not store for want of space, oldest first; retried now and then."""
        self._dropping = False
        """Held results past HELD_RESULTS_MAX have been dropped since the disk filled (logged once)."""
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # Recording ------------------------------------------------------------------

    def validate_callback(self, url: str) -> None:
        """Refuse a callback URL the server may not POST to, before the check runs."""
        check_url(url, self.config.allow_private_urls, self.config.url_timeout)

    def record(self, result: CheckResult, owner: str, callback_url: str = "") -> None:
        """Keep a synchronous check's result. With a webhook: written (with its delivery) before returning."""
        now = time.time()
        check = StoredCheck(
            result.request_id,
            owner,
            DONE,
            result.timestamp,
            now,
            now + self.config.check_retention,
            result=result,
            callback_url=callback_url,
        )
        try:
            validate_check_id(check.id)
        except InvalidArgument:
            if callback_url:
                raise
            return  # not storable (an odd caller-chosen request id); the check itself stands
        if callback_url:
            self.claimable(check.id, owner)
            deliveries: list[Delivery] = []
            with self.store.environment.transaction(grows=True) as txn:
                free, replaced = self._claim(txn, check.key)
                if not free:
                    raise _held_by_pending(check.id)
                deliveries = self._put(txn, check, replaced)
                self._count(txn, [check])
            self._share([check])
            self._schedule(deliveries)
            return
        with self._in_hand.lock:
            if check.key in self._in_hand.pending:  # deferred meanwhile: refused, not answered and then dropped
                raise _held_by_pending(check.id)
            self._in_hand.unwritten[check.key] = check
        self._writes.put(check)

    def claimable(self, check_id: str, owner: str) -> None:
        """Refuse, before a check runs, an id that the same key's deferred check still holds."""
        with self._in_hand.lock:
            if owned_key(owner, check_id) in self._in_hand.pending:
                raise _held_by_pending(check_id)

    def _claim(self, txn: Transaction, key: bytes) -> tuple[bool, StoredCheck | None]:
        """Whether a finished check may be stored under `key` (False: a pending check holds it), and the
        earlier finished check it replaces (None: none), for `_put`."""
        raw = self._tables.get(txn, key)
        if raw is None:
            return True, None
        existing = _from_bytes(raw)
        return existing.status != PENDING, existing

    def _put(self, txn: Transaction, check: StoredCheck, replaced: StoredCheck | None = None) -> list[Delivery]:
        """Write a check (and, finished with a callback, its delivery) in the caller's transaction, filed by its
        expiry and (finished) its decision. `replaced`: the check stored under the same id that this one replaces."""
        self._tables.put(txn, check.key, _to_bytes(check), check.expires, 0.0 if replaced is None else replaced.expires)
        if replaced is not None and replaced.indexed is not None:
            self.index.forget(txn, replaced.indexed)
        if check.indexed is not None:
            self.index.add(txn, check.indexed)
        if check.status != PENDING and check.callback_url:
            return [self.outbox.put(txn, check.owner, check.id, check.callback_url, self._render(check))]
        return []

    def _count(self, txn: Transaction, checks: list[StoredCheck]) -> None:
        """Count finished checks in the hourly counts (each once: when its result is first written)."""
        self.index.count(
            txn,
            [
                (c.completed, c.result.decision, c.result.list_decisions)
                for c in checks
                if c.result and c.status == DONE
            ],
        )

    def _share(self, checks: list[StoredCheck]) -> None:
        """Make stored checks readable from every node (cluster mode). Those NATS does not take (unreachable,
        or electing a leader) stay readable here and are shared again by the writer (`_share_again`)."""
        with self._in_hand.lock:  # `join` swaps the board under it
            board = self.shared.checks
            if not board.shared and self._joins_later:  # kept for `join`: the writer shares them after it
                for check in checks:
                    if len(self._unshared) < HELD_RESULTS_MAX:
                        self._unshared[check.key] = check
        if not board.shared:
            return
        for check in checks:
            try:
                board.publish(check.key, _to_bytes(check))
            except LookalikeError as error:
                with self._in_hand.lock:
                    if not self._unshared:
                        log.warning("stored checks are readable on this node only until NATS answers: %s", error)
                    if len(self._unshared) < HELD_RESULTS_MAX:
                        self._unshared[check.key] = check
            else:
                with self._in_hand.lock:
                    self._unshared.pop(check.key, None)

    def _share_again(self) -> None:
        with self._in_hand.lock:
            waiting = list(self._unshared.values())
            self._unshared.clear()
        self._share(waiting)
        if waiting and not self._unshared:
            log.info("%d stored checks shared with the other nodes once NATS answered", len(waiting))

    def join(self, shared: NodeState) -> None:
        """A cluster node that started without NATS shares from now on: new deferred checks go on the
        cluster's queue, stored checks on its board (those stored here meanwhile too, by the writer). Checks
        deferred here before stay in this node's LMDB with their pictures, and its workers run them first."""
        with self._in_hand.lock:
            self._apart = self.shared.deferred
            self.shared = shared
            self._joins_later = False

    def _schedule(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self.outbox.schedule(delivery)

    # Deferring ------------------------------------------------------------------

    def defer(
        self, check_id: str, owner: str, order: CheckOrder, data: bytes | None, callback_url: str = ""
    ) -> StoredCheck:
        """Store a pending check and queue it. The same id from the same key again returns the stored check
        (a retried submission is not run twice); another key's id of the same name is another check."""
        validate_check_id(check_id)
        check = StoredCheck(check_id, owner, PENDING, time.time(), order=order, callback_url=callback_url)
        deferred = self.shared.deferred  # one queue throughout, though the node may join its cluster meanwhile
        if deferred.shared:
            return self._defer_shared(check, data)
        key = check.key
        with self._pending_lock:
            if self._pending >= self.config.max_pending_checks:
                raise ResourceExhausted(
                    f"{self._pending} deferred checks are waiting (--max-pending-checks); retry later or check "
                    "synchronously",
                    "QUEUE_FULL",
                )
            with self._in_hand.lock:
                answered = self._in_hand.unwritten.get(key)
                reserved = answered is None and key not in self._in_hand.pending
                if reserved:  # from here a synchronous check of this id is refused, not stored over this one
                    self._in_hand.pending.add(key)
            if answered is not None:
                return answered  # checked synchronously a moment ago, being written: as resubmitted
            stored = False
            try:
                with self.store.environment.transaction(grows=True) as txn:
                    raw = self._tables.get(txn, key)
                    if raw is not None:
                        return _from_bytes(raw)
                    self._put(txn, check)
                    self._tables.hold_pending(txn, key, data)
                stored = True
            finally:
                if reserved and not stored:
                    with self._in_hand.lock:
                        self._in_hand.pending.discard(key)
            self._pending += 1
        deferred.put(key, b"", None)  # the check and its image are in LMDB
        return check

    def _defer_shared(self, check: StoredCheck, data: bytes | None) -> StoredCheck:
        """Cluster mode: the pending check goes on the shared board and its order (with the image) on the
        shared queue, which any node takes from; nothing is held in this node's LMDB."""
        waiting = self.shared.deferred.waiting()
        if waiting >= self.config.max_pending_checks:
            raise ResourceExhausted(
                f"{waiting} deferred checks are waiting in the cluster (--max-pending-checks); retry later or check "
                "synchronously",
                "QUEUE_FULL",
            )
        raw = _to_bytes(check)
        stored = self.shared.checks.reserve(check.key, raw)
        if stored is not None:  # a retried submission: not run twice
            check, raw = _from_bytes(stored), stored
            if check.status != PENDING:
                return check
            # Still pending: its order goes again (the queue drops it as a duplicate, unless the first was lost).
        try:
            self.shared.deferred.put(check.key, raw, data)
        except LookalikeError:
            try:
                self.shared.checks.withdraw(check.key)
            except LookalikeError:  # NATS went away: the caller's retry (same id) finds it pending and queues it
                log.warning("deferred check %s of key %r is pending but not queued", check.id, check.owner)
            raise
        return check

    @property
    def pending(self) -> int:
        """Deferred checks queued or running."""
        return self._pending

    @property
    def unwritten(self) -> int:
        """Synchronous checks' results not yet committed by the writer."""
        with self._in_hand.lock:
            return len(self._in_hand.unwritten)

    # Reading ----------------------------------------------------------------------

    def get(self, owner: str, check_id: str, hint: str = "") -> StoredCheck:
        """The check `owner`'s key stored under `check_id`; NOT_FOUND (ending with `hint`) when there is none."""
        key = owned_key(owner, check_id)
        with self._in_hand.lock:
            unwritten = self._in_hand.unwritten.get(key)
        if unwritten is not None:
            return unwritten
        if not check_id or len(check_id.encode()) > CHECK_ID_MAX:
            raise _not_found(check_id, hint)
        raw = self._shared_copy(key) or self._tables.read(key)
        if raw is None:
            raise _not_found(check_id, hint)
        return _from_bytes(raw)

    def _shared_copy(self, key: bytes) -> bytes | None:
        """The check as the cluster stores it (it may have run on another node); None when not shared."""
        if not self.shared.checks.shared:
            return None
        try:
            return self.shared.checks.read(key)
        except LookalikeError as error:
            log.warning("stored checks of other nodes cannot be read now: %s", error.message)
            return None

    def by_decision(
        self, decision: str, owner: str | None, limit: int, page_token: str = ""
    ) -> tuple[list[StoredCheck], str]:
        """Finished checks of `decision`, newest first (of `owner`; None: every key's), those answered but not yet
        written included, and the next page's token ("" at the end)."""
        with self._in_hand.lock:
            unwritten = dict(self._in_hand.unwritten)
        fresh = [c.indexed for c in unwritten.values() if c.indexed is not None]
        keys, next_token = self.index.newest(decision, owner, limit, page_token, fresh)
        stored = self._tables.read_many([key for key in keys if key not in unwritten])
        checks: dict[bytes, StoredCheck] = {}
        for key in keys:
            check = unwritten.get(key)
            if check is None and key in stored:
                check = _from_bytes(stored[key])
            # A check replaced under the same id and not yet written shows once, under its own decision.
            if check is not None and check.indexed is not None and check.indexed.decision == decision:
                checks.setdefault(key, check)
        return list(checks.values()), next_token

    def finished(self) -> Iterator[StoredCheck]:
        """Every finished check kept (for calibration), every key's, those not yet written included."""
        with self._in_hand.lock:
            unwritten = dict(self._in_hand.unwritten)
        yield from unwritten.values()
        for key, raw in self._tables.all():
            if key in unwritten:
                continue
            check = _from_bytes(raw)
            if check.status == DONE:
                yield check

    # Background work --------------------------------------------------------------

    def start(self) -> None:
        """Queue the pending checks left by the last run, then start workers, writer and sweeper."""
        pending = self._tables.pending_keys()
        if self.shared.deferred.shared:
            self._hand_over(pending)
            pending = []
        with self._pending_lock:
            self._pending += len(pending)
        with self._in_hand.lock:
            self._in_hand.pending.update(pending)
        for key in pending:
            self.shared.deferred.put(key, b"", None)
        if pending:
            log.info("%d deferred checks pending from the last run: queued again", len(pending))
        self.outbox.start()
        for number in range(max(1, self.config.deferred_workers)):
            self._spawn(self._work_loop, f"deferred-{number}")
        self._spawn(self._write_loop, "check-writer")
        self._spawn(self._sweep_loop, "check-sweeper")

    def _hand_over(self, keys: list[bytes]) -> None:
        """Cluster mode: deferred checks this node held pending in LMDB (left from before it joined) go to the
        shared queue, and their images and pending marks leave LMDB; the stored pending check stays until a
        result replaces it (read from the shared board meanwhile)."""
        handed = 0
        for key in keys:
            raw, image = self._tables.read_pending(key)
            try:
                if raw is not None:
                    self.shared.checks.reserve(key, raw)
                    self.shared.deferred.put(key, raw, image)
                with self.store.environment.transaction() as txn:
                    self._tables.release_pending(txn, key)
            except (LookalikeError, StorageFull) as error:
                log.warning("%d deferred checks stay pending here until the next start: %s", len(keys) - handed, error)
                break
            handed += 1
        if handed:
            log.info("%d deferred checks pending from the last run: handed to the cluster's queue", handed)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Finish or put back the checks in hand, write what is queued, save flood-guard rates."""
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        self._write_queued()
        if self._held:
            log.warning("stopping with the disk full: %d results of answered checks were not stored", len(self._held))
        self.outbox.stop()
        try:
            self.service.flood.save_rates()
        except StorageFull:
            log.warning("stopping with the disk full: the flood guard's rates since the last sweep were not saved")

    # Deferred workers ---------------------------------------------------------------

    def _work_loop(self) -> None:
        configure_threads(1)  # per thread (OpenMP): this one searches indexes

        def still_wanted() -> None:
            if self._stopping.is_set():
                raise _Stopping

        while not self._stopping.is_set():
            taken = None if self._apart is None else self._apart.take(0)  # deferred before the node joined
            if taken is None:
                deferred = self.shared.deferred
                try:
                    taken = deferred.take(WORKER_POLL_SECONDS)
                except LookalikeError as error:  # the shared queue is unreachable for now
                    log.warning("cannot take deferred checks: %s", error.message)
                    self._stopping.wait(STORAGE_RETRY_SECONDS)
                    continue
                if taken is None:
                    continue
                if deferred.shared:
                    with self._pending_lock:
                        self._pending += 1  # counted while in hand here; the cluster's queue counts the waiting
            context = copy_context()
            context.run(raise_if_abandoned.set, still_wanted)
            try:
                context.run(self._run, taken)
            except _Stopping:
                return  # left pending (or unacknowledged): the next start, or another node, takes it again
            except Exception:
                owner, check_id = split_owned_key(taken.key)
                log.exception(
                    "deferred check %s of key %r could not be stored; it stays pending until a restart", check_id, owner
                )
                self._done_one()

    def _run(self, taken: QueuedCheck) -> None:
        key = taken.key
        raw, data = self._tables.read_pending(key) if taken.check is None else (taken.check, taken.image)
        shared = self._shared_copy(key)
        if shared is not None and _from_bytes(shared).status != PENDING:
            raw = None  # run already, by a node that died before acknowledging it
        if raw is None or (check := _from_bytes(raw)).status != PENDING or check.order is None:
            self._acknowledge(taken)
            self._done_one(key)
            return
        order = check.order
        finished: StoredCheck
        try:
            image = data if data is not None else image_bytes("url", order.url, self.config)
            result = self.service.check(
                image,
                order.lists,
                order.meta,
                order.top_k,
                order.min_score,
                request_id=check.id,
                scope=None if order.scope is None else set(order.scope),
            )
            finished = replace(check, status=DONE, result=result)
            self.service.metrics.decisions.labels(result.decision).inc()  # synchronous ones are counted per call
        except _Stopping:
            raise
        except LookalikeError as error:
            finished = replace(
                check, status=FAILED, error={"code": error.code, "message": error.message, "reason": error.reason}
            )
        except Exception:
            log.exception("deferred check %s of key %r failed", check.id, check.owner)
            finished = replace(
                check,
                status=FAILED,
                error={"code": "INTERNAL", "reason": "INTERNAL", "message": "internal error; see the server log"},
            )
        now = time.time()
        finished = replace(finished, order=None, completed=now, expires=now + self.config.check_retention)
        while True:
            try:
                with self.store.environment.transaction() as txn:
                    deliveries = self._put(txn, finished, self._claim(txn, key)[1])
                    self._count(txn, [finished])
                    self._tables.release_pending(txn, key)
                break
            except StorageFull:  # the store logged it; the check stays pending in LMDB meanwhile
                if self._stopping.wait(STORAGE_RETRY_SECONDS):
                    raise _Stopping from None
        self._share([finished])
        self._acknowledge(taken)
        self._done_one(key)
        self._schedule(deliveries)

    def _acknowledge(self, taken: QueuedCheck) -> None:
        try:
            taken.done()
        except LookalikeError as error:  # it will be run again, by this node or another: at least once
            log.warning("deferred check %r done but not acknowledged: %s", split_owned_key(taken.key)[1], error.message)

    def _done_one(self, key: bytes | None = None) -> None:
        """One deferred check less in hand; with its key once it no longer holds its id."""
        with self._pending_lock:
            self._pending -= 1
        if key is not None:
            with self._in_hand.lock:
                self._in_hand.pending.discard(key)

    # Writer and sweeper ---------------------------------------------------------------

    def _write_loop(self) -> None:
        shared_again = time.monotonic()
        while not self._stopping.is_set():
            if self._unshared and self.shared.checks.shared and time.monotonic() - shared_again > STORAGE_RETRY_SECONDS:
                self._share_again()
                shared_again = time.monotonic()
            if self._held:  # the disk was full: try again now and then, with whatever queued meanwhile
                self._stopping.wait(STORAGE_RETRY_SECONDS)
                self._write_queued()
                continue
            try:
                first = self._writes.get(timeout=WRITER_IDLE_SECONDS)
            except queue.Empty:
                continue
            # Let the results of checks answered meanwhile join it: one commit for many costs far less than one each.
            self._stopping.wait(WRITE_GATHER_SECONDS)
            self._write_queued([first])

    def _write_queued(self, batch: list[StoredCheck] | None = None) -> None:
        """Commit held, then queued results in batches of up to WRITE_BATCH, one transaction each; on a
        full disk they are held for the next try."""
        batch = batch or []
        while True:
            while self._held and len(batch) < WRITE_BATCH:
                batch.append(self._held.popleft())
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self._writes.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return
            try:
                with self.store.environment.transaction(grows=True) as txn:
                    stored = []
                    for check in batch:
                        free, replaced = self._claim(txn, check.key)
                        if not free:  # `record` and `defer` keep this from happening
                            log.error("check %s of key %r not stored: a pending check holds it", check.id, check.owner)
                        else:
                            self._put(txn, check, replaced)
                            stored.append(check)
                    self._count(txn, stored)
            except StorageFull:  # the store logged it once
                self._hold(batch)
                return
            except Exception:
                log.exception("could not store %d check results; they are lost", len(batch))
            else:
                self._share(stored)
            self._forget_unwritten(batch)
            self._dropping = self._dropping and bool(self._held)
            batch = []

    def _hold(self, batch: list[StoredCheck]) -> None:
        """Keep results the disk had no room for (and everything queued behind them), up to HELD_RESULTS_MAX."""
        self._held.extendleft(reversed(batch))
        while True:
            try:
                self._held.append(self._writes.get_nowait())
            except queue.Empty:
                break
        dropped = [self._held.popleft() for _ in range(len(self._held) - HELD_RESULTS_MAX)]
        self._forget_unwritten(dropped)
        if dropped and not self._dropping:
            self._dropping = True
            log.warning(
                "the disk is still full: past %d results of answered checks kept to store later, the oldest "
                "are dropped",
                HELD_RESULTS_MAX,
            )

    def _forget_unwritten(self, checks: list[StoredCheck]) -> None:
        with self._in_hand.lock:
            for check in checks:
                if self._in_hand.unwritten.get(check.key) is check:
                    del self._in_hand.unwritten[check.key]

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(self.config.sweep_interval):
            try:
                self.sweep()
            except StorageFull:
                pass  # the store logged it once; the next sweep tries again
            except Exception:
                log.exception("sweep of expired checks failed; will retry")
            try:
                self.service.flood.save_rates()
            except StorageFull:
                pass  # as above: kept in memory until the next sweep
            except Exception:
                log.exception("saving the flood guard's rates failed; will retry at the next sweep")

    def sweep(self, now: float | None = None) -> int:
        """Delete checks whose retention ended, with their webhooks once those are finished; returns how many."""
        return self._tables.sweep(time.time() if now is None else now)
