"""A nats-py client on its own asyncio loop in a background thread, for synchronous callers.

The server's threads are synchronous; nats-py is asyncio. One `Connection` runs the client's loop on a
daemon thread and offers `call(make, timeout)`: the coroutine runs there, and the calling thread waits,
bounded. Connecting and reconnecting go on in the background forever; while NATS is unreachable a call
waits at most `unavailable_after` seconds for it and then raises `Unavailable` (LOG_UNAVAILABLE), rather
than waiting out nats-py's reconnect cycle. A call in flight when the connection drops fails at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from lookalike.client.errors import Internal, InvalidArgument, LookalikeError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

LOG_UNAVAILABLE = "LOG_UNAVAILABLE"
"""The reason every error carries when NATS JetStream cannot be reached or has no leader to answer."""

RECONNECT_WAIT_S = 0.25
"""Pause before trying the same NATS server again; other servers of a cluster are tried at once."""

NO_PEERS_FOR_PLACEMENT = 10005
"""JetStream's code for "no suitable peers for placement" (e.g. "peer offline"): the cluster cannot place
a replicated stream until its servers are back or known to the leader again, so retry later."""

API_TIMEOUT_S = 5.0
"""nats-py's own limit on a JetStream API request; every call is bounded by its caller's timeout anyway."""


HEADER_ROOM = 256
"""Bytes of a message's limit left for its headers (the de-duplication id, JetStream's own)."""


class Stoppable(Protocol):
    def stop(self) -> None: ...


class ConnectionDropped(Exception):
    """The connection dropped while an attempt was waiting for its answer (it may or may not have landed)."""


class Connection:
    """One NATS connection and its JetStream context, usable from any thread.

    `setup(js, clustered)` runs once, on the first successful connection (retried until it succeeds): it
    creates the streams the owner needs; `clustered` says whether the NATS server is part of a cluster.
    Until it has run, calls wait for it like for a reconnect.
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        name: str,
        setup: Callable[[JetStreamContext, bool], Awaitable[None]],
        unavailable_after: float = 1.0,
    ) -> None:
        if not servers or not all(isinstance(url, str) and url.strip() for url in servers):
            raise InvalidArgument("give at least one NATS server URL, like nats://127.0.0.1:4222")
        self.servers = [url.strip() for url in servers]
        self.name = name
        self.unavailable_after = unavailable_after
        self._setup = setup
        self._client = Client()
        self._js: JetStreamContext | None = None
        self._up = asyncio.Event()  # connected and set up
        self._down = asyncio.Event()  # set while disconnected after having been up
        self._setup_done = False
        self._set_up = threading.Event()  # the first connection and set-up are done
        self._setup_error: BaseException | None = None
        self._closed = False
        self.followers: list[Stoppable] = []  # running followers, stopped before the connection closes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nats-{name}", daemon=True)
        self._thread.start()
        self._starting = asyncio.run_coroutine_threadsafe(self._connect(), self._loop)
        self._starting.add_done_callback(_report_failure)

    # -- the loop's side --------------------------------------------------------------------------------

    async def _connect(self) -> None:
        await self._client.connect(
            servers=self.servers,
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # forever, in the background
            reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]  # nats-py annotates int, uses seconds
            connect_timeout=1,
            ping_interval=5,
            max_outstanding_pings=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._client.jetstream(timeout=API_TIMEOUT_S)
        while not self._setup_done:
            try:
                # The server's INFO (which nats-py keeps private) names its cluster, if any; the peers it
                # lists there may be incomplete right after the cluster formed, so they are not counted.
                await self._setup(self._js, bool(self._client._server_info.get("cluster")))
                self._setup_done = True
            except (TimeoutError, nats.errors.Error, OSError, LookalikeError) as error:
                self._setup_error = error
                log.warning("NATS JetStream set-up failed, retrying: %r", error)
                await asyncio.sleep(0.5)
        self._setup_error = None
        if self._client.is_connected:
            self._up.set()
        else:
            self._down.set()  # dropped during set-up: the reconnect callback sets `_up`
        self._set_up.set()
        log.info("connected to NATS at %s", self._client.connected_url.netloc if self._client.connected_url else "?")

    async def _on_error(self, error: Exception) -> None:
        log.debug("NATS client error: %r", error)

    async def _on_disconnected(self) -> None:
        if self._setup_done and not self._closed:
            self._up.clear()
            self._down.set()
            log.warning("disconnected from NATS; reconnecting in the background")

    async def _on_reconnected(self) -> None:
        if self._setup_done:
            self._down.clear()
            self._up.set()
            log.info("reconnected to NATS")

    async def attempt(self, make: Callable[[JetStreamContext], Awaitable[T]], timeout: float, what: str) -> T:
        """One attempt, from code on the loop: waits (bounded) for the connection, then runs `make(js)`.
        Raises `Unavailable` when not connected in time, `ConnectionDropped` when the connection drops
        while waiting for the answer, and NATS's own errors untranslated (for callers that retry)."""
        started = time.monotonic()
        if not self._up.is_set():
            try:
                await asyncio.wait_for(self._up.wait(), min(self.unavailable_after, timeout))
            except TimeoutError:
                failed = self._setup_error
                why = f"setting up JetStream failed: {failed}" if failed else "NATS is unreachable"
                raise self.unavailable(what, why) from None
        assert self._js is not None
        remaining = timeout - (time.monotonic() - started)
        attempt = asyncio.ensure_future(make(self._js))
        dropped = asyncio.ensure_future(self._down.wait())
        try:
            done, _ = await asyncio.wait({attempt, dropped}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            dropped.cancel()
        if attempt in done:
            return attempt.result()
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        if dropped in done:
            raise ConnectionDropped()
        raise self.unavailable(what, f"no answer within {timeout:.1f} s")

    async def _call(self, make: Callable[[JetStreamContext], Awaitable[T]], timeout: float, what: str) -> T:
        try:
            return await self.attempt(make, timeout, what)
        except LookalikeError:
            raise
        except ConnectionDropped:
            raise self.unavailable(what, "the connection to NATS dropped") from None
        except Exception as error:  # noqa: BLE001 - every failure of a NATS call becomes a domain error
            raise self.translate(error, what) from error

    # -- the callers' side ------------------------------------------------------------------------------

    def call(self, make: Callable[[JetStreamContext], Awaitable[T]], timeout: float, what: str) -> T:
        """Run `make(js)` once on the loop and return its result, waiting about `timeout` seconds at most.
        NATS failures raise `Unavailable` (LOG_UNAVAILABLE); `what` completes "cannot ..." in messages."""
        return self.run(self._call(make, timeout, what), timeout, what)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run a coroutine that makes its own attempts on the loop, and wait for it (about `timeout` s)."""
        if self._closed:
            coroutine.close()
            raise Unavailable(f"cannot {what}: the change log was closed", LOG_UNAVAILABLE)
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout + 1.0)  # the coroutine bounds itself; this is a backstop
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self.unavailable(what, f"no answer within {timeout:.1f} s") from None

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the loop soon (for signalling coroutines there); nothing once closed."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback)

    def check_payload(self, size: int, what: str) -> None:
        """Refuse a message NATS would refuse (it drops the connection over one): InvalidArgument."""
        limit = self._client.max_payload - HEADER_ROOM
        if size > limit:
            raise InvalidArgument(
                f"cannot {what}: {size} bytes exceed NATS's max payload of {limit} bytes", "RECORD_TOO_LARGE"
            )

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the connection and set-up; whether they are done."""
        return self._set_up.wait(timeout)

    def unavailable(self, what: str, why: str) -> Unavailable:
        return Unavailable(
            f"cannot {what}: {why} ({', '.join(self.servers)}); retry later, with the same request id for writes",
            LOG_UNAVAILABLE,
        )

    def translate(self, error: Exception, what: str) -> LookalikeError:
        """A NATS failure as a domain error: unreachable, leaderless or short of servers to place replicas on
        is Unavailable, the rest Internal."""
        if isinstance(error, nats.js.errors.APIError) and error.err_code == NO_PEERS_FOR_PLACEMENT:
            return self.unavailable(what, f"JetStream cannot place the replicas yet: {error.description}")
        if isinstance(error, nats.js.errors.APIError) and not (error.code or 0) >= 500:
            return Internal(f"JetStream refused to {what}: {error.description}")
        if isinstance(error, nats.js.errors.NoStreamResponseError):
            return self.unavailable(what, "no JetStream server answered (the stream has no leader)")
        return self.unavailable(what, f"{type(error).__name__} {error}".strip())

    def close(self) -> None:
        """Close the connection and end the loop's thread; idempotent."""
        if self._closed:
            return
        for follower in list(self.followers):
            follower.stop()
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        except Exception as error:  # noqa: BLE001 - closing goes on whatever the client says
            log.debug("closing the NATS connection: %r", error)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._starting.cancel()
        if not self._client.is_closed:
            try:
                await asyncio.wait_for(self._client.close(), 5)
            except (TimeoutError, nats.errors.Error, OSError) as error:
                log.debug("closing the NATS client: %r", error)
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_default_executor()  # snapshot file reads and writes


def _report_failure(connecting: concurrent.futures.Future[None]) -> None:
    """Log a connection attempt that ended by a bug rather than by being cancelled at close."""
    if not connecting.cancelled() and connecting.exception() is not None:
        log.error("connecting to NATS stopped: %r", connecting.exception())
