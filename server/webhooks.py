"""Webhooks: a durable outbox in LMDB and the threads that POST it, signed, retrying with backoff.

A check given a `callback_url` puts its delivery here in the same transaction
that stores its result, so a result is never stored without its webhook, nor
the other way round. Each delivery records its attempts, next attempt time, last
error and HTTP status, which `GetCheck` shows. Sender threads POST the body
(a `CheckRecord` as JSON, rendered once so every attempt sends the same bytes)
with a fresh timestamp and HMAC-SHA256 signature (`client.webhooks`). A 2xx
answer delivers it; anything else (an error status, a refused connection, a
timeout) is retried after an exponentially growing, jittered wait until
`webhook_max_attempts` are used up. The address rules of URL fetching apply
(`server.fetch`): a loopback or private address is refused unless the server
allows private URLs, and a refused address is not retried. On start-up every
pending delivery is scheduled again, so a restart in the middle of retries still
delivers; an attempt interrupted by a crash is made again (receivers deduplicate
by `X-Lookalike-Check-Id`). Deliveries are keyed like the checks they belong to,
by owner and check id (`storage.schema.owned_key`). In cluster mode a check's delivery may be in more than
one node's outbox (a deferred check run again after its taker died): a node sends only while it holds the
check's claim (`shared_state.DeliveryClaims`), and drops its copy once another node settled it.
"""

from __future__ import annotations

import heapq
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from lookalike.client.errors import LookalikeError
from lookalike.server.config import ServerConfig
from lookalike.server.fetch import FetchLimits, post
from lookalike.server.metrics import Metrics
from lookalike.server.shared_state import BUSY, SETTLED, DeliveryClaims, LocalClaims
from lookalike.server.storage.environment import Transaction
from lookalike.server.storage.errors import StorageFull
from lookalike.server.storage.outbox import DELIVERED, FAILED, PENDING, Delivery, OutboxTable
from lookalike.server.storage.store import Store

log = logging.getLogger(__name__)

SENDER_THREADS = 4
"""POSTs in flight at once: a slow receiver holds up only its own deliveries."""
IDLE_POLL_SECONDS = 1.0


def backoff_seconds(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Wait before the next attempt after `attempts` failed ones: doubling from `base` up to `cap`,
    half of it fixed and half random, so many failed receivers do not retry in step."""
    delay = min(cap, base * 2.0 ** max(0, attempts - 1))
    return delay / 2 + (rng or random).uniform(0, delay / 2)


class WebhookOutbox:
    """The deliveries of one server and the threads that send them."""

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        metrics: Metrics,
        headers: Callable[[str, str, bytes], dict[str, str]],
        claims: DeliveryClaims | None = None,
    ) -> None:
        """`headers(secret, check id, body)`: an attempt's headers, signed afresh (the webhook format is
        the transport's: `server.messages` renders bodies and signs them as `lookalike.client.webhooks`
        verifies). `claims`: which node sends each delivery (None: this one, a single node)."""
        self.config = config
        self._claims: DeliveryClaims = claims or LocalClaims()
        self.metrics = metrics
        self._headers = headers
        self.table = OutboxTable(store.environment)
        self.secret = config.webhook_secret or self.table.secret(lambda: secrets.token_urlsafe(32).encode()).decode()
        self._limits = FetchLimits(
            timeout_s=config.webhook_timeout, max_redirects=0, allow_private=config.allow_private_urls
        )
        self._due: list[tuple[float, bytes]] = []
        self._sending: set[bytes] = set()
        self._pending = 0
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # Writing (inside the caller's transaction) -----------------------------------

    def put(self, txn: Transaction, owner: str, check_id: str, url: str, body: bytes) -> Delivery:
        """Store a new delivery in the caller's transaction; `schedule` it once that commits."""
        delivery = Delivery(check_id, url, body.decode(), next_attempt=time.time(), owner=owner)
        self.table.put(txn, delivery)
        return delivery

    def schedule(self, delivery: Delivery) -> None:
        with self._wake:
            self._pending += 1
            heapq.heappush(self._due, (delivery.next_attempt, delivery.key))
            self._wake.notify()

    def get(self, key: bytes) -> Delivery | None:
        """The delivery of the check stored under `key` (`owned_key`)."""
        return self.table.get(key)

    @property
    def pending(self) -> int:
        return self._pending

    # Sending ----------------------------------------------------------------------

    def share(self, claims: DeliveryClaims) -> None:
        """A cluster node that started without NATS: from its next attempt, a delivery is sent by the node
        holding its claim."""
        self._claims = claims

    def start(self) -> None:
        """Schedule every pending delivery found in LMDB, then start the senders."""
        for delivery in self.table.all():
            if delivery.state == PENDING:
                self.schedule(delivery)
        for number in range(SENDER_THREADS):
            thread = threading.Thread(target=self._send_loop, name=f"webhooks-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop sending; a POST in flight finishes (within --webhook-timeout). Pending ones stay stored."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=self.config.webhook_timeout + 5)

    def _next_due(self) -> bytes | None:
        with self._wake:
            while not self._stopping.is_set():
                now = time.time()
                if self._due and self._due[0][0] <= now:
                    _, key = heapq.heappop(self._due)
                    if key in self._sending:
                        continue
                    self._sending.add(key)
                    return key
                wait = IDLE_POLL_SECONDS if not self._due else min(IDLE_POLL_SECONDS, self._due[0][0] - now)
                self._wake.wait(max(0.001, wait))
        return None

    def _send_loop(self) -> None:
        while (key := self._next_due()) is not None:
            try:
                self._attempt(key)
            except StorageFull:  # the store logged it once; the attempt is made again (receivers deduplicate)
                self._reschedule(key, time.time() + self.config.webhook_backoff)
            except Exception:
                log.exception("webhook delivery of check %r failed unexpectedly; will retry", key)
                self._reschedule(key, time.time() + self.config.webhook_backoff)
            finally:
                with self._wake:
                    self._sending.discard(key)

    def _reschedule(self, key: bytes, when: float) -> None:
        with self._wake:
            heapq.heappush(self._due, (when, key))
            self._wake.notify()

    def _attempt(self, key: bytes) -> None:
        delivery = self.get(key)
        if delivery is None or delivery.state != PENDING:
            return
        if delivery.next_attempt > time.time() + 0.001:  # scheduled twice; the later entry is the real one
            return
        try:
            claim = self._claims.claim(key)
        except LookalikeError as unreachable:  # cluster mode, NATS unreachable: it waits, it is not lost
            log.warning("webhook for check %s waits: %s", delivery.check_id, unreachable.message)
            self._reschedule(key, time.time() + self.config.webhook_backoff)
            return
        if claim.outcome == BUSY:  # look again soon: the other node may settle it well before its lease ends
            self._reschedule(key, min(claim.until, time.time() + self.config.webhook_backoff))
            return
        if claim.outcome == SETTLED:
            self.table.store(replace(delivery, state=claim.state, last_error="sent by another node"))
            with self._wake:
                self._pending -= 1
            return
        body = delivery.body.encode()
        headers = self._headers(self.secret, delivery.check_id, body)
        status, error, refused = 0, "", False
        try:
            status = post(delivery.url, body, headers, self._limits)
            if not 200 <= status < 300:
                error = f"the receiver answered HTTP {status}"
        except LookalikeError as failure:
            error = failure.message
            refused = failure.reason == "URL_ADDRESS_REFUSED"
        attempts = delivery.attempts + 1
        if not error:
            outcome, updated = (
                "delivered",
                replace(
                    delivery,
                    state=DELIVERED,
                    attempts=attempts,
                    last_status=status,
                    last_error="",
                    delivered=time.time(),
                ),
            )
        elif refused or attempts >= self.config.webhook_max_attempts:
            outcome = "refused" if refused else "failed"
            updated = replace(delivery, state=FAILED, attempts=attempts, last_status=status, last_error=error)
        else:
            wait = backoff_seconds(attempts, self.config.webhook_backoff, self.config.webhook_backoff_max)
            outcome, updated = (
                "retry",
                replace(
                    delivery, attempts=attempts, last_status=status, last_error=error, next_attempt=time.time() + wait
                ),
            )
        self.table.store(updated)
        self.metrics.webhook_deliveries.labels(outcome).inc()
        if updated.state != PENDING:
            try:
                self._claims.settle(key, updated.state)
            except LookalikeError as unshared:  # another node may send it again once the claim's lease ends
                log.warning("webhook for check %s: its outcome is not shared: %s", delivery.check_id, unshared.message)
        if updated.state == PENDING:
            self._reschedule(key, updated.next_attempt)
        else:
            with self._wake:
                self._pending -= 1
            if outcome != "delivered":
                log.warning(
                    "webhook for check %s to %s gave up after %d attempts: %s",
                    delivery.check_id,
                    delivery.url,
                    attempts,
                    error,
                )
