"""Node-local: the webhook outbox (one delivery per stored check that has a callback URL) and the secret
webhooks are signed with."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from lookalike.server.storage import schema
from lookalike.server.storage.codec import decode_record
from lookalike.server.storage.environment import Environment, Transaction
from lookalike.server.storage.errors import CorruptRecord, corrupt

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Delivery:
    """One webhook's state, as stored."""

    check_id: str
    url: str
    body: str
    state: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    last_status: int = 0
    delivered: float = 0.0
    owner: str = ""
    """Key id of the check's caller ("" for the keyless loopback caller)."""

    @property
    def key(self) -> bytes:
        """The key of its check (and of itself): `owned_key(owner, check id)`."""
        return schema.owned_key(self.owner, self.check_id)


def encode_delivery(delivery: Delivery) -> bytes:
    return json.dumps(asdict(delivery)).encode()


def decode_delivery(raw: bytes | memoryview) -> Delivery:
    """A stored delivery; raises CorruptRecord."""
    return decode_record(Delivery, raw)


class OutboxTable:
    """The deliveries of one data folder."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self._db = environment.db(schema.DB_OUTBOX)

    def secret(self, make: Callable[[], bytes]) -> bytes:
        """The webhook secret kept in the data folder, made by `make` the first time."""
        return self.environment.meta_value(schema.KEY_WEBHOOK_SECRET, make)

    def put(self, txn: Transaction, delivery: Delivery) -> None:
        """Store a delivery in the caller's transaction (with its check)."""
        txn.put(delivery.key, encode_delivery(delivery), db=self._db)

    def store(self, delivery: Delivery) -> None:
        """Store a delivery's new state, in a transaction of its own."""
        with self.environment.transaction() as txn:
            self.put(txn, delivery)

    def get(self, key: bytes) -> Delivery | None:
        """The delivery of the check stored under `key` (`owned_key`)."""
        with self.environment.read() as txn:
            raw = txn.get(key, db=self._db)
        return None if raw is None else decode_delivery(raw)

    def all(self) -> list[Delivery]:
        """Every delivery kept; DATA_LOSS naming the first that does not decode."""
        found = []
        with self.environment.read() as txn:
            for key, raw in txn.cursor(db=self._db):
                try:
                    found.append(decode_delivery(raw))
                except CorruptRecord as error:
                    owner, check_id = schema.split_owned_key(bytes(key))
                    whose = f" of key {owner!r}" if owner else ""
                    raise corrupt(f"the webhook delivery of check {check_id!r}{whose}", error) from None
        return found

    def still_sending(self, txn: Transaction, key: bytes) -> bool:
        raw = txn.get(key, db=self._db)
        return raw is not None and json.loads(bytes(raw))["state"] == PENDING

    def delete(self, txn: Transaction, key: bytes) -> None:
        """Drop a delivery with its expired check."""
        txn.delete(key, db=self._db)
