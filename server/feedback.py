"""Operators' feedback on checks, and threshold calibration from it.

Feedback names a stored check, one of its entries and a verdict; it is kept
(with the time, the key that sent it, and the entry's score in that check) for
good, since calibration needs it long after the check itself has expired.

Calibration reads a list's feedback and the scores of the stored checks against
it (each check's best score on that list) and recommends, on a 0.01 grid:

- reject: just above the highest false positive's score, so no reported false
  positive would have been rejected automatically (never lowered: a miss is
  fixed by review). Its cost: confirmed matches and stored checks that would go
  from reject to review.
- review: lowered to the lowest missed duplicate's score, so each would have been
  reviewed (cost: stored checks newly sent to review); or, with no misses,
  raised just above the false positives left at review level when no confirmed
  match lies in between (cost: stored checks no longer reviewed).

Reports the errors each move fixes, those none can (a false positive scoring 1,
a missed entry the check never came near), and applies them on request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lookalike.client.errors import InvalidArgument
from lookalike.server.records import ListRecord
from lookalike.server.storage.feedback import FeedbackRecord, FeedbackTable
from lookalike.server.storage.store import Store

FALSE_POSITIVE, MISSED_DUPLICATE, CONFIRMED = "false_positive", "missed_duplicate", "confirmed"
VERDICTS = (FALSE_POSITIVE, MISSED_DUPLICATE, CONFIRMED)
NOTE_MAX = 2000
GRID = 100
"""Thresholds are recommended in steps of 1/GRID."""

def validate_note(note: str) -> None:
    if len(note) > NOTE_MAX:
        raise InvalidArgument(f"note is {len(note)} characters; at most {NOTE_MAX}", "NOTE_TOO_LONG")


class FeedbackBook:
    """Feedback records, oldest first."""

    def __init__(self, store: Store) -> None:
        self._table = FeedbackTable(store.environment)

    def add(self, record: FeedbackRecord) -> FeedbackRecord:
        self._table.add(record)
        return record

    def page(
        self, list_name: str = "", since: float = 0.0, limit: int = 1000, page_token: str = ""
    ) -> tuple[list[FeedbackRecord], str]:
        """Up to `limit` records from `since` (or after `page_token`), and the next page's token ("" at the end)."""
        return self._table.page(list_name, since, limit, page_token)

    def for_list(self, list_name: str) -> list[FeedbackRecord]:
        return self._table.for_list(list_name)


# Calibration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdAdvice:
    current: float
    recommended: float
    errors_avoided: int = 0
    errors_left: int = 0
    confirmed_affected: int = 0
    checks_affected: int = 0


@dataclass(frozen=True)
class Calibration:
    list_name: str
    review: ThresholdAdvice
    reject: ThresholdAdvice
    checks_seen: int
    feedback_seen: int
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return (self.review.recommended, self.reject.recommended) != (self.review.current, self.reject.current)


def _just_above(score: float) -> float:
    """The lowest grid step strictly above `score`."""
    return (math.floor(score * GRID + 1e-9) + 1) / GRID


def _at_or_below(score: float) -> float:
    """The highest grid step at or below `score`."""
    return math.floor(score * GRID + 1e-9) / GRID


def _between(scores: Iterable[float], low: float, high: float) -> int:
    return sum(1 for s in scores if low <= s < high)


def calibrate(record: ListRecord, feedback: Sequence[FeedbackRecord], check_scores: Sequence[float]) -> Calibration:
    """Recommended thresholds for one list from its feedback (that list's only: `FeedbackBook.for_list`) and its
    stored checks' best scores (see module doc)."""
    review, reject = record.review_threshold, record.reject_threshold
    false_positives = sorted(f.score for f in feedback if f.verdict == FALSE_POSITIVE and f.score is not None)
    confirmed = [f.score for f in feedback if f.verdict == CONFIRMED and f.score is not None]
    misses = [f for f in feedback if f.verdict == MISSED_DUPLICATE]
    missed_scores = sorted(f.score for f in misses if f.score is not None)
    notes: list[str] = []

    # Reject: above every false positive (that a threshold can still avoid).
    avoidable = [s for s in false_positives if _just_above(s) <= 1.0]
    unavoidable = [s for s in false_positives if _just_above(s) > 1.0]
    new_reject = max(reject, _just_above(avoidable[-1])) if avoidable else reject
    if unavoidable:
        notes.append(
            f"{len(unavoidable)} false positive(s) scored 1.0 (the same bytes, or every signal certain): no threshold "
            "avoids them; remove the entry instead"
        )
    reject_advice = ThresholdAdvice(
        current=reject,
        recommended=new_reject,
        errors_avoided=_between(avoidable, reject, new_reject),
        errors_left=len(unavoidable),
        confirmed_affected=_between(confirmed, reject, new_reject),
        checks_affected=_between(check_scores, reject, new_reject),
    )

    # Review: down to the lowest miss; else up above false positives left at review, if no confirmed match is lost.
    unknown = len(misses) - len(missed_scores)
    if unknown:
        notes.append(
            f"{unknown} missed duplicate(s) were not among the check's nearest entries: no threshold catches them; "
            "add those images to the list"
        )
    below = [s for s in missed_scores if s < review]
    already = len(missed_scores) - len(below)
    if already:
        notes.append(f"{already} missed duplicate(s) already reach review at the current review threshold")
    new_review, avoided, confirmed_lost, moved = review, 0, 0, 0
    if below:
        new_review = _at_or_below(below[0])
        avoided, moved = len(below), _between(check_scores, new_review, review)
    else:
        at_review = [s for s in false_positives if review <= s < new_reject]
        if at_review:
            raised = min(new_reject, _just_above(at_review[-1]))
            losing = _between(confirmed, review, raised)
            if losing:
                notes.append(
                    f"raising review above the false positives at review level would stop reviewing {losing} "
                    "confirmed match(es): left as it is"
                )
            else:
                new_review = raised
                avoided, moved = _between(at_review, review, raised), _between(check_scores, review, raised)
    review_advice = ThresholdAdvice(
        current=review,
        recommended=new_review,
        errors_avoided=avoided,
        errors_left=unknown,
        confirmed_affected=confirmed_lost,
        checks_affected=moved,
    )
    if not feedback:
        notes.append("no feedback on this list yet: nothing to calibrate from")
    return Calibration(record.name, review_advice, reject_advice, len(check_scores), len(feedback), notes)
