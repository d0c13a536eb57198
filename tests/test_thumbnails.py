"""Thumbnails, a per-list opt-in: kept with each picture added while it is on, never otherwise, and deleted
with the entry, with the list, and with the setting; made by the fingerprint workers. Real server, photos, CLI."""

from __future__ import annotations

import io
from pathlib import Path

import lmdb
import pytest
from PIL import Image

from lookalike.client import LookalikeClient, NotFound
from lookalike.server.auth import BOOTSTRAP
from lookalike.server.storage.schema import DB_THUMBNAILS
from lookalike.server.verify import verify
from tests.conftest import ServerHandle, distinct_photos, start_server
from tests.processes import json_cli


def kept(lookalike: ServerHandle) -> int:
    """Thumbnails stored, every list's."""
    store = lookalike.running.service.store
    with store.env.begin() as txn:
        return int(txn.stat(store.environment.db(DB_THUMBNAILS))["entries"])


def thumbnail(lookalike: ServerHandle, list_name: str, entry_id: str) -> bytes | None:
    operations = lookalike.running.operations
    assert operations is not None
    return operations.entries.thumbnail(BOOTSTRAP, list_name, entry_id)


def test_only_lists_that_opt_in_keep_thumbnails_and_they_go_with_entries_lists_and_the_setting(
    lookalike: ServerHandle,
) -> None:
    first, second, third = distinct_photos(3, seed=5)
    client = lookalike.client
    assert client.create_list("illegal").thumbnails is False  # the default: no picture kept
    plain = client.add("illegal", first).id
    client.add_hash("illegal", client.hash_entry(pdq="ab" * 32))
    assert thumbnail(lookalike, "illegal", plain) is None and kept(lookalike) == 0

    assert client.create_list("logos", thumbnails=True).thumbnails is True
    kept_ids = [client.add("logos", photo).id for photo in (first, second)]
    hashed = client.add_hash("logos", client.hash_entry(pdq="cd" * 32)).id
    assert kept(lookalike) == 2 and thumbnail(lookalike, "logos", hashed) is None  # a hash has no picture
    small = thumbnail(lookalike, "logos", kept_ids[0])
    assert small is not None and len(small) < 20_000
    with Image.open(io.BytesIO(small)) as image, Image.open(first) as original:
        assert image.format == "WEBP" and max(image.size) == 160
        assert abs(image.width / image.height - original.width / original.height) < 0.02

    client.remove("logos", kept_ids[0])
    assert kept(lookalike) == 1
    with pytest.raises(NotFound):
        thumbnail(lookalike, "logos", kept_ids[0])
    assert client.update_list("logos", thumbnails=False).thumbnails is False  # off: those kept are deleted
    assert kept(lookalike) == 0 and thumbnail(lookalike, "logos", kept_ids[1]) is None
    client.update_list("logos", thumbnails=True)
    client.add("logos", third)
    assert kept(lookalike) == 1
    client.delete_list("logos")
    assert kept(lookalike) == 0

    code, (created,) = json_cli(lookalike.address, "lists", "create", "cli-logos", "--thumbnails")
    assert (
        code == 0
        and created["thumbnails"] is True
        and created["checks_last_day"]
        == {
            "accept": 0,
            "review": 0,
            "reject": 0,
        }
    )
    code, (updated,) = json_cli(lookalike.address, "lists", "update", "cli-logos", "--no-thumbnails")
    assert code == 0 and updated["thumbnails"] is False
    code, (untouched,) = json_cli(lookalike.address, "lists", "update", "cli-logos", "--description", "x")
    assert code == 0 and untouched["thumbnails"] is False


def test_worker_processes_make_the_thumbnails_and_verify_checks_them(tmp_path: Path) -> None:
    (photo,) = distinct_photos(1, seed=6)
    handle = start_server(tmp_path / "data", workers=1)
    try:
        handle.client.create_list("logos", thumbnails=True)
        entry = handle.client.add("logos", photo).id
        assert thumbnail(handle, "logos", entry) is not None
    finally:
        handle.stop()
    data = tmp_path / "data"
    assert verify(data).problems == []
    with lmdb.open(str(data), max_dbs=64) as env, env.begin(write=True) as txn:
        txn.put(b"\0\0\0\x09" + (7).to_bytes(8, "big"), b"RIFF", db=env.open_db(DB_THUMBNAILS, txn=txn))
    (problem,) = verify(data).problems
    assert problem.database == "thumbnails" and "no list" in problem.problem


def test_the_thumbnails_setting_is_audited(lookalike: ServerHandle) -> None:
    admin = LookalikeClient(lookalike.address, api_key=lookalike.client.create_key("admin").secret)
    try:
        admin.create_list("logos")
        admin.update_list("logos", thumbnails=True)
        details = [record.detail for record in admin.audit("logos")]
        assert [d["thumbnails"] for d in details] == ["false", "true"]
    finally:
        admin.close()
