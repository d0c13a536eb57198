"""The audit log against a real server: one record per change, with the key that made it; filters; the CLI."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import grpc
import pytest

from lookalike.client import InvalidArgument, LookalikeClient, LookalikeError, NotFound, PermissionDenied
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from tests.conftest import ServerHandle
from tests.test_access import cli, picture


def test_every_kind_of_change_is_recorded_with_the_key_that_made_it(lookalike: ServerHandle) -> None:
    started = datetime.now(UTC)
    boot = lookalike.client
    boot.create_list("a")
    root = boot.create_key("admin", name="root")
    admin = LookalikeClient(lookalike.address, api_key=root.secret)
    admin.update_list("a", review_threshold=0.3)
    made = admin.create_key("writer", ["a"], name="uploader")
    writer = LookalikeClient(lookalike.address, api_key=made.secret)
    first = writer.add("a", picture(1), id="one")
    streamed = [
        result
        for _, result in writer.add_many(pb.AddEntryRequest(list="a", image=pb.Image(data=picture(n))) for n in (2, 3))
    ]
    assert not any(isinstance(result, LookalikeError) for result in streamed)

    # Nothing changes, so nothing is recorded: a duplicate, a failed remove, a denied delete.
    assert writer.add("a", picture(1)).duplicate
    with pytest.raises(NotFound):
        writer.remove("a", "no-such-entry")
    with pytest.raises(PermissionDenied):
        writer.delete_list("a")

    writer.remove("a", "one")
    admin.revoke_key(made.info.id)
    admin.create_list("b")
    admin.delete_list("a")

    records = list(admin.audit())
    k1, k2 = root.info.id, made.info.id
    ids = [result.id for result in streamed if not isinstance(result, LookalikeError)]
    assert [(r.action, r.key_id, r.list, r.entry_id) for r in records] == [
        ("list.create", "", "a", ""),
        ("key.create", "", "", ""),
        ("list.update", k1, "a", ""),
        ("key.create", k1, "", ""),
        ("entry.add", k2, "a", "one"),
        ("entry.add", k2, "a", ids[0]),
        ("entry.add", k2, "a", ids[1]),
        ("entry.remove", k2, "a", "one"),
        ("key.revoke", k1, "", ""),
        ("list.create", k1, "b", ""),
        ("list.delete", k1, "a", ""),
    ]
    assert records[1].detail == {"key": k1, "role": "admin", "lists": "", "name": "root"}
    assert records[2].detail["review_threshold"] == "0.3"
    assert records[3].detail == {"key": k2, "role": "writer", "lists": "a", "name": "uploader"}
    assert records[4].detail == {"sha256": first.sha256} == records[7].detail
    assert records[8].detail == {"key": k2, "role": "writer"}
    assert records[10].detail == {"entries_deleted": "2"}
    times = [r.time for r in records]
    assert times == sorted(times) and started <= times[0] and times[-1] <= datetime.now(UTC)
    admin.close()
    writer.close()


def test_a_bulk_add_records_each_new_entry(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("bulk")
    requests = [pb.AddEntryRequest(list="bulk", image=pb.Image(data=picture(100 + n))) for n in range(40)]
    results = [result for _, result in client.add_many(requests)]
    added = [r.id for r in results if not isinstance(r, LookalikeError)]
    assert len(added) == 40
    records = list(client.audit("bulk"))
    assert [r.action for r in records] == ["list.create"] + ["entry.add"] * 40
    assert [r.entry_id for r in records[1:]] == added


def test_audit_filters_by_list_and_since_and_pages(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("a")
    client.create_list("b")
    time.sleep(0.05)
    mark = time.time()
    time.sleep(0.05)
    client.update_list("a", description="changed")
    client.update_list("b", description="changed")
    client.delete_list("b")

    everything = [(r.action, r.list) for r in client.audit()]
    assert everything == [
        ("list.create", "a"),
        ("list.create", "b"),
        ("list.update", "a"),
        ("list.update", "b"),
        ("list.delete", "b"),
    ]
    assert [(r.action, r.list) for r in client.audit("a")] == [("list.create", "a"), ("list.update", "a")]
    assert [(r.action, r.list) for r in client.audit(since=mark)] == everything[2:]
    since_b = [(r.action, r.list) for r in client.audit("b", since=datetime.fromtimestamp(mark, UTC))]
    assert since_b == [("list.update", "b"), ("list.delete", "b")]
    assert [(r.action, r.list) for r in client.audit(page_size=2)] == everything
    assert [(r.action, r.list) for r in client.audit("b", page_size=1)] == [everything[i] for i in (1, 3, 4)]

    with grpc.insecure_channel(lookalike.address) as channel:
        stub = pb_grpc.LookalikeStub(channel)
        page = stub.ListAudit(pb.ListAuditRequest(limit=2), timeout=10)
        assert len(page.records) == 2 and page.next_page_token
        rest = stub.ListAudit(pb.ListAuditRequest(limit=10, page_token=page.next_page_token), timeout=10)
        assert len(rest.records) == 3 and not rest.next_page_token
        with pytest.raises(grpc.RpcError) as bad_token:
            stub.ListAudit(pb.ListAuditRequest(page_token="zz"), timeout=10)
        assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page token" in str(bad_token.value)
    with pytest.raises(InvalidArgument, match="limit"):
        list(client.audit(page_size=20_000))


def test_cli_audit_prints_one_json_object_per_change(lookalike: ServerHandle) -> None:
    boot = lookalike.client
    boot.create_list("a")
    admin_key = boot.create_key("admin").secret
    admin = LookalikeClient(lookalike.address, api_key=admin_key)
    admin.create_list("b")
    time.sleep(0.05)
    mark = time.time()
    time.sleep(0.05)
    admin.add("b", picture(7), id="seven")
    admin.remove("b", "seven")
    admin.close()
    as_admin = {"LOOKALIKE_API_KEY": admin_key}

    printed = cli(lookalike, "audit", "--json", env=as_admin)
    assert printed.returncode == 0, printed.stderr
    records = [json.loads(line) for line in printed.stdout.splitlines()]
    assert all(set(r) == {"time", "key_id", "action", "list", "entry_id", "detail"} for r in records)
    assert [(r["action"], r["key_id"]) for r in records] == [
        ("list.create", ""),
        ("key.create", ""),
        ("list.create", "k1"),
        ("entry.add", "k1"),
        ("entry.remove", "k1"),
    ]
    assert datetime.fromisoformat(records[0]["time"]).tzinfo is not None

    iso = datetime.fromtimestamp(mark, UTC).isoformat()
    for since in (iso, str(mark), iso.replace("+00:00", "Z")):
        printed = cli(lookalike, "audit", "--list", "b", "--since", since, "--json", env=as_admin)
        later = [json.loads(line) for line in printed.stdout.splitlines()]
        assert [(r["action"], r["entry_id"]) for r in later] == [("entry.add", "seven"), ("entry.remove", "seven")]
    printed = cli(lookalike, "audit", "--list", "a", "--json", env=as_admin)
    assert [json.loads(line)["action"] for line in printed.stdout.splitlines()] == ["list.create"]

    assert cli(lookalike, "audit", "--since", "last tuesday", env=as_admin).returncode == 2
    refused = cli(lookalike, "audit", "--json")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
