"""Feedback on stored checks, and thresholds calibrated from it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from lookalike.client.errors import FailedPrecondition, InvalidArgument, NotFound
from lookalike.server.auth import Access, Action, Caller
from lookalike.server.checks import DONE, CheckLedger
from lookalike.server.feedback import (
    MISSED_DUPLICATE,
    VERDICTS,
    Calibration,
    FeedbackBook,
    calibrate,
    validate_note,
)
from lookalike.server.operations.checking import CheckOperations
from lookalike.server.operations.lists import ListOperations, ListState
from lookalike.server.operations.types import PageRequest
from lookalike.server.records import LIST_KIND_ALLOW
from lookalike.server.service import CheckResult, LookalikeService
from lookalike.server.storage.feedback import FeedbackRecord


@dataclass(frozen=True)
class FeedbackSubmission:
    """A verdict on one entry of a stored check (`entry_id` empty: its best flagging match)."""

    check_id: str
    verdict: str | None
    """One of `feedback.VERDICTS`; None when the caller sent none."""
    entry_id: str = ""
    list: str = ""
    """Needed only for an entry the check did not come near."""
    note: str = ""
    owner: str | None = None
    """The check's owner (a key id), for an admin judging another key's check; None: the caller's own."""


@dataclass(frozen=True)
class CalibrationOutcome:
    calibration: Calibration
    applied: bool
    list: ListState
    """The list after applying (or as it is)."""


class FeedbackOperations:
    def __init__(
        self,
        service: LookalikeService,
        access: Access,
        ledger: CheckLedger,
        book: FeedbackBook,
        checks: CheckOperations,
        lists: ListOperations,
    ) -> None:
        self._service = service
        self._access = access
        self._ledger = ledger
        self._book = book
        self._checks = checks
        self._lists = lists

    def submit(self, caller: Caller, submission: FeedbackSubmission) -> FeedbackRecord:
        """Keep a verdict on a finished check of the caller's (an admin's: of the owner it names)."""
        self._access.require(caller, Action.CHECK)
        verdict = submission.verdict
        if verdict not in VERDICTS:
            raise InvalidArgument(
                "verdict is missing: FALSE_POSITIVE, MISSED_DUPLICATE or CONFIRMED", "VERDICT_MISSING"
            )
        validate_note(submission.note)
        check = self._checks.readable(caller, submission.check_id, submission.owner)
        if check.status != DONE or check.result is None:
            raise FailedPrecondition(
                f"check {check.id!r} is {check.status}: feedback needs a finished check", "CHECK_NOT_DONE"
            )
        list_name, entry_id, score = self._judged_entry(check.result, submission, verdict)
        caller.require(Action.CHECK, [list_name])
        record = FeedbackRecord(
            time.time(),
            caller.key_id,
            check.id,
            list_name,
            entry_id,
            verdict,
            submission.note,
            score,
            check.result.decision,
        )
        return self._book.add(record)

    def _judged_entry(
        self, result: CheckResult, submission: FeedbackSubmission, verdict: str
    ) -> tuple[str, str, float | None]:
        """(list, entry id, its score in the check) that feedback is about."""
        if not submission.entry_id:
            if verdict == MISSED_DUPLICATE:
                raise InvalidArgument("a missed duplicate needs the entry it copies (entry_id)", "ENTRY_ID_MISSING")
            flagged = [m for m in result.matches if m.decision != "accept" and m.list_kind != LIST_KIND_ALLOW]
            if not flagged:
                raise InvalidArgument(
                    "the check flagged no entry; name the entry the feedback is about (entry_id)", "ENTRY_ID_MISSING"
                )
            return flagged[0].list, flagged[0].entry.id, flagged[0].score
        for candidate in result.candidates:
            if candidate.id == submission.entry_id and submission.list in ("", candidate.list):
                return candidate.list, candidate.id, candidate.score
        for match in result.matches:
            if match.entry.id == submission.entry_id and submission.list in ("", match.list):
                return match.list, match.entry.id, match.score
        if not submission.list:
            raise NotFound(
                f"entry {submission.entry_id!r} is not among the check's matches; name its list", "ENTRY_NOT_IN_CHECK"
            )
        if verdict != MISSED_DUPLICATE:
            raise InvalidArgument(
                f"entry {submission.entry_id!r} did not match in this check: only a missed duplicate can name it",
                "ENTRY_NOT_IN_CHECK",
            )
        self._service.store.get_entry(submission.list, submission.entry_id)  # NOT_FOUND when it is not on the list
        return submission.list, submission.entry_id, None

    def page(self, caller: Caller, request: PageRequest) -> tuple[list[FeedbackRecord], str]:
        """Feedback oldest first, and the next page's token ("" at the end) (admin)."""
        self._access.require(caller, Action.READ_FEEDBACK)
        return self._book.page(request.list, request.since, request.size(), request.page_token)

    def calibrate(self, caller: Caller, list_name: str, apply: bool = False) -> CalibrationOutcome:
        """Thresholds that would have avoided the reported errors, from the list's feedback and the scores of
        the stored checks made since it was created; `apply` sets them (audited with cause=calibrate)."""
        self._access.require(caller, Action.CALIBRATE, [list_name])
        record = self._service.store.get_list(list_name)
        if record.kind == LIST_KIND_ALLOW:
            raise FailedPrecondition(
                f"list {record.name!r} is an allow list: its matches never flag, so there is nothing to calibrate",
                "LIST_KIND_ALLOW",
            )
        scores = []
        for check in self._ledger.finished():
            if check.result is None or check.submitted < record.created:
                continue
            mine = [c.score for c in check.result.candidates if c.list == record.name]
            if mine:
                scores.append(max(mine))
        calibration = calibrate(record, self._book.for_list(record.name), scores)
        applied = False
        if apply and calibration.changes:
            record = self._service.update_list(
                record.name,
                review_threshold=calibration.review.recommended,
                reject_threshold=calibration.reject.recommended,
                actor=caller.key_id,
                cause="calibrate",
            )
            applied = True
        return CalibrationOutcome(calibration, applied, self._lists.state(record))
