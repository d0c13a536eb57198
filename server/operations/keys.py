"""API keys and the audit log (admin)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from lookalike.server.auth import Access, Action, Caller, key_text
from lookalike.server.changes import KeyRevoked
from lookalike.server.operations.types import PageRequest
from lookalike.server.records import AuditRecord, KeyRecord, validate_lists_named
from lookalike.server.service import LookalikeService


class KeyOperations:
    def __init__(self, service: LookalikeService, access: Access) -> None:
        self._service = service
        self._access = access

    def create(self, caller: Caller, role: str, lists: Sequence[str], name: str) -> tuple[KeyRecord, str]:
        """A new key and its secret, shown only this once."""
        validate_lists_named(lists)
        self._access.require(caller, Action.MANAGE_KEYS)
        change, secret = self._access.new_key(caller, role, lists, name)
        record = self._service.writes.apply(change)
        return record, key_text(record, secret)

    def all(self, caller: Caller) -> list[KeyRecord]:
        """Every key, revoked ones included."""
        self._access.require(caller, Action.MANAGE_KEYS)
        return self._access.keys()

    def revoke(self, caller: Caller, key_id: str) -> KeyRecord:
        """Revoke a key (the last admin key stays: refused when the change is applied)."""
        self._access.require(caller, Action.MANAGE_KEYS)
        return self._service.writes.apply(KeyRevoked(time=time.time(), actor=caller.key_id, key_id=key_id))

    def audit(self, caller: Caller, request: PageRequest) -> tuple[list[AuditRecord], str]:
        """Audit records oldest first, and the next page's token ("" at the end)."""
        self._access.require(caller, Action.READ_AUDIT)
        return self._service.store.audit(request.list, request.since, request.size(), request.page_token)
