"""A cluster-wide work queue (deferred checks): each item is taken by one node and acknowledged once done.

A work-queue-retention stream holds the items and one durable pull consumer, shared by every node,
hands each to one taker; an item not acknowledged within `ack_wait` (its taker died or stalled) is
handed out again, so work is done at least once. `WorkItem.deliveries` tells a redelivery apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from lookalike.client.errors import InvalidArgument
from lookalike.server.replication.connection import Connection

log = logging.getLogger(__name__)

CONSUMER = "takers"
"""The one durable consumer every node takes from."""


@dataclass
class WorkItem:
    """One item taken from the queue; `ack()` once it is done, or it comes back after the ack wait."""

    data: bytes
    seq: int
    deliveries: int
    _message: Msg = field(repr=False)
    _connection: Connection = field(repr=False)

    def ack(self, timeout: float = 5.0) -> None:
        """Done: remove the item for good (waits for JetStream to confirm)."""
        self._connection.call(lambda _js: self._message.ack_sync(timeout), timeout, "acknowledge a work item")


class WorkQueue:
    """Items in the stream `stream` on the subject `subject`; see the module's docstring."""

    def __init__(
        self, connection: Connection, stream: str, subject: str, ack_wait: float, replicas: Callable[[], int]
    ) -> None:
        if ack_wait <= 0:
            raise InvalidArgument("ack_wait must be positive seconds")
        self._connection = connection
        self.stream = stream
        self.subject = subject
        self.ack_wait = ack_wait
        self._replicas = replicas
        self._taker: JetStreamContext.PullSubscription | None = None
        self._ensured = False

    async def _ensure(self, js: JetStreamContext) -> None:
        if self._ensured:
            return
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                api.StreamConfig(
                    name=self.stream,
                    subjects=[self.subject],
                    retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=api.StorageType.FILE,
                    num_replicas=self._replicas(),
                    duplicate_window=120.0,
                )
            )
        try:
            await js.consumer_info(self.stream, CONSUMER)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(
                self.stream,
                api.ConsumerConfig(
                    durable_name=CONSUMER,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait,
                    deliver_policy=api.DeliverPolicy.ALL,
                    max_ack_pending=-1,
                ),
            )
        self._ensured = True

    def put(self, item: bytes, dedup_id: str = "", timeout: float = 5.0) -> int:
        """Queue `item`; its sequence. A `dedup_id` seen in the last two minutes queues nothing."""
        return self._connection.call(lambda js: self._put(js, item, dedup_id), timeout, f"queue work on {self.stream}")

    async def _put(self, js: JetStreamContext, item: bytes, dedup_id: str) -> int:
        self._connection.check_payload(len(item), f"queue work on {self.stream}")
        await self._ensure(js)
        headers = {api.Header.MSG_ID.value: dedup_id} if dedup_id else None
        return (await js.publish(self.subject, item, stream=self.stream, headers=headers)).seq

    def take(self, wait: float = 1.0) -> WorkItem | None:
        """The next item, waiting up to `wait` seconds for one; None when none came."""
        message = self._connection.call(lambda js: self._take(js, wait), wait + 5.0, f"take work from {self.stream}")
        if message is None:
            return None
        metadata = message.metadata
        return WorkItem(message.data, metadata.sequence.stream, metadata.num_delivered, message, self._connection)

    async def _take(self, js: JetStreamContext, wait: float) -> Msg | None:
        await self._ensure(js)
        if self._taker is None:
            self._taker = await js.pull_subscribe_bind(CONSUMER, stream=self.stream)
        try:
            return (await self._taker.fetch(1, timeout=wait))[0]
        except nats.errors.TimeoutError:
            return None
        except nats.js.errors.APIError as error:
            log.debug("taking work from %s failed, binding again: %r", self.stream, error)
            self._taker = None
            return None
