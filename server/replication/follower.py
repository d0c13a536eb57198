"""Reading a JetStream stream in order, on one thread of its own, across disconnects and server restarts.

A `Follower` pulls batches through an ephemeral pull consumer that starts right after the last sequence
it handed on, and calls its handler for each message on its own thread (never on the NATS loop, so a
slow handler does not stall the connection). It trusts NATS for nothing but the messages: a message at
or below the last handled sequence is skipped (redelivery), and whenever the consumer is lost (a NATS
server restarted, the stream's leader moved, the connection dropped) a new one is opened from the last
handled sequence + 1. When idle it compares the stream's head with what it handled, so a consumer that
silently vanished is replaced rather than waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from lookalike.client.errors import FailedPrecondition, Internal, LookalikeError, Unavailable
from lookalike.server.replication.connection import Connection

log = logging.getLogger(__name__)

BATCH = 256
"""Messages per pull: large enough that a round trip per batch costs little, small enough to stop soon."""

FETCH_WAIT_S = 1.0
"""How long one pull waits for new messages; also how long `stop` may wait for the thread."""

RETRY_S = 0.25
"""Pause after a failed pull or a failed consumer creation (NATS unreachable, no leader yet)."""

CONSUMER_IDLE_S = 30.0
"""The server removes an ephemeral consumer nobody pulled from for this long (one left behind by a crash)."""

Handler = Callable[[int, Msg], None]


class Follower:
    """Hands every message of `stream` after `after_seq` to `handle(seq, msg)`, in order, on one thread.

    `contiguous`: the stream never has holes (the change log), so a missing sequence means it was trimmed
    before this follower got there, and the follower stops with FailedPrecondition (LOG_TRIMMED) instead
    of skipping it. `last_per_subject`: start with the latest message of each subject (a key-value watch).
    A handler that raises stops the follower; `error` then says why. `stop()` ends the thread.
    """

    def __init__(
        self,
        connection: Connection,
        stream: str,
        handle: Handler,
        after_seq: int = 0,
        *,
        filter_subject: str = "",
        contiguous: bool = True,
        last_per_subject: bool = False,
        name: str = "follower",
        on_start: Callable[[], None] | None = None,
    ) -> None:
        """`on_start` runs first on the follower's own thread: per-thread settings the handler's work needs."""
        if after_seq < 0:
            raise ValueError("after_seq must be 0 or a stream sequence")
        self._connection = connection
        self._stream = stream
        self._handle = handle
        self._on_start = on_start
        self._filter_subject = filter_subject
        self._contiguous = contiguous
        self._last_per_subject = last_per_subject
        self._applied = after_seq
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._stop_requested = asyncio.Event()  # the same, for the pull waiting on the loop
        self.error: LookalikeError | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        connection.followers.append(self)
        self._thread.start()

    @property
    def applied_seq(self) -> int:
        """The last sequence handed to the handler (or the starting `after_seq`)."""
        return self._applied

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_for(self, seq: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds until `seq` has been handled; whether it has."""
        with self._changed:
            return self._changed.wait_for(lambda: self._applied >= seq or not self.running, timeout) and (
                self._applied >= seq
            )

    def stop(self) -> None:
        """End the thread after the message in hand; returns once it has ended."""
        self._stopping.set()
        self._connection.call_soon(self._stop_requested.set)
        if threading.current_thread() is not self._thread:
            self._thread.join(FETCH_WAIT_S + 10)

    # -- the follower's thread --------------------------------------------------------------------------

    def _run(self) -> None:
        consumer: _Consumer | None = None
        try:
            if self._on_start is not None:
                self._on_start()
            while not self._stopping.is_set():
                try:
                    if consumer is None:
                        consumer = self._connection.call(self._open, 10.0, f"follow stream {self._stream}")
                    messages = self._connection.call(
                        partial(self._fetch, consumer), FETCH_WAIT_S + 5.0, f"read stream {self._stream}"
                    )
                    if messages is None or (not messages and self._stalled()):
                        self._drop(consumer)
                        consumer = None
                        continue
                except Unavailable as error:
                    log.debug("following %s: %s", self._stream, error)
                    self._drop(consumer)
                    consumer = None
                    self._stopping.wait(RETRY_S)
                    continue
                for message in messages:
                    if self._stopping.is_set():
                        break
                    self._deliver(message)
        except LookalikeError as error:
            self._fail(error)
        except Exception as error:  # noqa: BLE001 - the handler's failure ends the follower, visibly
            log.exception("following %s stopped: the handler failed at sequence %d", self._stream, self._applied + 1)
            self._fail(Internal(f"applying sequence {self._applied + 1} of {self._stream} failed: {error!r}"))
        finally:
            self._drop(consumer)
            with contextlib.suppress(ValueError):
                self._connection.followers.remove(self)
            with self._changed:
                self._changed.notify_all()

    def _deliver(self, message: Msg) -> None:
        seq = message.metadata.sequence.stream
        if seq <= self._applied:
            return  # redelivered: already handled
        if self._contiguous and seq != self._applied + 1:
            raise _trimmed(self._stream, self._applied + 1, seq - 1)
        self._handle(seq, message)
        with self._changed:
            self._applied = seq
            self._changed.notify_all()

    def _fail(self, error: LookalikeError) -> None:
        self.error = error
        log.error("following %s stopped: %s", self._stream, error)

    async def _open(self, js: JetStreamContext) -> _Consumer:
        start = self._applied + 1
        if self._contiguous:
            state = (await js.stream_info(self._stream)).state
            if self._applied > state.last_seq:
                raise FailedPrecondition(
                    f"this node applied {self._stream} up to sequence {self._applied} but the stream ends at "
                    f"{state.last_seq}: the stream was reset; rebuild the node from a snapshot",
                    "LOG_RESET",
                )
            if start < state.first_seq and self._applied < state.last_seq:
                raise _trimmed(self._stream, start, state.first_seq - 1)
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=CONSUMER_IDLE_S,
            mem_storage=True,
            num_replicas=1,
        )
        if self._last_per_subject and self._applied == 0:
            config.deliver_policy = api.DeliverPolicy.LAST_PER_SUBJECT
        else:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start
        if self._filter_subject:
            config.filter_subject = self._filter_subject
        config.name = f"follower-{uuid.uuid4().hex}"
        await js.add_consumer(self._stream, config=config)
        subscription = await js.pull_subscribe_bind(config.name, stream=self._stream)
        return _Consumer(config.name, subscription)

    async def _fetch(self, consumer: _Consumer, _js: JetStreamContext) -> list[Msg] | None:
        """The next batch; [] when none came within the wait (or `stop` was called); None when the
        consumer is gone."""
        pull = asyncio.ensure_future(consumer.subscription.fetch(BATCH, timeout=FETCH_WAIT_S))
        stop = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait({pull, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not pull.done():
            pull.cancel()
            await asyncio.gather(pull, return_exceptions=True)
            return []
        try:
            return pull.result()
        except nats.errors.TimeoutError:
            return []
        except nats.js.errors.APIError as error:
            log.debug("pull failed, reopening the consumer: %r", error)
            return None

    def _stalled(self) -> bool:
        """Idle, yet the stream holds messages past the last handled one: the consumer is lost."""
        state = self._connection.call(lambda js: js.stream_info(self._stream), 5.0, f"read stream {self._stream}").state
        return state.last_seq > self._applied

    def _drop(self, consumer: _Consumer | None) -> None:
        """Unsubscribe and delete the consumer, as far as NATS answers (an abandoned one expires)."""
        if consumer is not None:
            try:
                self._connection.call(lambda js: _close(js, self._stream, consumer), 2.0, "close a consumer")
            except LookalikeError as error:
                log.debug("closing a consumer of %s: %s", self._stream, error)  # it expires by itself


@dataclass(frozen=True)
class _Consumer:
    name: str
    subscription: JetStreamContext.PullSubscription


async def _close(js: JetStreamContext, stream: str, consumer: _Consumer) -> None:
    await consumer.subscription.unsubscribe()
    await js.delete_consumer(stream, consumer.name)


def _trimmed(stream: str, first: int, last: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"sequences {first}..{last} of {stream} were trimmed before this node applied them; restart the node "
        f"once the cluster holds a snapshot at sequence {last} or later: it installs it over its data",
        "LOG_TRIMMED",
    )
