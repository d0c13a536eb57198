"""Stored checks by decision, newest first, and checks counted per hour by decision: what the dashboard's review
queue and charts read instead of every stored check.

The ledger (`lookalike.server.checks`) files each finished check by its decision in the transaction that writes
its result, and counts it once in the hourly counts of every check and of each list it covered, by the decision
that list gave on its own (`CheckResult.list_decisions`). Counts outlive the checks (a check replaced or expired
still happened) and are kept `kept_seconds`. How they are kept is `lookalike.server.storage.check_index`'s
business; this module holds what the rest of the server speaks.
"""

from __future__ import annotations

from dataclasses import dataclass

ACCEPT, REVIEW, REJECT = "accept", "review", "reject"
DECISIONS = (ACCEPT, REVIEW, REJECT)
ALL_CHECKS = 0
"""The list uid under which every check is counted (list uids start at 1)."""
HOUR = 3600


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
