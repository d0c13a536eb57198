"""Node-local: operators' feedback on checks, kept for good (calibration needs it long after the check)."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass

from lookalike.server.storage import schema
from lookalike.server.storage.codec import decode_record
from lookalike.server.storage.environment import Environment


@dataclass(frozen=True)
class FeedbackRecord:
    time: float
    key_id: str
    check_id: str
    list: str
    entry_id: str
    verdict: str
    note: str = ""
    score: float | None = None
    """The entry's score in the check; None when the check did not come near it."""
    decision: str = ""
    """The check's decision."""


def decode_feedback(raw: bytes | memoryview) -> FeedbackRecord:
    """A stored feedback record; raises CorruptRecord."""
    return decode_record(FeedbackRecord, raw)


class FeedbackTable:
    """Feedback records oldest first (keyed by time, then a random tie-breaker)."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self._db = environment.db(schema.DB_FEEDBACK)

    def add(self, record: FeedbackRecord) -> None:
        key = schema.time_key(record.time) + uuid.uuid4().bytes[: schema.FEEDBACK_TIE_BREAKER_SIZE]
        with self.environment.transaction() as txn:
            txn.put(key, json.dumps(asdict(record)).encode(), db=self._db)

    def page(
        self, list_name: str = "", since: float = 0.0, limit: int = 1000, page_token: str = ""
    ) -> tuple[list[FeedbackRecord], str]:
        """Up to `limit` records from `since` (or after `page_token`), and the next page's token ("" at the end)."""
        key_size = schema.TIME_KEY_SIZE + schema.FEEDBACK_TIE_BREAKER_SIZE
        return self.environment.page(schema.DB_FEEDBACK, key_size, decode_feedback, list_name, since, limit, page_token)

    def for_list(self, list_name: str) -> list[FeedbackRecord]:
        with self.environment.read() as txn:
            found = [decode_feedback(raw) for _, raw in txn.cursor(db=self._db)]
        return [record for record in found if record.list == list_name]
