"""API keys and the audit log (admin)."""

from __future__ import annotations

from collections.abc import Sequence

from lookalike.server.auth import Access, Action, Caller
from lookalike.server.operations.types import PageRequest
from lookalike.server.records import AuditRecord, KeyRecord, validate_lists_named
from lookalike.server.storage.store import Store


class KeyOperations:
    def __init__(self, store: Store, access: Access) -> None:
        self._store = store
        self._access = access

    def create(self, caller: Caller, role: str, lists: Sequence[str], name: str) -> tuple[KeyRecord, str]:
        """A new key and its secret, shown only this once."""
        validate_lists_named(lists)
        self._access.require(caller, Action.MANAGE_KEYS)
        return self._access.create_key(caller, role, lists, name)

    def all(self, caller: Caller) -> list[KeyRecord]:
        """Every key, revoked ones included."""
        self._access.require(caller, Action.MANAGE_KEYS)
        return self._access.keys()

    def revoke(self, caller: Caller, key_id: str) -> KeyRecord:
        self._access.require(caller, Action.MANAGE_KEYS)
        return self._access.revoke_key(caller, key_id)

    def audit(self, caller: Caller, request: PageRequest) -> tuple[list[AuditRecord], str]:
        """Audit records oldest first, and the next page's token ("" at the end)."""
        self._access.require(caller, Action.READ_AUDIT)
        return self._store.audit(request.list, request.since, request.size(), request.page_token)
