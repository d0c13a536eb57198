"""Operations on entries: add pictures or hashes, read, remove, export and confirm them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lookalike.server.auth import Access, Action, Caller
from lookalike.server.config import ServerConfig
from lookalike.server.flood import Guard
from lookalike.server.hashes import HashAdd
from lookalike.server.operations.types import ImageSource
from lookalike.server.service import AddRequest, LookalikeService, PreparedAdd
from lookalike.server.store import AddOutcome, EntryRecord


@dataclass(frozen=True)
class NewPicture:
    """A picture to add to a list, with its meta and an optional id of the caller's choosing."""

    image: ImageSource
    meta: dict[str, str] = field(default_factory=dict)
    id: str = ""


@dataclass(frozen=True)
class ListedEntry:
    """An entry as callers see it: its list, its record, and its flood guard (None when not guarded)."""

    list: str
    entry: EntryRecord
    guard: Guard | None = None


def _single(outcomes: list[AddOutcome | Exception]) -> AddOutcome:
    (outcome,) = outcomes
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class BulkAdd:
    """One caller's bulk add or import (a stream): its role was checked when it opened; each item's
    list is checked as it comes, so is the key (a key revoked meanwhile stops at the next item)."""

    def __init__(self, entries: EntryOperations, caller: Caller) -> None:
        self._entries = entries
        self._caller = caller

    def prepare(self, list_name: str, picture: NewPicture) -> PreparedAdd:
        """The CPU-heavy half of adding a picture (fingerprints), run concurrently with others."""
        self._entries.access.require(self._caller, Action.ADD_ENTRIES, [list_name])
        return self._entries.service.prepare_add(list_name, self._entries.add_request(picture))

    def store(self, prepared: Sequence[PreparedAdd | Exception]) -> list[AddOutcome | Exception]:
        """Commit prepared pictures (errors pass through in place), consecutive ones of a list together."""
        return self._entries.service.store_prepared(prepared, actor=self._caller.key_id)

    def add_hashes(self, list_name: str, items: Sequence[HashAdd]) -> list[AddOutcome | Exception]:
        """Entries given by hashes, in one transaction; each item's outcome or error."""
        self._entries.access.require(self._caller, Action.ADD_ENTRIES, [list_name])
        return self._entries.service.add_hashes(list_name, items, self._caller.key_id)


class EntryOperations:
    def __init__(self, service: LookalikeService, config: ServerConfig, access: Access) -> None:
        self.service = service
        self.config = config
        self.access = access

    def add_request(self, picture: NewPicture) -> AddRequest:
        return AddRequest(data=picture.image.read(self.config), meta=picture.meta, id=picture.id)

    def add(self, caller: Caller, list_name: str, picture: NewPicture) -> AddOutcome:
        self.access.require(caller, Action.ADD_ENTRIES, [list_name])
        return _single(self.service.add_entries(list_name, [self.add_request(picture)], actor=caller.key_id))

    def add_hash(self, caller: Caller, list_name: str, item: HashAdd) -> AddOutcome:
        self.access.require(caller, Action.ADD_ENTRIES, [list_name])
        return _single(self.service.add_hashes(list_name, [item], actor=caller.key_id))

    def bulk_add(self, caller: Caller) -> BulkAdd:
        """Open a bulk add: refused at once when the caller's role may not add entries at all."""
        self.access.require(caller, Action.ADD_ENTRIES)
        return BulkAdd(self, caller)

    def get(self, caller: Caller, list_name: str, entry_id: str) -> ListedEntry:
        self.access.require(caller, Action.READ_ENTRIES, [list_name])
        entry = self.service.store.get_entry(list_name, entry_id)
        guard = self.service.flood.guard_of(self.service.store.get_list(list_name).uid, entry.seq)
        return ListedEntry(list_name, entry, guard)

    def remove(self, caller: Caller, list_name: str, entry_id: str) -> EntryRecord:
        self.access.require(caller, Action.REMOVE_ENTRIES, [list_name])
        return self.service.remove_entry(list_name, entry_id, actor=caller.key_id)

    def export(
        self, caller: Caller, list_name: str, with_embeddings: bool
    ) -> Iterator[list[tuple[EntryRecord, bytes | None]]]:
        """A list's entries in the order added, a page at a time (authorized before the first is read)."""
        self.access.require(caller, Action.READ_ENTRIES, [list_name])
        return self.service.export_entries(list_name, with_embeddings)

    def confirm(self, caller: Caller, list_name: str, entry_id: str) -> EntryRecord:
        """Lift an entry's flood guard: its present match rate is declared usual."""
        self.access.require(caller, Action.CONFIRM_ENTRIES, [list_name])
        return self.service.confirm_entry(list_name, entry_id, actor=caller.key_id)
