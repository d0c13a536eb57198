"""Lookalike's operations, free of any transport: what the gRPC servicer (and any other front) calls.

Each operation takes the authenticated `Caller` and domain objects, authorizes the
caller itself (so no transport can forget to), does the work through the service,
the stored checks, feedback and keys, and returns domain objects. A transport only
authenticates its credential into a `Caller`, converts its request in, makes one
call, and converts the answer out; errors are the domain errors of
`lookalike.client.errors`, which each transport maps to its own status codes.
"""

from __future__ import annotations

from lookalike.server.auth import Access
from lookalike.server.checks import CheckLedger
from lookalike.server.config import ServerConfig
from lookalike.server.feedback import FeedbackBook
from lookalike.server.operations.checking import CheckOperations
from lookalike.server.operations.entries import EntryOperations
from lookalike.server.operations.judging import FeedbackOperations
from lookalike.server.operations.keys import KeyOperations
from lookalike.server.operations.lists import ListOperations
from lookalike.server.service import LookalikeService


class Operations:
    """Every operation of one server, by concern."""

    def __init__(
        self,
        service: LookalikeService,
        config: ServerConfig,
        access: Access,
        checks: CheckLedger,
        feedback: FeedbackBook,
    ) -> None:
        self.lists = ListOperations(service, access, checks.index)
        self.entries = EntryOperations(service, config, access)
        self.checks = CheckOperations(service, config, access, checks)
        self.feedback = FeedbackOperations(service, access, checks, feedback, self.checks, self.lists)
        self.keys = KeyOperations(service, access)
