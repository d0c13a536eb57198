"""Checks: run one now or queue it (defer), record its result, read stored checks back."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from lookalike.client.errors import InvalidArgument, PermissionDenied
from lookalike.server.auth import Access, Action, Caller
from lookalike.server.check_index import ALL_CHECKS, DECISIONS, HOUR, HourCounts, hour_of
from lookalike.server.checks import CheckLedger, CheckOrder, StoredCheck, validate_check_id
from lookalike.server.config import ServerConfig
from lookalike.server.fetch import check_url
from lookalike.server.fingerprint import Hashes
from lookalike.server.hashes import MD5, PDQ, SHA256, parse_quality
from lookalike.server.operations.types import ImageSource
from lookalike.server.records import ADMIN, validate_lists_named
from lookalike.server.service import CheckResult, LookalikeService
from lookalike.server.storage.outbox import Delivery

CHECK_PAGE_DEFAULT = 100
CHECK_PAGE_MAX = 1000
ACTIVITY_HOURS_DEFAULT = 24
ACTIVITY_HOURS_MAX = 31 * 24


@dataclass(frozen=True)
class NewCheck:
    """A check a caller asks for: an image against lists (none named: every list it may check)."""

    image: ImageSource
    lists: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    top_k: int = 0
    min_score: float | None = None
    request_id: str = ""
    """Also the stored check's id; made when empty."""
    callback_url: str = ""
    defer: bool = False


@dataclass(frozen=True)
class HashCheck:
    """A check of hashes computed elsewhere (hex text, unchecked), against lists as in `NewCheck`."""

    pdq: str = ""
    pdq_quality: int | None = None
    md5: str = ""
    sha256: str = ""
    lists: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    top_k: int = 0
    min_score: float | None = None
    request_id: str = ""


@dataclass(frozen=True)
class CheckView:
    """A stored check and, when it has a callback URL, its webhook's delivery."""

    check: StoredCheck
    delivery: Delivery | None = None


@dataclass(frozen=True)
class CheckQuery:
    """A page of stored checks of one decision, newest first."""

    decision: str | None
    """"accept", "review" or "reject"; None when the caller gave none."""
    page_size: int = 0
    """0: CHECK_PAGE_DEFAULT; more than CHECK_PAGE_MAX is read as that."""
    page_token: str = ""
    owner: str | None = None
    """The key whose checks to list; None: the caller's own (an admin's: every key's)."""


@dataclass(frozen=True)
class CheckPage:
    checks: list[StoredCheck]
    next_page_token: str
    """"" when nothing more matches."""


class CheckOperations:
    def __init__(self, service: LookalikeService, config: ServerConfig, access: Access, ledger: CheckLedger) -> None:
        self._service = service
        self._config = config
        self._access = access
        self._ledger = ledger

    def check(self, caller: Caller, order: NewCheck) -> CheckResult | StoredCheck:
        """Run a check and store its result (and, with a callback URL, its webhook); with `defer`, queue it
        and answer with the pending check. A check naming no lists covers every list the caller may check."""
        validate_lists_named(order.lists)
        self._access.require(caller, Action.CHECK, order.lists)
        if order.callback_url:
            self._ledger.validate_callback(order.callback_url)
        if order.defer:
            return self._defer(caller, order)
        if order.request_id:
            if order.callback_url:
                validate_check_id(order.request_id)  # its webhook needs it stored
            self._ledger.claimable(order.request_id, caller.key_id)
        result = self._service.check(
            order.image.read(self._config),
            order.lists,
            order.meta,
            order.top_k,
            order.min_score,
            order.request_id,
            scope=caller.lists,
        )
        self._ledger.record(result, caller.key_id, order.callback_url)
        return result

    def _defer(self, caller: Caller, order: NewCheck) -> StoredCheck:
        """Refuse now what would fail for sure (bad lists or limits, an unreachable image URL); queue the rest."""
        self._service.validate_check(order.lists, order.meta, order.top_k, order.min_score)
        url = order.image.url
        if url:
            check_url(url, self._config.allow_private_urls, self._config.url_timeout)
        stored_order = CheckOrder(
            lists=order.lists,
            meta=order.meta,
            top_k=order.top_k,
            min_score=order.min_score,
            scope=None if caller.lists is None else sorted(caller.lists),
            url=url,
        )
        data = None if url else order.image.read(self._config)
        check_id = order.request_id or uuid.uuid4().hex
        return self._ledger.defer(check_id, caller.key_id, stored_order, data, order.callback_url)

    def check_hashes(self, caller: Caller, order: HashCheck) -> CheckResult:
        validate_lists_named(order.lists)
        self._access.require(caller, Action.CHECK, order.lists)
        pdq = PDQ.parse(order.pdq)
        hashes = Hashes(
            sha256=SHA256.parse(order.sha256),
            pdq=pdq,
            pdq_quality=parse_quality(order.pdq_quality) if pdq else 0,
            phash=b"",
            md5=MD5.parse(order.md5),
        )
        result = self._service.check_hashes(
            hashes,
            order.lists,
            order.meta,
            order.top_k,
            order.min_score,
            order.request_id,
            scope=caller.lists,
        )
        self._ledger.record(result, caller.key_id)  # kept like any check's, for reading back and feedback
        return result

    def readable(self, caller: Caller, check_id: str, owner: str | None) -> StoredCheck:
        """A stored check of the caller's own key, or of the key an admin names as its `owner`."""
        self._access.require(caller, Action.CHECK)
        if owner is not None and owner != caller.key_id and caller.role != ADMIN:
            raise PermissionDenied(
                f"{caller} may read only its own checks: leave out owner (only an admin names another key)",
                "OWNER_NOT_ALLOWED",
            )
        hint = (
            "; name its owner (a key id) to read another key's check" if caller.role == ADMIN and owner is None else ""
        )
        return self._ledger.get(caller.key_id if owner is None else owner, check_id, hint)

    def page(self, caller: Caller, query: CheckQuery) -> CheckPage:
        """Stored checks of one decision, newest first: the caller's own, or (an admin) every key's or the
        owner's it names. For reviewers: the checks whose decision was review."""
        self._access.require(caller, Action.CHECK)
        if query.decision not in DECISIONS:
            raise InvalidArgument("decision is missing: ACCEPT, REVIEW or REJECT", "DECISION_MISSING")
        if query.page_size < 0:
            raise InvalidArgument(f"page_size must be 0 or more, got {query.page_size}", "PAGE_SIZE_INVALID")
        owner = query.owner
        if caller.role != ADMIN:
            if owner not in (None, caller.key_id):
                raise PermissionDenied(
                    f"{caller} may list only its own checks: leave out owner (only an admin names another key)",
                    "OWNER_NOT_ALLOWED",
                )
            owner = caller.key_id
        size = min(query.page_size or CHECK_PAGE_DEFAULT, CHECK_PAGE_MAX)
        checks, next_token = self._ledger.by_decision(query.decision, owner, size, query.page_token)
        return CheckPage(checks, next_token)

    def activity(self, caller: Caller, list_name: str = "", hours: int = 0) -> list[HourCounts]:
        """Checks per clock hour by decision, oldest first, ending with the current hour: of one list (by the
        decision it gave on its own), or of every check ("": admins, who may read every key's doings)."""
        if list_name:
            self._access.require(caller, Action.READ_LISTS, [list_name])
            uid = self._service.store.get_list(list_name).uid
        else:
            self._access.require(caller, Action.READ_AUDIT)
            uid = ALL_CHECKS
        if not 0 <= hours <= ACTIVITY_HOURS_MAX:
            raise InvalidArgument(f"hours must lie in [0, {ACTIVITY_HOURS_MAX}], got {hours}", "HOURS_OUT_OF_RANGE")
        last = hour_of(time.time())
        return self._ledger.index.hours(uid, last - ((hours or ACTIVITY_HOURS_DEFAULT) - 1) * HOUR, last)

    def get(self, caller: Caller, check_id: str, owner: str | None = None) -> CheckView:
        check = self.readable(caller, check_id, owner)
        return CheckView(check, self._ledger.outbox.get(check.key) if check.callback_url else None)

    def webhook_secret(self, caller: Caller) -> str:
        """The secret webhooks are signed with, for receivers to verify them (admin)."""
        self._access.require(caller, Action.MANAGE_KEYS)
        return self._ledger.outbox.secret
