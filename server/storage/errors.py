"""What storage raises: a damaged record (DATA_LOSS, naming it) and a full map or disk (STORAGE_FULL)."""

from __future__ import annotations

from lookalike.client.errors import DataLoss, ResourceExhausted

VERIFY_HINT = "run `lookalike verify DATA_DIR`"
"""Ends every DATA_CORRUPT message (`serve` names its own folder instead of DATA_DIR in start-up errors)."""
STORAGE_RETRY_SECONDS = 1.0
"""How often background writers (stored checks, deferred checks) try again while the disk is full."""


class CorruptRecord(ValueError):
    """A stored record that does not decode as what it should be; the message says how."""


def corrupt(record: str, problem: object) -> DataLoss:
    """DATA_LOSS (DATA_CORRUPT) naming a stored record that cannot be read, and what to run."""
    return DataLoss(f"{record} is corrupt ({problem}); {VERIFY_HINT}", "DATA_CORRUPT")


class StorageFull(ResourceExhausted):
    """RESOURCE_EXHAUSTED with reason STORAGE_FULL: the LMDB map or the disk under it is full. A class of its
    own so that background writers can tell it from other failures, wait and try again, without a traceback."""

    def __init__(self, message: str, reason: str = "STORAGE_FULL") -> None:
        super().__init__(message, reason)
