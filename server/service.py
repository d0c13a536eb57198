"""Lookalike's operations, free of gRPC: lists, entries and checks.

The servicer translates protobuf to these calls and back; tests and benchmarks
can reason about behaviour here. CPU-heavy fingerprinting runs outside every
lock, limited to a few at a time so the box is never oversubscribed. Who waits
for a CPU slot is bounded by the threads that can ask (gRPC workers plus the
stream pool); a waiter whose caller has gone (deadline passed, call cancelled)
leaves the queue and never starts its image.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np

from lookalike.client.errors import InvalidArgument, NotFound
from lookalike.index import ListIndex
from lookalike.index.list_index import PDQ_SCAN_BUDGET, VECTOR_SCAN_BUDGET
from lookalike.server.changes import EntriesAdded, EntryConfirmed, EntryRemoved, ListCreated, ListDeleted, ListUpdated
from lookalike.server.embedder import MODELS
from lookalike.server.fingerprint import Fingerprinted, Hashes, Place, ViewHashes
from lookalike.server.flood import FloodGuard, FloodSettings
from lookalike.server.hashes import HashAdd, hash_entry, pdq_dihedral
from lookalike.server.indexes import IndexRegistry
from lookalike.server.keypoints import agreeing_keypoints
from lookalike.server.metrics import ListSize, Metrics
from lookalike.server.records import (
    LIST_KIND_ALLOW,
    LIST_KIND_DISALLOW,
    AddOutcome,
    EntryRecord,
    ListRecord,
    NewEntry,
    encode_embedding,
    validate_entry_id,
    validate_list_name,
    validate_meta,
)
from lookalike.server.scoring import (
    DEFAULT_REJECT_THRESHOLD,
    DEFAULT_REVIEW_THRESHOLD,
    PDQ_MIN_QUALITY,
    PDQ_SEARCH_RADIUS,
    Evidence,
    may_reject,
    score,
)
from lookalike.server.slots import FairSlots
from lookalike.server.storage.errors import StorageFull
from lookalike.server.storage.store import Store
from lookalike.server.workers import FingerprintWorkers
from lookalike.server.writes import WritePath, Writes

ACCEPT, REVIEW, REJECT = "accept", "review", "reject"
log = logging.getLogger(__name__)
_STRICTNESS = {ACCEPT: 0, REVIEW: 1, REJECT: 2}
CAUSE_ALLOW_LIST = "allow_list"
CAUSE_FLOOD_GUARD = "flood_guard"
DEFAULT_ALLOW_MARGIN = 0.1
STORED_CANDIDATES = 100
"""Nearest entries a check keeps (list, id, score) for calibration; the reply may show fewer."""
EMBEDDING_CANDIDATES = 10
"""Nearest embeddings fetched per list and check when the caller asks for fewer."""
KEYPOINT_CANDIDATES = 3
"""Candidates per list whose keypoints a check compares with its own when none of the list's reaches review."""
KEYPOINT_COSINE = 0.30
"""...and only those the embedding finds this close: 4–8 % of the benchmark's unrelated pictures have one, and
two in three of the copies missed without keypoints have their entry among them (docs/tuning.md, Matching)."""
MAX_TOP_K = 1000
EXPORT_PAGE = 1000
"""Entries read per store transaction (and sent per message) by an export."""


def _caller_always_waits() -> None:
    """Outside a request (tests, benchmarks, start-up) nobody can give up."""


raise_if_abandoned: ContextVar[Callable[[], None]] = ContextVar("raise_if_abandoned", default=_caller_always_waits)
"""Set per request by the servicer: raises `DeadlineExceeded`/`Cancelled` once the caller has gone."""


def _no_deadline() -> float | None:
    return None


time_remaining: ContextVar[Callable[[], float | None]] = ContextVar("time_remaining", default=_no_deadline)
"""Set per request by the servicer: seconds left before the caller's deadline (None: it set none)."""


def wait_budget(cap: float) -> float:
    """Seconds a wait may take: `cap`, less when the caller's deadline comes sooner (a little kept to answer)."""
    remaining = time_remaining.get()()
    return cap if remaining is None else max(0.0, min(cap, remaining - 0.1))


@dataclass(frozen=True)
class Match:
    list: str
    entry: EntryRecord
    score: float
    evidence: Evidence
    decision: str
    list_kind: str = LIST_KIND_DISALLOW
    guarded: bool = False
    """The entry is under flood guard: a reject-level match counts as review."""


@dataclass(frozen=True)
class Downgrade:
    """Why a decision is milder than the matches alone would make it."""

    cause: str
    list: str
    entry_id: str
    before: str
    after: str
    reason: str


@dataclass(frozen=True)
class Candidate:
    """One entry a check came near, kept with the stored result for calibration."""

    list: str
    id: str
    score: float


@dataclass(frozen=True)
class CheckResult:
    request_id: str
    timestamp: float
    hashes: Hashes
    decision: str
    matches: list[Match]
    meta: dict[str, str] = field(default_factory=dict)
    downgrades: list[Downgrade] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    """Every entry scored, best first (up to `STORED_CANDIDATES`), whatever the reply shows."""
    list_decisions: dict[int, str] = field(default_factory=dict, compare=False)
    """The decision each list covered gave on its own, by list uid (its strictest match, flood guard applied;
    accept when nothing came near; allow lists accept): for the hourly counts, never stored."""


@dataclass(frozen=True)
class PreparedAdd:
    record: ListRecord
    entry: NewEntry


@dataclass(frozen=True)
class AddRequest:
    data: bytes
    meta: dict[str, str]
    id: str = ""


def decide(value: float, record: ListRecord) -> str:
    if value >= record.reject_threshold:
        return REJECT
    if value >= record.review_threshold:
        return REVIEW
    return ACCEPT


def _rank(match: Match) -> tuple[float, float, str, int]:
    """Best score first; among equal scores, the closer embedding."""
    similarity = match.evidence.embedding_similarity
    return (-match.score, -(similarity if similarity is not None else -1.0), match.list, match.entry.seq)


def hamming(a: bytes, b: bytes) -> int | None:
    """Bits that differ between two hashes of one length; None when the lengths differ."""
    if len(a) != len(b):
        return None
    return int(np.bitwise_count(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def nearest_hamming(variants: Sequence[bytes], entry_hash: bytes) -> int | None:
    """The fewest bits any of the query's variants differs from the entry's hash by; None without a comparable pair."""
    distances = [hamming(variant, entry_hash) for variant in variants] if entry_hash else []
    return min((distance for distance in distances if distance is not None), default=None)


def nearest_bits(variants: Sequence[bytes], listed: bytes) -> int:
    """Smallest Hamming distance from any of a picture's PDQ variants to a listed code."""
    return nearest_bits_each(variants, [listed])[0]


def _bits_apart(codes: Sequence[bytes], listed: Sequence[bytes]) -> np.ndarray:
    """[code, listed code]: the bits in which each of `codes` differs from each listed code, in one array operation."""
    queries = np.frombuffer(b"".join(codes), np.uint8).reshape(len(codes), 1, -1)
    entries = np.frombuffer(b"".join(listed), np.uint8).reshape(len(listed), -1)
    table: np.ndarray = np.bitwise_count(queries ^ entries).sum(axis=2)
    return table


def nearest_bits_each(variants: Sequence[bytes], listed: Sequence[bytes]) -> list[int]:
    """`nearest_bits` of several listed codes at once (a check scores ten or more)."""
    if not listed:
        return []
    return [int(bits) for bits in _bits_apart(variants, listed).min(axis=0)]


def _nearest_views(
    views: Sequence[tuple[ViewHashes, Place]], listed: dict[int, bytes]
) -> dict[int, tuple[int, ViewHashes, Place]]:
    """Per listed PDQ code (by seq): the fewest bits any view's PDQ differs from it by, and that view."""
    if not views or not listed:
        return {}
    bits = _bits_apart([view.pdq for view, _ in views], list(listed.values()))
    nearest = bits.argmin(axis=0)
    return {
        seq: (int(bits[view, column]), *views[view])
        for column, (seq, view) in enumerate(zip(listed, nearest.tolist(), strict=True))
    }


def best_similarities(views: np.ndarray, stored: dict[int, np.ndarray]) -> dict[int, tuple[float, int]]:
    """Each stored vector's best cosine with any view of the picture, and that view's row, in one matrix product."""
    if not stored:
        return {}
    table = views @ np.stack(list(stored.values())).T
    nearest = table.argmax(axis=0)
    similarities = table[nearest, np.arange(len(stored))]
    return dict(zip(stored, zip(similarities.tolist(), nearest.tolist(), strict=True), strict=True))


class LookalikeService:
    """Lists, entries and checks over one store, its indexes and a fingerprinter."""

    def __init__(
        self,
        store: Store,
        workers: FingerprintWorkers,
        default_model: str,
        cpu_slots: int,
        metrics: Metrics | None = None,
        flood: FloodSettings | None = None,
        allow_margin: float = DEFAULT_ALLOW_MARGIN,
        scan_budgets: tuple[int, int] = (VECTOR_SCAN_BUDGET, PDQ_SCAN_BUDGET),
    ) -> None:
        self.store = store
        self.indexes = IndexRegistry(store, scan_budgets=scan_budgets)
        self.workers = workers
        self.default_model = default_model
        self.metrics = metrics or Metrics()
        # With worker processes, each may hold an image waiting beside the one it works on: as many more slots.
        self._cpu = FairSlots(cpu_slots + workers.queued)
        self.flood = FloodGuard(store, flood or FloodSettings())
        self.writes = WritePath(store, self.indexes, self.flood)
        """Every change is applied here (`WritePath.apply`)."""
        self.writer: Writes = self.writes
        """Where the service sends its changes: `writes` on a single node, the change log in cluster mode."""
        self.allow_margin = allow_margin

    def load(self) -> None:
        """Load every list's index (snapshot + replay); the server is not ready before. Lists stored
        before hash-only entries were counted get counted on a thread (until then, picture checks
        scan their PDQ codes for every rotation and mirror, as before)."""
        self.indexes.load_all()
        uncounted = [record.name for record in self.store.lists() if record.pdq_only_count is None]
        if uncounted:
            threading.Thread(
                target=self._count_pdq_only, args=(uncounted,), name="count-hash-only", daemon=True
            ).start()

    def _count_pdq_only(self, names: list[str]) -> None:
        for name in names:
            try:
                if self.store.count_pdq_only(name):
                    log.info("list %s: hash-only entries counted", name)
            except StorageFull:  # the next start counts again
                return

    # Lists ---------------------------------------------------------------

    def create_list(
        self,
        name: str,
        description: str = "",
        review_threshold: float | None = None,
        reject_threshold: float | None = None,
        model: str = "",
        actor: str = "",
        dihedral: bool = True,
        kind: str = "",
        thumbnails: bool = False,
        keypoints: bool = True,
    ) -> ListRecord:
        model = model or self.default_model
        if model not in MODELS:
            raise InvalidArgument(f"model {model[:80]!r} is unknown; use one of {', '.join(MODELS)}", "MODEL_UNKNOWN")
        review = DEFAULT_REVIEW_THRESHOLD if review_threshold is None else review_threshold
        reject = DEFAULT_REJECT_THRESHOLD if reject_threshold is None else reject_threshold
        if reject_threshold is None and review > reject:
            reject = review
        change = ListCreated(
            time=time.time(),
            actor=actor,
            name=name,
            description=description,
            review_threshold=review,
            reject_threshold=reject,
            model=model,
            dihedral=dihedral,
            kind=kind or LIST_KIND_DISALLOW,
            thumbnails=thumbnails,
            keypoints=keypoints,
        )
        return self.writer.apply(change)

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
        keypoints: bool | None = None,
    ) -> ListRecord:
        """Change the settings given (None: as they are); `cause` says what made the change when not a person's
        direct edit (e.g. "calibrate"), and is audited. Turning `thumbnails` or `keypoints` off deletes those
        the list keeps."""
        change = ListUpdated(
            time=time.time(),
            actor=actor,
            name=name,
            description=description,
            review_threshold=review_threshold,
            reject_threshold=reject_threshold,
            dihedral=dihedral,
            thumbnails=thumbnails,
            keypoints=keypoints,
            cause=cause,
        )
        return self.writer.apply(change)

    def delete_list(self, name: str, actor: str = "") -> ListRecord:
        return self.writer.apply(ListDeleted(time=time.time(), actor=actor, name=name))

    def _list_and_index(self, name: str) -> tuple[ListRecord, ListIndex]:
        record = self.store.get_list(name)
        index = self.indexes.get(record.uid)
        if index is None:
            raise NotFound(f"list {name!r} does not exist", "LIST_NOT_FOUND")
        return record, index

    # Entries -------------------------------------------------------------

    @contextmanager
    def cpu_slot(self) -> Iterator[None]:
        """Hold one of the few CPU slots, in arrival order; a request whose caller has gone
        leaves the line instead of starting work nobody will read."""
        with self._cpu.hold(raise_if_abandoned.get()):
            yield

    def fingerprint(
        self,
        data: bytes,
        embed: Sequence[str] = (),
        views: Sequence[str] = (),
        thumbnail: bool = False,
        keypoints: bool = False,
        view_hashes: bool = False,
    ) -> Fingerprinted:
        """Hashes, plus embeddings (`embed`) and check views (`views`) of the models named, a thumbnail, the
        keypoints an entry keeps, and the PDQ and pHash of every view a check looks at (`view_hashes`)."""
        with self.cpu_slot():
            self.metrics.fingerprints_started.inc()
            fingerprinted = self.workers.compute(data, embed, views, thumbnail, keypoints, view_hashes)
        for stage, seconds in fingerprinted.stage_seconds:
            self.metrics.observe_stage(stage, seconds)
        return fingerprinted

    def list_sizes(self) -> list[ListSize]:
        """Entries (from the store) and estimated index memory of every list, for metrics."""
        sizes = []
        for record in self.store.lists():
            index = self.indexes.get(record.uid)
            sizes.append(ListSize(record.name, record.entry_count, 0 if index is None else index.memory_bytes()))
        return sizes

    def add_entries(
        self, list_name: str, requests: Sequence[AddRequest], actor: str = ""
    ) -> list[AddOutcome | Exception]:
        """Fingerprint and store several images in one transaction; per-item errors are returned."""
        prepared: list[PreparedAdd | Exception] = []
        for request in requests:
            try:
                prepared.append(self.prepare_add(list_name, request))
            except Exception as error:  # noqa: BLE001 - reported per item
                prepared.append(error)
        return self.store_prepared(prepared, actor)

    def prepare_add(self, list_name: str, request: AddRequest) -> PreparedAdd:
        """The CPU-heavy half of an add: validate, fingerprint, embed. No lock held."""
        record, _ = self._list_and_index(list_name)
        if request.id:
            validate_entry_id(request.id)
        validate_meta(request.meta)
        # Same bytes already listed: the add is a no-op, so skip the model.
        known = self.store.seq_for_digest(record.uid, hashlib.sha256(request.data).digest()) is not None
        fingerprint = self.fingerprint(
            request.data,
            embed=() if known else (record.model,),
            thumbnail=record.thumbnails and not known,
            keypoints=record.keypoints and not known,
        )
        hashes = fingerprint.hashes
        embedding = fingerprint.embeddings.get(record.model)
        entry = NewEntry(
            id=request.id or uuid.uuid4().hex,
            sha256=hashes.sha256,
            pdq=hashes.pdq,
            pdq_quality=hashes.pdq_quality,
            phash=hashes.phash,
            embedding=b"" if embedding is None else encode_embedding(embedding),
            meta=dict(request.meta),
            md5=hashes.md5,
            thumbnail=fingerprint.thumbnail or b"",
            keypoints=fingerprint.keypoints or b"",
        )
        return PreparedAdd(record, entry)

    def add_hashes(self, list_name: str, items: Sequence[HashAdd], actor: str = "") -> list[AddOutcome | Exception]:
        """Store entries given by their hashes in one transaction; per-item errors are returned."""
        record, _ = self._list_and_index(list_name)
        prepared: list[PreparedAdd | Exception] = []
        for item in items:
            try:
                prepared.append(PreparedAdd(record, hash_entry(item, record)))
            except Exception as error:  # noqa: BLE001 - reported per item
                prepared.append(error)
        return self.store_prepared(prepared, actor)

    def export_entries(
        self, list_name: str, with_embeddings: bool = False
    ) -> Iterator[list[tuple[EntryRecord, bytes | None]]]:
        """A list's entries in the order added, a page at a time (embeddings as float32 bytes when asked).

        Entries added while the export runs may or may not be included; removed ones may still be."""
        record = self.store.get_list(list_name)
        after = 0
        while page := self.store.entries_page(record.uid, after, EXPORT_PAGE, with_embeddings):
            yield page
            after = page[-1][0].seq

    def store_prepared(
        self, prepared: Sequence[PreparedAdd | Exception], actor: str = ""
    ) -> list[AddOutcome | Exception]:
        """The committing half: consecutive adds to one list share a transaction (and its audit records)."""
        results: list[AddOutcome | Exception] = []
        position = 0
        while position < len(prepared):
            item = prepared[position]
            if isinstance(item, Exception):
                results.append(item)
                position += 1
                continue
            run = [item]
            while position + len(run) < len(prepared):
                following = prepared[position + len(run)]
                if isinstance(following, Exception) or following.record.uid != item.record.uid:
                    break
                run.append(following)
            change = EntriesAdded(
                time=time.time(),
                actor=actor,
                list=item.record.name,
                model=item.record.model,
                entries=tuple(p.entry for p in run),
            )
            try:
                results.extend(self.writer.apply(change))
            except Exception as error:  # noqa: BLE001 - the whole run failed (list deleted, storage full)
                results.extend([error] * len(run))
            position += len(run)
        return results

    def remove_entry(self, list_name: str, entry_id: str, actor: str = "") -> EntryRecord:
        return self.writer.apply(EntryRemoved(time=time.time(), actor=actor, list=list_name, entry_id=entry_id))

    def confirm_entry(self, list_name: str, entry_id: str, actor: str = "") -> EntryRecord:
        """Lift an entry's flood guard and take its present match rate as usual (audited, with what this
        node's guard saw)."""
        record = self.store.get_list(list_name)
        entry = self.store.get_entry(list_name, entry_id)
        detail = self.flood.confirmation(record.uid, entry.seq)
        change = EntryConfirmed(time=time.time(), actor=actor, list=list_name, entry_id=entry_id, detail=detail)
        return self.writer.apply(change)

    # Checks --------------------------------------------------------------

    def check(
        self,
        data: bytes,
        lists: Sequence[str] = (),
        meta: dict[str, str] | None = None,
        top_k: int = 0,
        min_score: float | None = None,
        request_id: str = "",
        scope: Collection[str] | None = None,
    ) -> CheckResult:
        """Match one image against the named lists (all when none); the strictest list decides.

        `scope` narrows "all" to the lists a caller may check (None: no limit). Allow
        lists are policy: every check includes them, named or not, in scope or not.
        Flood-guarded entries reject no more (review instead), then allow-list matches
        may lower the decision (`_apply_allow_lists`); each step is reported as a `Downgrade`.
        """
        targets = self._check_targets(lists, meta, top_k, min_score, scope)
        models = sorted({r.model for r, index in targets if index.vector_count})
        fingerprint = self.fingerprint(data, views=models, view_hashes=True)

        @cache
        def keypoints() -> bytes:
            with self.cpu_slot():
                return self.workers.query_keypoints(data)

        return self._matched(fingerprint, targets, meta, top_k, min_score, request_id, keypoints)

    def check_hashes(
        self,
        hashes: Hashes,
        lists: Sequence[str] = (),
        meta: dict[str, str] | None = None,
        top_k: int = 0,
        min_score: float | None = None,
        request_id: str = "",
        scope: Collection[str] | None = None,
    ) -> CheckResult:
        """Match hashes computed elsewhere: PDQ by distance (with its eight rotations and mirrors,
        derived from the hash, on lists that ask for them), digests exactly. No embedding: entries
        score on PDQ alone, the same scale a picture's check gives them without one."""
        if not (hashes.pdq or hashes.md5 or hashes.sha256):
            raise InvalidArgument("a check by hashes needs a PDQ hash, an MD5 or a SHA-256", "HASH_MISSING")
        targets = self._check_targets(lists, meta, top_k, min_score, scope)
        query = Fingerprinted(hashes, pdq_dihedral(hashes.pdq) if hashes.pdq else (), {}, {})
        return self._matched(query, targets, meta, top_k, min_score, request_id)

    def _check_targets(
        self,
        lists: Sequence[str],
        meta: dict[str, str] | None,
        top_k: int,
        min_score: float | None,
        scope: Collection[str] | None,
    ) -> list[tuple[ListRecord, ListIndex]]:
        """The lists a check covers, once its arguments are found valid: those named (else all in
        `scope`), and every allow list, which is policy."""
        if top_k < 0 or top_k > MAX_TOP_K:
            raise InvalidArgument(f"top_k must lie in [0, {MAX_TOP_K}], got {top_k}", "TOP_K_OUT_OF_RANGE")
        if min_score is not None and not 0.0 <= min_score <= 1.0:
            raise InvalidArgument(f"min_score must lie in [0, 1], got {min_score}", "MIN_SCORE_OUT_OF_RANGE")
        validate_meta(meta or {})  # echoed back: bounded as an entry's meta is
        for name in lists:
            validate_list_name(name)
        if lists:
            targets = [self._list_and_index(name) for name in dict.fromkeys(lists)]
        else:
            targets = [
                (record, index)
                for record in self.store.lists()
                if (scope is None or record.name in scope) and (index := self.indexes.get(record.uid)) is not None
            ]
        named = {record.uid for record, _ in targets}
        return targets + [
            (record, index)
            for record in self.store.lists()
            if record.kind == LIST_KIND_ALLOW
            and record.uid not in named
            and (index := self.indexes.get(record.uid)) is not None
        ]

    def _matched(
        self,
        fingerprint: Fingerprinted,
        targets: Sequence[tuple[ListRecord, ListIndex]],
        meta: dict[str, str] | None,
        top_k: int,
        min_score: float | None,
        request_id: str,
        query_keypoints: Callable[[], bytes] | None = None,
    ) -> CheckResult:
        candidates: list[Match] = []
        allowing: list[Match] = []
        downgrades: list[Downgrade] = []
        list_decisions: dict[int, str] = {}
        for record, index in targets:
            found = self._match_list(record, index, fingerprint, max(top_k, EMBEDDING_CANDIDATES), query_keypoints)
            if record.kind == LIST_KIND_ALLOW:
                found = [replace(m, decision=ACCEPT, list_kind=LIST_KIND_ALLOW) for m in found]
                allowing += [m for m in found if m.score >= record.review_threshold]
            else:
                found = self._apply_flood_guard(record, found, downgrades)
            candidates.extend(found)
            list_decisions[record.uid] = max((m.decision for m in found), key=_STRICTNESS.__getitem__, default=ACCEPT)
        candidates.sort(key=_rank)
        decision = max(
            (m.decision for m in candidates if m.list_kind == LIST_KIND_DISALLOW),
            key=_STRICTNESS.__getitem__,
            default=ACCEPT,
        )
        decision = self._apply_allow_lists(decision, candidates, allowing, downgrades)
        if min_score is not None:
            shown = [m for m in candidates if m.score >= min_score]
        elif top_k:
            shown = candidates
        else:
            allowed = {(m.list, m.entry.seq) for m in allowing}
            shown = [m for m in candidates if m.decision != ACCEPT or (m.list, m.entry.seq) in allowed]
        return CheckResult(
            request_id=request_id or uuid.uuid4().hex,
            timestamp=time.time(),
            hashes=fingerprint.hashes,
            decision=decision,
            matches=shown[: top_k or MAX_TOP_K],
            meta=dict(meta or {}),
            downgrades=downgrades,
            candidates=[Candidate(m.list, m.entry.id, m.score) for m in candidates[:STORED_CANDIDATES]],
            list_decisions=list_decisions,
        )

    def validate_check(
        self, lists: Sequence[str], meta: dict[str, str] | None, top_k: int, min_score: float | None
    ) -> None:
        """What a check would refuse before any work, asked when a check is deferred."""
        self._check_targets(lists, meta, top_k, min_score, None)

    def _apply_flood_guard(self, record: ListRecord, found: list[Match], downgrades: list[Downgrade]) -> list[Match]:
        """Count this check's reject-level matches per entry; a guarded entry's reject becomes a review."""
        self.flood.observe(record, [m.entry for m in found if m.decision == REJECT])
        marked = []
        for match in found:
            guard = self.flood.guard_of(record.uid, match.entry.seq)
            if guard is None:
                marked.append(match)
                continue
            if match.decision == REJECT:
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(guard.since))
                downgrades.append(
                    Downgrade(
                        CAUSE_FLOOD_GUARD,
                        record.name,
                        match.entry.id,
                        REJECT,
                        REVIEW,
                        f"entry {match.entry.id!r} of list {record.name!r} has matched far more often than usual "
                        f"since {since}; its matches go to review until an admin confirms it",
                    )
                )
                self.metrics.flood_downgrades.labels(record.name).inc()
                match = replace(match, decision=REVIEW)
            marked.append(replace(match, guarded=True))
        return marked

    def _apply_allow_lists(
        self, decision: str, candidates: list[Match], allowing: list[Match], downgrades: list[Downgrade]
    ) -> str:
        """An allow-list match at or above its list's review threshold (score A) against the best
        flagging disallow match (score D): A ≥ D accepts; otherwise a reject stands only when its best
        reject-level match beats A by `allow_margin`, else it becomes a review."""
        if decision == ACCEPT or not allowing:
            return decision
        best_allow = max(allowing, key=lambda m: m.score)
        flagging = [m for m in candidates if m.list_kind == LIST_KIND_DISALLOW and m.decision != ACCEPT]
        best_flag = max(flagging, key=lambda m: m.score)
        after = decision
        best_reject = max((m.score for m in flagging if m.decision == REJECT), default=0.0)
        if decision == REJECT and best_reject - best_allow.score < self.allow_margin - 1e-9:
            after = REVIEW
        if after == REVIEW and best_allow.score >= best_flag.score:
            after = ACCEPT
        if after == decision:
            return decision
        if after == ACCEPT:
            why = f"scores {best_allow.score:.3f}, at least as high as the best disallow match ({best_flag.score:.3f})"
        else:
            why = (
                f"scores {best_allow.score:.3f}, within {self.allow_margin:g} of the best rejecting match "
                f"({best_reject:.3f}): a reject needs a clearly better disallow match"
            )
        downgrades.append(
            Downgrade(
                CAUSE_ALLOW_LIST,
                best_allow.list,
                best_allow.entry.id,
                decision,
                after,
                f"allow-list entry {best_allow.entry.id!r} of list {best_allow.list!r} {why}",
            )
        )
        return after

    def _match_list(
        self,
        record: ListRecord,
        index: ListIndex,
        fingerprint: Fingerprinted,
        k: int,
        query_keypoints: Callable[[], bytes] | None,
    ) -> list[Match]:
        hashes = fingerprint.hashes
        exact = self.store.seq_for_digest(record.uid, hashes.sha256) if hashes.sha256 else None
        exact_md5 = self.store.seq_for_md5(record.uid, hashes.md5) if hashes.md5 else None
        variants = fingerprint.pdq_variants if record.dihedral else fingerprint.pdq_variants[:1]
        phashes = (fingerprint.phash_variants or (hashes.phash,)) if hashes.phash else ()
        phashes = phashes if record.dihedral else phashes[:1]
        views = fingerprint.views.get(record.model)
        # When every hashed entry also has an embedding, the embedding search finds turned and mirrored copies
        # (SSCD sees through them), so the PDQ search looks up the picture as it is: one scan of the codes, not
        # eight. Each candidate's distance still counts every variant, below.
        narrowed = views is not None and record.pdq_only_count == 0 and len(variants) > 1
        # The check's other views (pictures inside it, other frames) are looked up as they are; their
        # distances are kept apart, below, each with its own quality.
        places = fingerprint.places
        inside = [
            (view, place)
            for view, place in zip(fingerprint.view_hashes, places[1:], strict=True)
            if view.pdq_quality >= PDQ_MIN_QUALITY
        ]
        searched = (variants[:1] if narrowed else variants) + tuple(view.pdq for view, _ in inside)
        with self.metrics.stage("pdq_search"):
            pdq_hits = {hit.id: hit.distance for hit in index.search_pdq(searched, PDQ_SEARCH_RADIUS)}
        similarities: dict[int, tuple[float, int]] = {}  # the best cosine, and the row of `views` it is with
        if views is not None:
            with self.metrics.stage("vector_search"):
                similarities = {hit.id: (hit.similarity, hit.view) for hit in index.search_vectors(views, k)}
        seqs = set(pdq_hits) | set(similarities) | {seq for seq in (exact, exact_md5) if seq is not None}
        if not seqs:
            return []
        entries = self.store.entries_by_seq(record.uid, sorted(seqs))
        missing = [seq for seq in entries if seq not in similarities]
        if missing and views is not None:
            similarities.update(best_similarities(views, self.store.embeddings(record.uid, missing)))
        # Entries found otherwise (embedding, digest) or by fewer variants still get their PDQ distance, in one go.
        unsearched = (
            [seq for seq, entry in entries.items() if entry.pdq and (narrowed or inside or seq not in pdq_hits)]
            if variants
            else []
        )
        measured = nearest_bits_each(variants, [entries[seq].pdq for seq in unsearched])
        pdq_distances = pdq_hits | dict(zip(unsearched, measured, strict=True))
        view_distances = _nearest_views(inside, {seq: entry.pdq for seq, entry in entries.items() if entry.pdq})
        whole = places[0] if places else None
        matches = []
        for seq, entry in entries.items():
            distance, quality, pdq_place = pdq_distances.get(seq), hashes.pdq_quality, whole
            phash_distance = nearest_hamming(phashes, entry.phash)
            in_view = view_distances.get(seq)
            if in_view is not None and (distance is None or quality < PDQ_MIN_QUALITY or in_view[0] < distance):
                # the view nearest by PDQ is judged as that picture alone would be, by its own pHash too
                distance, view, pdq_place = in_view
                quality = view.pdq_quality
                phash_distance = hamming(view.phash, entry.phash) if entry.phash else None
            similarity, nearest_view = similarities.get(seq, (None, 0))
            evidence = Evidence(
                # the digest keys of hash-only entries are no SHA-256 of bytes: confirm with the entry's own
                exact_sha256=seq == exact and entry.sha256 == hashes.sha256,
                exact_md5=seq == exact_md5,
                pdq_distance=distance,
                pdq_quality=min(quality, entry.pdq_quality) if entry.pdq else 0,
                embedding_similarity=None if similarity is None else min(1.0, similarity),
                model=entry.model,
                phash_distance=phash_distance,
                pdq_place=pdq_place if distance is not None else None,
                embedding_place=places[nearest_view] if similarity is not None and places else None,
            )
            matches.append(_judged(record, entry, evidence))
        if query_keypoints is not None and record.keypoints and all(match.decision == ACCEPT for match in matches):
            matches = self._confirmed_by_keypoints(record, matches, query_keypoints)
        return matches

    def _confirmed_by_keypoints(
        self, record: ListRecord, matches: list[Match], query_keypoints: Callable[[], bytes]
    ) -> list[Match]:
        """The matches again, those of the best few unsure candidates whose keypoints agree with the query's
        judged with that evidence too (`server/keypoints.py`): the query's keypoints are found only here."""
        unsure = sorted(
            (m for m in matches if (m.evidence.embedding_similarity or 0.0) >= KEYPOINT_COSINE),
            key=lambda m: -m.score,
        )[:KEYPOINT_CANDIDATES]
        stored = self.store.keypoints(record.uid, [m.entry.seq for m in unsure]) if unsure else {}
        if not stored:
            return matches
        with self.metrics.stage("keypoints"):
            query = query_keypoints()
            agreeing = {seq: agreeing_keypoints(query, entry) for seq, entry in stored.items()}
        return [
            _judged(record, m.entry, replace(m.evidence, keypoints_agreeing=agreeing[m.entry.seq]))
            if agreeing.get(m.entry.seq)
            else m
            for m in matches
        ]


def _judged(record: ListRecord, entry: EntryRecord, evidence: Evidence) -> Match:
    """A candidate's match: its score and the list's decision, which a reject needs `may_reject` for."""
    value = score(evidence)
    decision = decide(value, record)
    if decision == REJECT and not may_reject(evidence):
        decision = REVIEW  # another shot of the scene looks like this: a person tells them apart
    return Match(record.name, entry, value, evidence, decision)
