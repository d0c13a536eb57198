"""What every HTTP route shares: the operations and keys, the settings, and the calls' accounts.

Calls are counted in the same `AdmittedCalls` as gRPC's (one `--max-concurrent-requests` for both),
logged and measured with the same `CallNotes`/`record_call` (one log format, one set of metrics, the
method label being the operation's name), and an export holds one of its key's
`--max-streams-per-key` places as a gRPC export does. Operations block (on CPU slots, LMDB, image
URLs), so they run on `threads`, never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from lookalike.client.errors import ResourceExhausted, Unavailable
from lookalike.server.auth import Access
from lookalike.server.config import ServerConfig
from lookalike.server.metrics import Metrics
from lookalike.server.observability import AdmittedCalls
from lookalike.server.operations import Operations
from lookalike.server.slots import PerKeyLimit

T = TypeVar("T")


@dataclass(frozen=True)
class HttpContext:
    operations: Operations
    access: Access
    config: ServerConfig
    metrics: Metrics
    calls: AdmittedCalls
    """gRPC's admission: HTTP calls take and give back places in the same count."""
    streams: PerKeyLimit
    """gRPC's per-key stream places: an export holds one for as long as it streams."""
    ready: threading.Event
    """Set once every index is loaded; until then calls get 503, reason NOT_READY."""
    threads: ThreadPoolExecutor
    """Where operations run."""

    def admit(self) -> None:
        """Take a place among the calls in flight, or RESOURCE_EXHAUSTED (429) at once, never a queue."""
        if not self.calls.admit():
            raise ResourceExhausted(
                f"the server already has {self.calls.limit} calls in flight (--max-concurrent-requests); retry shortly",
                "TOO_MANY_REQUESTS",
            )

    def require_ready(self) -> None:
        if not self.ready.is_set():
            raise Unavailable("the server is still loading its indexes; retry shortly", "NOT_READY")

    async def run(self, work: Callable[[], T]) -> T:
        """`work` (an operation, blocking) on the call threads, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.threads, work)
