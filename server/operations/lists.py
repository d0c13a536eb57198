"""Operations on lists: create, read, change and delete them."""

from __future__ import annotations

from dataclasses import dataclass, field

from lookalike.server.auth import Access, Action, Caller
from lookalike.server.check_index import DecisionCounts
from lookalike.server.records import ListRecord
from lookalike.server.service import LookalikeService
from lookalike.server.storage.check_index import CheckIndex
from lookalike.server.storage.flood import Guard


@dataclass(frozen=True)
class ListSpec:
    """A list to create; None and "" leave the server's defaults."""

    name: str
    description: str = ""
    review_threshold: float | None = None
    reject_threshold: float | None = None
    model: str = ""
    dihedral: bool = True
    kind: str = ""
    thumbnails: bool = False
    keypoints: bool = True


@dataclass(frozen=True)
class ListChange:
    """Settings of a list to change; None leaves one as it is."""

    name: str
    description: str | None = None
    review_threshold: float | None = None
    reject_threshold: float | None = None
    dihedral: bool | None = None
    thumbnails: bool | None = None
    keypoints: bool | None = None


@dataclass(frozen=True)
class ListState:
    """A list as callers see it: its record, the entries under flood guard, and its recent checks."""

    record: ListRecord
    guarded: list[Guard] = field(default_factory=list)
    checks_last_day: DecisionCounts = DecisionCounts()
    """Checks that covered it in the last 24 hours, by the decision it gave on its own."""


class ListOperations:
    def __init__(self, service: LookalikeService, access: Access, counts: CheckIndex) -> None:
        self._service = service
        self._access = access
        self._counts = counts

    def state(self, record: ListRecord) -> ListState:
        return self._states([record])[0]

    def _states(self, records: list[ListRecord]) -> list[ListState]:
        counts = self._counts.last_day([r.uid for r in records])
        return [ListState(r, self._service.flood.guarded(r.uid), counts[r.uid]) for r in records]

    def create(self, caller: Caller, spec: ListSpec) -> ListState:
        self._access.require(caller, Action.CREATE_LISTS, [spec.name])
        record = self._service.create_list(
            spec.name,
            spec.description,
            spec.review_threshold,
            spec.reject_threshold,
            spec.model,
            actor=caller.key_id,
            dihedral=spec.dihedral,
            kind=spec.kind,
            thumbnails=spec.thumbnails,
            keypoints=spec.keypoints,
        )
        return self.state(record)

    def get(self, caller: Caller, name: str) -> ListState:
        self._access.require(caller, Action.READ_LISTS, [name])
        return self.state(self._service.store.get_list(name))

    def visible(self, caller: Caller) -> list[ListState]:
        """The lists the caller may use, by name (it names none: the answer is narrowed instead)."""
        self._access.require(caller, Action.READ_LISTS)
        visible = [r for r in self._service.store.lists() if caller.may_use(r.name)]
        return self._states(sorted(visible, key=lambda r: r.name))

    def update(self, caller: Caller, change: ListChange) -> ListState:
        self._access.require(caller, Action.UPDATE_LISTS, [change.name])
        record = self._service.update_list(
            change.name,
            change.description,
            change.review_threshold,
            change.reject_threshold,
            actor=caller.key_id,
            dihedral=change.dihedral,
            thumbnails=change.thumbnails,
            keypoints=change.keypoints,
        )
        return self.state(record)

    def delete(self, caller: Caller, name: str) -> ListRecord:
        """Delete a list with its entries; returns it as it was (its `entry_count`: entries deleted)."""
        self._access.require(caller, Action.DELETE_LISTS, [name])
        return self._service.delete_list(name, actor=caller.key_id)
