"""Browsing a list's entries (`ListEntries`, `client.entries`, `lookalike entries`) on a real server:
newest first, paged without loss or repeat, found by id, hash or meta value, within each key's rights."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import lmdb
import pytest

from lookalike.client import InvalidArgument, LookalikeClient, PermissionDenied
from lookalike.client.types import Entry
from lookalike.server.operations.entries import ENTRY_PAGE_MAX, ENTRY_SCAN_BUDGET
from lookalike.server.storage.schema import DB_ENTRIES
from tests.conftest import ServerHandle, distinct_photos, start_server
from tests.processes import json_cli


def random_hex(rng: random.Random, chars: int) -> str:
    return rng.randbytes(chars // 2).hex()


def import_hashes(client: LookalikeClient, list_name: str, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    entries = [client.hash_entry(pdq=random_hex(rng, 64), meta={"n": str(n)}) for n in range(count)]
    assert client.import_entries(list_name, entries).added == count


def all_pages(client: LookalikeClient, list_name: str, q: str = "", page_size: int = 0) -> list[list[Entry]]:
    pages, token = [], ""
    while True:
        page = client.entries_page(list_name, q=q, page_size=page_size, page_token=token)
        pages.append(page.entries)
        if not (token := page.next_page_token):
            return pages


def test_entries_come_newest_first_in_pages_without_loss_or_repeat(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("banned")
    import_hashes(client, "banned", 300)
    for photo in distinct_photos(2, seed=5):
        client.add("banned", photo)
    added = [entry.id for entry in client.export_entries("banned")]  # in the order added

    pages = all_pages(client, "banned", page_size=40)
    assert [len(page) for page in pages] == [40] * 7 + [22]
    assert [entry.id for page in pages for entry in page] == added[::-1]
    assert [entry.id for entry in client.entries("banned")] == added[::-1]  # default pages of 100

    first = client.entries_page("banned", page_size=50)
    removed = added[100]  # not yet read: it would be on the later pages
    client.remove("banned", removed)
    client.add_hash("banned", client.hash_entry(pdq="ab" * 32, id="newer"))  # newer than every page to come
    rest = [
        entry.id for entry in client.entries_page("banned", page_size=1000, page_token=first.next_page_token).entries
    ]
    assert [entry.id for entry in first.entries] + rest == [i for i in added[::-1] if i != removed]


def test_q_finds_entries_by_id_hash_or_meta_value(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("banned")
    client.create_list("other")
    first, second = distinct_photos(2, seed=9)
    picture_meta = {"case": "Takedown-77", "source": "tips"}
    picture = client.add("banned", first, id="photo-1", meta=picture_meta)
    batch = client.add("banned", second, meta={"note": "a TAKEDOWN batch"})
    md5_only = client.add_hash("banned", client.hash_entry(md5="11" * 16, meta={"source": "ncmec"}))
    client.add_hash("banned", client.hash_entry(pdq="cd" * 32, id="shared"))
    import_hashes(client, "banned", 30)
    elsewhere = client.add("other", second)

    def found(q: str, list_name: str = "banned") -> list[str]:
        return [entry.id for entry in client.entries(list_name, q=q)]

    assert found("photo-1") == ["photo-1"]
    assert found(picture.sha256) == found(picture.sha256.upper()) == ["photo-1"]
    assert found(picture.hashes.pdq) == ["photo-1"]  # the list's PDQ index, at distance 0
    assert found(picture.hashes.md5) == ["photo-1"]
    assert found("11" * 16) == [md5_only.id]
    assert found("cd" * 32) == ["shared"]
    assert len(batch.id) == 32 and found(batch.id) == [batch.id]  # a made id looks like an MD5: found as an id
    assert found("takedown") == [batch.id, "photo-1"]  # any case, newest first
    assert found("NCMEC") == [md5_only.id]
    assert found("  tips ") == ["photo-1"]
    assert found("case") == []  # meta keys are not searched, values are
    assert found("no such thing") == [] and found("ef" * 32) == []
    assert found(elsewhere.sha256) == [batch.id] and found(picture.sha256, "other") == []
    (shown,) = client.entries("banned", q="photo-1")
    assert (shown.list, shown.meta, shown.hashes) == (
        "banned",
        {"case": "Takedown-77", "source": "tips"},
        picture.hashes,
    )


def test_a_meta_search_reads_a_bounded_number_of_entries_per_page(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("big")
    client.add_hash("big", client.hash_entry(pdq="ab" * 32, meta={"case": "needle-1"}, id="oldest"))
    import_hashes(client, "big", ENTRY_SCAN_BUDGET + 500)

    pages = all_pages(client, "big", q="NEEDLE", page_size=10)
    assert [[entry.id for entry in page] for page in pages] == [[], ["oldest"]]
    assert len(client.entries_page("big", page_size=5000).entries) == ENTRY_PAGE_MAX


def test_page_tokens_and_sizes_it_did_not_give_are_refused(lookalike: ServerHandle) -> None:
    client = lookalike.client
    for name in ("a", "b"):
        client.create_list(name)
        import_hashes(client, name, 30, seed=len(name))
    token = client.entries_page("a", page_size=10).next_page_token
    searched = client.entries_page("a", q="1", page_size=2).next_page_token
    assert token and searched
    assert len(client.entries_page("a", page_size=10, page_token=token).entries) == 10

    def refused(list_name: str, token: str, q: str = "", page_size: int = 10) -> str:
        with pytest.raises(InvalidArgument) as error:
            client.entries_page(list_name, q=q, page_size=page_size, page_token=token)
        return error.value.reason

    assert refused("a", "not-a-token") == "PAGE_TOKEN_INVALID"
    assert refused("a", token[:-2]) == "PAGE_TOKEN_INVALID"
    assert refused("a", "A" * 16) == "PAGE_TOKEN_INVALID"
    assert refused("a", token, q="1") == "PAGE_TOKEN_INVALID"  # another search
    assert refused("a", searched) == "PAGE_TOKEN_INVALID"
    assert refused("b", token) == "PAGE_TOKEN_INVALID"  # another list
    client.delete_list("a")
    client.create_list("a")
    assert refused("a", token) == "PAGE_TOKEN_INVALID"  # the list of that name is another one now
    assert refused("a", "", page_size=-1) == "PAGE_SIZE_INVALID"
    assert refused("a", "", q="x" * 2000) == "QUERY_TOO_LONG"


def test_only_keys_that_may_read_a_lists_entries_browse_them(lookalike: ServerHandle) -> None:
    boot = lookalike.client
    for name in ("a", "b"):
        boot.create_list(name)
        boot.add_hash(name, boot.hash_entry(pdq=("a" if name == "a" else "b") * 64, id=f"in-{name}"))
    root = boot.create_key("admin", name="root")
    with LookalikeClient(lookalike.address, api_key=root.secret) as admin:
        writer = LookalikeClient(lookalike.address, api_key=admin.create_key("writer", ["a"]).secret)
        checker = LookalikeClient(lookalike.address, api_key=admin.create_key("checker", ["a"]).secret)
        assert [e.id for e in admin.entries("b")] == ["in-b"]
    assert [e.id for e in writer.entries("a")] == ["in-a"]
    with pytest.raises(PermissionDenied) as other_list:
        list(writer.entries("b"))
    assert other_list.value.reason == "LIST_NOT_ALLOWED"
    with pytest.raises(PermissionDenied) as checker_denied:
        list(checker.entries("a"))
    assert checker_denied.value.reason == "ROLE_NOT_ALLOWED"
    writer.close()
    checker.close()


def test_entries_name_the_key_that_added_them_older_ones_from_the_audit_log(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        boot = server.client
        boot.create_list("a")
        boot.add_hash("a", boot.hash_entry(md5="01" * 16, id="keyless"))
        root = boot.create_key("admin", name="root")
        with LookalikeClient(server.address, api_key=root.secret) as admin:
            writer = admin.create_key("writer", ["a"], name="uploader")
            admin.add_hash("a", admin.hash_entry(md5="02" * 16, id="by-admin"))
        with LookalikeClient(server.address, api_key=writer.secret) as uploader:
            uploader.add("a", distinct_photos(1, seed=3)[0], id="by-writer")
            expected = {"by-writer": writer.info.id, "by-admin": root.info.id, "keyless": ""}
            assert {e.id: e.added_by for e in uploader.entries("a")} == expected
            assert uploader.get_entry("a", "by-admin").added_by == root.info.id
    finally:
        server.stop()

    # Entries stored before the adding key was kept with them: read it back from their audit records.
    env = lmdb.open(str(tmp_path / "data"), map_size=server.config.map_size, max_dbs=32, subdir=True)
    with env.begin(write=True) as txn:
        entries = env.open_db(DB_ENTRIES, txn=txn)
        for key, raw in list(txn.cursor(db=entries)):
            stored = json.loads(raw)
            del stored["added_by"]
            txn.put(key, json.dumps(stored).encode(), db=entries)
    env.close()
    server = start_server(tmp_path / "data")
    try:
        with LookalikeClient(server.address, api_key=root.secret) as admin:
            assert {e.id: e.added_by for e in admin.entries("a")} == expected
            assert admin.get_entry("a", "by-writer").added_by == writer.info.id
            assert admin.entries_page("a", q="02" * 16).entries[0].added_by == root.info.id
    finally:
        server.stop()


def test_the_entries_command_prints_one_json_object_per_entry(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("banned")
    photo = distinct_photos(1, seed=21)[0]
    added = client.add("banned", photo, meta={"case": "Takedown-77"}, id="photo-1")
    import_hashes(client, "banned", 5)

    code, printed = json_cli(lookalike.address, "entries", "banned")
    assert code == 0 and len(printed) == 6 and printed[-1]["id"] == "photo-1"
    code, printed = json_cli(lookalike.address, "entries", "banned", "--q", "takedown")
    assert code == 0
    assert printed == [
        {
            "list": "banned",
            "id": "photo-1",
            "meta": {"case": "Takedown-77"},
            "created": printed[0]["created"],
            "model": client.get_list("banned").model,
            "sha256": hashlib.sha256(photo.read_bytes()).hexdigest(),
            "pdq": added.hashes.pdq,
            "pdq_quality": added.hashes.pdq_quality,
            "phash": added.hashes.phash,
            "md5": added.hashes.md5,
            "added_by": "",
        }
    ]
    code, printed = json_cli(lookalike.address, "entries", "banned", "--limit", "2")
    assert code == 0 and [record["meta"] for record in printed] == [{"n": "4"}, {"n": "3"}]
    code, printed = json_cli(lookalike.address, "entries", "missing")
    assert code == 1 and printed[0]["reason"] == "LIST_NOT_FOUND"
