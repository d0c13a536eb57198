"""Check ids are per key: two keys may use one request id, each reads and judges its own stored check,
learns nothing of the other's, and an admin reads either by naming its owner. Checks stored by a
format 2 server (keyed by id alone), pending ones and their webhooks included, survive the upgrade."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
import pytest

from lookalike.client import AlreadyExists, LookalikeClient, NotFound, PermissionDenied
from lookalike.client.webhooks import CHECK_ID_HEADER
from lookalike.server.storage.schema import (
    DB_CHECK_EXPIRY,
    DB_CHECK_EXPIRY_BY_ID,
    DB_CHECK_IMAGES,
    DB_CHECK_IMAGES_BY_ID,
    DB_CHECK_PENDING,
    DB_CHECK_PENDING_BY_ID,
    DB_CHECKS,
    DB_CHECKS_BY_ID,
    DB_META,
    DB_OUTBOX,
    DB_OUTBOX_BY_ID,
    KEY_FORMAT_VERSION,
    TIME_KEY_SIZE,
    split_owned_key,
)
from tests.conftest import ServerHandle, distinct_photos, start_server
from tests.processes import json_cli
from tests.test_deferred import FAST_WEBHOOKS, Receiver, delivered_state, receiver, wait_until

__all__ = ["receiver"]  # a fixture used here

RETENTION_DAYS = 7


@dataclass
class Keys:
    """An admin and two checkers, `one` and `two`, on one server."""

    admin: LookalikeClient
    one: LookalikeClient
    two: LookalikeClient
    one_id: str
    two_id: str
    secrets: tuple[str, str, str]
    """The keys' secrets: admin (for the CLI too), one, two."""

    def close(self) -> None:
        for client in (self.admin, self.one, self.two):
            client.close()


def make_keys(handle: ServerHandle) -> Keys:
    root = handle.client.create_key("admin", name="root")
    admin = LookalikeClient(handle.address, api_key=root.secret)
    one, two = admin.create_key("checker", name="one"), admin.create_key("checker", name="two")
    admin.close()
    return connect(handle, one.info.id, two.info.id, (root.secret, one.secret, two.secret))


def connect(handle: ServerHandle, one_id: str, two_id: str, secrets: tuple[str, str, str]) -> Keys:
    """Clients of the three keys; again after a restart (the server listens on a new port)."""
    admin, one, two = (LookalikeClient(handle.address, api_key=secret) for secret in secrets)
    return Keys(admin, one, two, one_id, two_id, secrets)


def reconnect(handle: ServerHandle, keys: Keys) -> Keys:
    keys.close()
    return connect(handle, keys.one_id, keys.two_id, keys.secrets)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [path.read_bytes() for path in distinct_photos(3, seed=47)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    """One CPU slot, so a test that holds it keeps deferred checks pending."""
    handle = start_server(tmp_path / "data", cpu_slots=1, **FAST_WEBHOOKS)
    yield handle
    handle.stop()


def error_text(error: Exception, check_id: str) -> str:
    return str(error).replace(repr(check_id), "ID")


def test_two_keys_checking_under_one_request_id_each_keep_their_own_result(
    server: ServerHandle, photos: list[bytes]
) -> None:
    server.client.create_list("banned")
    listed = [server.client.add("banned", photo) for photo in photos[:2]]
    keys = make_keys(server)
    try:
        first = keys.one.check(photos[0], ["banned"], request_id="upload-1")
        second = keys.two.check(photos[1], ["banned"], request_id="upload-1")
        assert (first.matches[0].id, second.matches[0].id) == (listed[0].id, listed[1].id)
        ledger = server.running.checks
        assert ledger is not None
        wait_until(lambda: ledger.unwritten == 0)
        server.restart()  # what each read back was written to LMDB, not only kept in memory
        keys = reconnect(server, keys)

        mine, theirs = keys.one.get_check("upload-1"), keys.two.get_check("upload-1")
        assert mine.result is not None and mine.result.sha256 == first.sha256
        assert theirs.result is not None and theirs.result.sha256 == second.sha256
        assert keys.one.get_check("upload-1", owner=keys.one_id).id == "upload-1"  # naming oneself is fine
        assert keys.admin.calibrate("banned").checks_seen == 2  # its scan sees both

        # An admin reads either by naming its owner; without one it reads its own (none here).
        by_admin = [keys.admin.get_check("upload-1", owner=owner) for owner in (keys.one_id, keys.two_id)]
        assert [record.result.sha256 for record in by_admin if record.result] == [first.sha256, second.sha256]
        with pytest.raises(NotFound, match="name its owner"):
            keys.admin.get_check("upload-1")

        # Neither learns of the other: another key's id reads exactly as one never used, and owner is for admins.
        keys.one.check(photos[2], request_id="only-one-has-it")
        with pytest.raises(NotFound) as used:
            keys.two.get_check("only-one-has-it")
        with pytest.raises(NotFound) as unused:
            keys.two.get_check("nobody-has-it")
        assert error_text(used.value, "only-one-has-it") == error_text(unused.value, "nobody-has-it")
        with pytest.raises(PermissionDenied) as denied:
            keys.two.get_check("upload-1", owner=keys.one_id)
        assert denied.value.reason == "OWNER_NOT_ALLOWED"

        # Feedback finds each key's own check; an admin's names the owner.
        assert keys.one.submit_feedback("upload-1", "confirmed").entry_id == listed[0].id
        assert keys.two.submit_feedback("upload-1", "confirmed").entry_id == listed[1].id
        judged = keys.admin.submit_feedback("upload-1", "false_positive", owner=keys.two_id, note="mine now")
        assert (judged.check_id, judged.entry_id) == ("upload-1", listed[1].id)
        with pytest.raises(PermissionDenied):
            keys.one.submit_feedback("upload-1", "confirmed", owner=keys.two_id)

        # The CLI names the owner too.
        code, printed = json_cli(server.address, "result", "upload-1", "--owner", keys.two_id, key=keys.secrets[0])
        assert code == 0 and [(r["id"], r["sha256"]) for r in printed] == [("upload-1", second.sha256)]
        code, printed = json_cli(
            server.address,
            "feedback",
            "add",
            "upload-1",
            "--verdict",
            "confirmed",
            "--owner",
            keys.one_id,
            key=keys.secrets[0],
        )
        assert code == 0 and printed[0]["entry_id"] == listed[0].id
    finally:
        keys.close()


def test_two_keys_deferring_under_one_request_id_each_get_their_own_check_and_webhook(
    server: ServerHandle, photos: list[bytes], receiver: Receiver
) -> None:
    server.client.create_list("banned")
    listed = server.client.add("banned", photos[0])
    keys = make_keys(server)
    try:
        with server.running.service.cpu_slot():  # both stay pending until it is released
            queued = [
                client.check(photo, ["banned"], defer=True, request_id="later-1", callback_url=receiver.url)
                for client, photo in ((keys.one, photos[0]), (keys.two, photos[1]))
            ]
            assert [q.status for q in queued] == ["pending", "pending"]
        done = [client.wait_for_check("later-1") for client in (keys.one, keys.two)]
        assert [record.result.decision for record in done if record.result] == ["reject", "accept"]
        assert done[0].result is not None and done[0].result.matches[0].id == listed.id

        arrived = receiver.wait_for(2)
        assert [d.headers[CHECK_ID_HEADER] for d in arrived] == ["later-1", "later-1"]
        decisions = sorted(json.loads(d.body)["result"]["decision"] for d in arrived)
        assert decisions == ["ACCEPT", "REJECT"]
        assert delivered_state(keys.one, "later-1").attempts == delivered_state(keys.two, "later-1").attempts == 1
    finally:
        keys.close()


def test_a_key_cannot_check_synchronously_under_the_id_its_deferred_check_holds(
    server: ServerHandle, photos: list[bytes]
) -> None:
    client = server.client
    client.create_list("banned")
    client.add("banned", photos[0])
    with server.running.service.cpu_slot():
        client.check(photos[0], ["banned"], defer=True, request_id="held")
        with pytest.raises(AlreadyExists, match="held by your deferred check, still pending") as refused:
            client.check(photos[1], ["banned"], request_id="held")
        assert refused.value.reason == "CHECK_ID_TAKEN"
        with pytest.raises(AlreadyExists):
            client.check_hashes(["banned"], md5="0" * 32, request_id="held")
    assert client.wait_for_check("held").result.decision == "reject"  # type: ignore[union-attr]
    assert client.check(photos[1], ["banned"], request_id="held").decision == "accept"  # finished: replaced
    ledger = server.running.checks
    assert ledger is not None
    wait_until(lambda: ledger.unwritten == 0)
    assert client.get_check("held").result.decision == "accept"  # type: ignore[union-attr]


# Upgrading a format 2 folder ------------------------------------------------------------------


def to_format_2(data: Path) -> None:
    """Rewrite a stopped server's stored checks as a format 2 server kept them: keyed by id alone
    (expiry by time then id), deliveries without an owner, the folder marked format 2."""
    env = lmdb.open(str(data), map_size=1 << 30, max_dbs=64)
    try:
        with env.begin(write=True) as txn:
            for new_name, old_name in (
                (DB_CHECKS, DB_CHECKS_BY_ID),
                (DB_CHECK_IMAGES, DB_CHECK_IMAGES_BY_ID),
                (DB_CHECK_EXPIRY, DB_CHECK_EXPIRY_BY_ID),
                (DB_CHECK_PENDING, DB_CHECK_PENDING_BY_ID),
                (DB_OUTBOX, DB_OUTBOX_BY_ID),
            ):
                new, old = env.open_db(new_name, txn=txn), env.open_db(old_name, txn=txn)
                for key, value in txn.cursor(db=new):
                    when = key[:TIME_KEY_SIZE] if new_name == DB_CHECK_EXPIRY else b""
                    check_id = split_owned_key(key[len(when) :])[1].encode()
                    if new_name == DB_OUTBOX:
                        delivery = json.loads(value)
                        del delivery["owner"]
                        value = json.dumps(delivery).encode()
                    txn.put(when + check_id, value, db=old)
                txn.drop(new, delete=True)
            txn.put(KEY_FORMAT_VERSION, b"2", db=env.open_db(DB_META, txn=txn))
    finally:
        env.close()


def test_checks_stored_by_a_format_2_server_are_upgraded_pending_ones_and_webhooks_included(
    tmp_path: Path, photos: list[bytes], receiver: Receiver
) -> None:
    data = tmp_path / "data"
    settings = {**FAST_WEBHOOKS, "webhook_backoff": 0.5, "webhook_backoff_max": 0.5, "webhook_max_attempts": 1000}
    old = start_server(data, cpu_slots=1, **settings)
    old.client.create_list("banned")
    listed = old.client.add("banned", photos[0])
    boot = old.client.check(photos[0], ["banned"], request_id="boot-1")  # before any key: the keyless caller's
    keys = make_keys(old)
    keys.one.check(photos[0], ["banned"], request_id="a-sync")
    receiver.always_fail = True
    keys.two.check(photos[1], ["banned"], request_id="b-hook", callback_url=receiver.url)
    wait_until(lambda: receiver.requests)  # tried, failed, and waiting to retry
    with old.running.service.cpu_slot():
        assert keys.one.check(photos[0], ["banned"], defer=True, request_id="a-pend").status == "pending"
        keys.close()
        old.stop()  # the deferred check stays pending, with its image; the webhook stays pending
    to_format_2(data)

    receiver.always_fail = False
    new = start_server(data, **settings)
    try:
        keys = reconnect(new, keys)
        assert keys.one.get_check("a-sync").result.decision == "reject"  # type: ignore[union-attr]
        with pytest.raises(NotFound):
            keys.two.get_check("a-sync")
        assert keys.admin.get_check("a-sync", owner=keys.one_id).status == "done"
        assert keys.admin.get_check("boot-1", owner="").result.sha256 == boot.sha256  # type: ignore[union-attr]

        pending = keys.one.wait_for_check("a-pend")  # run from its stored image after the upgrade
        assert pending.result is not None and pending.result.matches[0].id == listed.id

        arrived = receiver.wait_for(1)
        assert arrived[0].headers[CHECK_ID_HEADER] == "b-hook"
        assert delivered_state(keys.two, "b-hook").state == "delivered"

        ledger = new.running.checks
        assert ledger is not None
        wait_until(lambda: ledger.unwritten == 0)
        assert ledger.sweep(now=time.time() + RETENTION_DAYS * 86400 + 60) == 4  # every expiry found its check
        with pytest.raises(NotFound):
            keys.one.get_check("a-sync")
        keys.close()
    finally:
        new.stop()

    env = lmdb.open(str(data), map_size=1 << 30, max_dbs=64, readonly=True)
    try:
        with env.begin() as txn:
            assert txn.get(KEY_FORMAT_VERSION, db=env.open_db(DB_META, txn=txn)) == b"3"
            old_names = (DB_CHECKS_BY_ID, DB_CHECK_IMAGES_BY_ID, DB_CHECK_EXPIRY_BY_ID, DB_CHECK_PENDING_BY_ID)
            for name in (*old_names, DB_OUTBOX_BY_ID):
                with pytest.raises(lmdb.NotFoundError):
                    env.open_db(name, txn=txn, create=False)
    finally:
        env.close()
