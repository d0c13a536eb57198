"""Operations on entries: add pictures or hashes, read, remove, export and confirm them."""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lookalike.client.errors import InvalidArgument
from lookalike.server.auth import Access, Action, Caller
from lookalike.server.config import ServerConfig
from lookalike.server.hashes import MD5, PDQ, SHA256, HashAdd
from lookalike.server.operations.types import ImageSource
from lookalike.server.records import AddOutcome, EntryRecord, EntryScan
from lookalike.server.service import AddRequest, LookalikeService, PreparedAdd
from lookalike.server.storage.flood import Guard

ENTRY_PAGE_DEFAULT = 100
ENTRY_PAGE_MAX = 1000
ENTRY_SCAN_BUDGET = 10_000
"""Entries a search by meta value reads per page at most: a page that read them all without filling up
answers with what it found and a token to read on, so no call holds a read transaction for long."""
QUERY_MAX_CHARS = 1024
_TOKEN = struct.Struct(">QI")  # read on below this sequence number; checksum of the list's uid and q


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


@dataclass(frozen=True)
class EntryQuery:
    """A page of a list's entries, newest first; `q` narrows them (see `EntryOperations.page`)."""

    q: str = ""
    page_size: int = 0
    """0: ENTRY_PAGE_DEFAULT; more than ENTRY_PAGE_MAX is read as that."""
    page_token: str = ""


@dataclass(frozen=True)
class EntryPage:
    entries: list[ListedEntry]
    next_page_token: str
    """"" when nothing more matches."""


def _binding(uid: int, q: str) -> int:
    return zlib.crc32(f"{uid}\0{q}".encode())


def _token(before: int, uid: int, q: str) -> str:
    return base64.urlsafe_b64encode(_TOKEN.pack(before, _binding(uid, q))).decode().rstrip("=")


def _resume_before(token: str, uid: int, q: str) -> int:
    """The sequence number a page token says to read on below; INVALID_ARGUMENT for a token this server
    did not give for this list and q."""
    try:
        before, binding = _TOKEN.unpack(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, struct.error):
        before, binding = 0, None
    if binding != _binding(uid, q) or before == 0:
        raise InvalidArgument(
            f"page token {token[:40]!r} is not one this server gave for this list and q: ask the first page "
            "again without one",
            "PAGE_TOKEN_INVALID",
        )
    return int(before)


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

    def page(self, caller: Caller, list_name: str, query: EntryQuery) -> EntryPage:
        """A page of the list's entries, newest first. `q` empty: every entry. An entry id or the hex of a
        SHA-256, MD5 or PDQ hash matches exactly, looked up (a PDQ hash in the list's index, at distance
        0); other text also matches entries with a meta value containing it in any case, read newest
        first, at most ENTRY_SCAN_BUDGET per page (a page may then come back short, or empty, with a
        token to read on)."""
        self.access.require(caller, Action.READ_ENTRIES, [list_name])
        if query.page_size < 0:
            raise InvalidArgument(f"page_size must be 0 or more, got {query.page_size}", "PAGE_SIZE_INVALID")
        size = min(query.page_size or ENTRY_PAGE_DEFAULT, ENTRY_PAGE_MAX)
        q = query.q.strip()
        if len(q) > QUERY_MAX_CHARS:
            raise InvalidArgument(f"q has {len(q):,} characters; at most {QUERY_MAX_CHARS}", "QUERY_TOO_LONG")
        record = self.service.store.get_list(list_name)
        before = _resume_before(query.page_token, record.uid, q) if query.page_token else record.next_seq
        codec = next((codec for codec in (SHA256, MD5) if codec.is_hex(q)), None)  # a PDQ hash reads as a SHA-256
        if codec is not None:
            digest = codec.parse(q)
            index = self.service.indexes.get(record.uid)
            near = index.search_pdq([digest], 0) if index is not None and len(digest) == PDQ.size else []
            named = self.service.store.entries_named(list_name, q, digest, [hit.id for hit in near])
            found = [entry for entry in named if entry.seq < before]
            scan = EntryScan(found[:size], found[size - 1].seq if len(found) > size else 0)
        else:
            needle = q.casefold()

            def keep(entry: EntryRecord) -> bool:
                return not q or entry.id == q or any(needle in value.casefold() for value in entry.meta.values())

            scan = self.service.store.entries_newest_first(list_name, before, size, ENTRY_SCAN_BUDGET, keep)
        entries = [ListedEntry(list_name, e, self.service.flood.guard_of(record.uid, e.seq)) for e in scan.entries]
        return EntryPage(entries, _token(scan.resume_before, record.uid, q) if scan.resume_before else "")

    def thumbnail(self, caller: Caller, list_name: str, entry_id: str) -> bytes | None:
        """The small WebP kept with an entry of a list that keeps thumbnails; None when there is none."""
        self.access.require(caller, Action.READ_ENTRIES, [list_name])
        return self.service.store.thumbnail(list_name, entry_id)

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
