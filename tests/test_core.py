"""The operations core with no transport in between: it authenticates from a header and a peer alone,
authorizes its callers itself, and answers as the gRPC service does (real server, real store, real model)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image

from lookalike.client import PermissionDenied, Unauthenticated
from lookalike.client.errors import LookalikeError
from lookalike.server.auth import BOOTSTRAP, Access, Caller
from lookalike.server.hashes import HashAdd
from lookalike.server.operations import Operations
from lookalike.server.operations.checking import HashCheck, NewCheck
from lookalike.server.operations.entries import NewPicture
from lookalike.server.operations.lists import ListChange, ListSpec
from lookalike.server.operations.types import ImageSource, PageRequest
from lookalike.server.service import CheckResult
from tests.conftest import ServerHandle, distinct_photos, jpeg_bytes


def core(server: ServerHandle) -> tuple[Operations, Access]:
    operations, access = server.running.operations, server.running.access
    assert operations is not None and access is not None
    return operations, access


def picture(shade: int) -> NewPicture:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (shade, 255 - shade, 90)).save(buffer, format="PNG")
    return NewPicture(ImageSource("data", buffer.getvalue()))


def test_access_knows_the_caller_from_an_authorization_value_and_the_peer_alone(lookalike: ServerHandle) -> None:
    _, access = core(lookalike)
    assert access.caller_for(None, peer_is_loopback=True) == BOOTSTRAP
    with pytest.raises(Unauthenticated, match="only over loopback"):
        access.caller_for(None, peer_is_loopback=False)
    made = lookalike.client.create_key("admin", name="ops")
    assert access.caller_for(f"Bearer {made.secret}", peer_is_loopback=False) == Caller(made.info.id, "admin")
    refusals = {
        None: "API_KEY_MISSING",
        "Basic dXNlcjpwYXNz": "API_KEY_MALFORMED",
        f"Bearer lk_{made.info.id}_not-the-secret": "API_KEY_INVALID",
    }
    for authorization, reason in refusals.items():
        with pytest.raises(Unauthenticated) as refused:
            access.caller_for(authorization, peer_is_loopback=True)
        assert refused.value.reason == reason


def test_every_operation_authorizes_its_caller_itself(lookalike: ServerHandle) -> None:
    operations, access = core(lookalike)
    operations.lists.create(BOOTSTRAP, ListSpec("a"))
    operations.lists.create(BOOTSTRAP, ListSpec("b"))
    _, secret = operations.keys.create(BOOTSTRAP, "admin", [], "root")
    admin = access.caller_for(f"Bearer {secret}", peer_is_loopback=False)
    with pytest.raises(Unauthenticated, match="created meanwhile"):  # the keyless caller's time is over
        operations.lists.visible(BOOTSTRAP)

    def caller(role: str, lists: list[str]) -> Caller:
        _, secret = operations.keys.create(admin, role, lists, role)
        return access.caller_for(f"Bearer {secret}", peer_is_loopback=False)

    writer, checker = caller("writer", ["a"]), caller("checker", [])
    entry = operations.entries.add(writer, "a", picture(10)).entry

    denied: dict[str, Callable[[], object]] = {
        "checker adds": lambda: operations.entries.add(checker, "a", picture(20)),
        "checker opens a bulk add": lambda: operations.entries.bulk_add(checker),
        "checker reads entries": lambda: operations.entries.get(checker, "a", entry.id),
        "checker adds a hash": lambda: operations.entries.add_hash(checker, "a", HashAdd(pdq="ab" * 32)),
        "writer adds to another list": lambda: operations.entries.add(writer, "b", picture(30)),
        "writer bulk-adds to another list": lambda: operations.entries.bulk_add(writer).prepare("b", picture(40)),
        "writer checks another list": lambda: operations.checks.check(writer, NewCheck(picture(10).image, ["b"])),
        "writer checks hashes on another list": lambda: operations.checks.check_hashes(
            writer, HashCheck(pdq="ab" * 32, lists=["b"])
        ),
        "writer creates a list": lambda: operations.lists.create(writer, ListSpec("c")),
        "writer changes a list": lambda: operations.lists.update(writer, ListChange("a", description="x")),
        "writer deletes a list": lambda: operations.lists.delete(writer, "a"),
        "writer exports another list": lambda: operations.entries.export(writer, "b", False),
        "writer confirms an entry": lambda: operations.entries.confirm(writer, "a", entry.id),
        "writer lists keys": lambda: operations.keys.all(writer),
        "writer reads the audit log": lambda: operations.keys.audit(writer, PageRequest()),
        "writer reads feedback": lambda: operations.feedback.page(writer, PageRequest()),
        "writer calibrates": lambda: operations.feedback.calibrate(writer, "a"),
        "writer reads the webhook secret": lambda: operations.checks.webhook_secret(writer),
        "checker reads another key's check": lambda: operations.checks.get(checker, "x", owner=writer.key_id),
    }
    allowed = []
    for what, call in denied.items():
        try:
            call()
        except PermissionDenied:
            continue
        allowed.append(what)
    assert allowed == []
    assert [state.record.name for state in operations.lists.visible(writer)] == ["a"]

    operations.keys.revoke(admin, writer.key_id)
    with pytest.raises(Unauthenticated, match="revoked"):  # a caller held on to (a stream's) stops at once
        operations.entries.get(writer, "a", entry.id)


def test_a_check_made_through_the_operations_answers_as_one_made_over_grpc(lookalike: ServerHandle) -> None:
    operations, _ = core(lookalike)
    listed, other = distinct_photos(2, seed=17)
    client = lookalike.client
    client.create_list("banned")
    entry_id = client.add("banned", listed.read_bytes()).id
    with Image.open(listed) as image:
        edited = jpeg_bytes(image.resize((image.width // 2, image.height // 2)), quality=60)

    for query in (edited, other.read_bytes()):
        over_grpc = client.check(query, ["banned"], top_k=3)
        direct = operations.checks.check(BOOTSTRAP, NewCheck(ImageSource("data", query), ["banned"], top_k=3))
        assert isinstance(direct, CheckResult)
        assert direct.decision == over_grpc.decision
        assert [(m.entry.id, round(m.score, 6)) for m in direct.matches] == [
            (m.id, round(m.score, 6)) for m in over_grpc.matches
        ]
    assert over_grpc.decision == "accept" and direct.decision == "accept"
    assert client.check(edited, ["banned"]).matches[0].id == entry_id


def test_errors_leave_the_core_as_domain_errors_with_their_reasons(lookalike: ServerHandle) -> None:
    operations, _ = core(lookalike)
    with pytest.raises(LookalikeError) as missing:
        operations.lists.get(BOOTSTRAP, "nothing-here")
    assert (missing.value.code, missing.value.reason) == ("NOT_FOUND", "LIST_NOT_FOUND")
    with pytest.raises(LookalikeError) as bad_page:
        operations.keys.audit(BOOTSTRAP, PageRequest(limit=-1))
    assert (bad_page.value.code, bad_page.value.reason) == ("INVALID_ARGUMENT", "LIMIT_OUT_OF_RANGE")
