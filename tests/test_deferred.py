"""Deferred checks and webhooks on a real server, with a real HTTP receiver on loopback.

Deferred checks are held pending by keeping the server's only CPU slot busy, so
"pending" is observed for certain rather than raced; webhook retries use short
configured backoffs.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lookalike.client import InvalidArgument, LookalikeClient, NotFound, ResourceExhausted, WebhookDelivery
from lookalike.client.webhooks import (
    CHECK_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    parse_body,
    sign,
    verify,
)
from lookalike.server.storage.schema import DB_CHECK_IMAGES
from tests.conftest import ServerHandle, distinct_photos, start_server
from tests.processes import json_cli
from tests.test_flood_guard import scrape

FAST_WEBHOOKS = {"webhook_backoff": 0.05, "webhook_backoff_max": 0.2, "webhook_timeout": 5.0}


@dataclass
class Delivered:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on loopback that answers `failures` times with HTTP 500, then 200 (or always fails)."""

    url: str = ""
    failures: int = 0
    always_fail: bool = False
    requests: list[Delivered] = field(default_factory=list)
    accepted: list[Delivered] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, delivered: Delivered) -> int:
        with self.lock:
            self.requests.append(delivered)
            if self.always_fail or self.failures > 0:
                self.failures -= 1
                return 500
            self.accepted.append(delivered)
            return 200

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.accepted) >= count:
                    return list(self.accepted)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.accepted)} of {count} webhooks arrived; {len(self.requests)} attempts")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = state.answer(Delivered({k: v for k, v in self.headers.items()}, body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/lookalike"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [path.read_bytes() for path in distinct_photos(3, seed=31)]


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[ServerHandle]:
    """One CPU slot, so a test that holds it keeps deferred checks pending."""
    handle = start_server(tmp_path / "data", cpu_slots=1, **FAST_WEBHOOKS)
    yield handle
    handle.stop()


def wait_until(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def delivered_state(client: LookalikeClient, check_id: str) -> WebhookDelivery:
    """The check's delivery once the server has stored it as delivered."""

    def delivered() -> WebhookDelivery | None:
        delivery = client.get_check(check_id).delivery
        return delivery if delivery is not None and delivery.state == "delivered" else None

    found: WebhookDelivery = wait_until(delivered)
    return found


def stored_images(handle: ServerHandle) -> int:
    store = handle.running.service.store
    with store.env.begin() as txn:
        return int(txn.stat(store.environment.db(DB_CHECK_IMAGES))["entries"])


def test_a_deferred_check_is_pending_then_done_and_its_image_is_dropped(
    slow: ServerHandle, photos: list[bytes]
) -> None:
    client = slow.client
    client.create_list("banned")
    listed = client.add("banned", photos[0])
    with slow.running.service.cpu_slot():  # the worker waits for the only slot
        queued = client.check(photos[0], ["banned"], defer=True, meta={"upload": "7"})
        assert queued.status == "pending" and queued.id and queued.matches == []
        record = client.get_check(queued.id)
        assert (record.status, record.result, record.error) == ("pending", None, None)
        assert stored_images(slow) == 1
    record = client.wait_for_check(queued.id)
    assert record.status == "done" and record.result is not None
    assert record.result.decision == "reject" and record.result.matches[0].id == listed.id
    assert record.result.id == queued.id and record.result.meta == {"upload": "7"}
    assert record.completed is not None and record.expires is not None and record.expires > record.completed
    assert stored_images(slow) == 0


def test_a_pending_check_survives_a_restart(
    slow: ServerHandle, photos: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lookalike.server.checks")
    client = slow.client
    client.create_list("banned")
    listed = client.add("banned", photos[1])
    with slow.running.service.cpu_slot():
        queued = client.check(photos[1], ["banned"], defer=True)
        slow.restart()  # the worker gives up waiting; the check stays pending in LMDB
    assert "1 deferred checks pending from the last run" in caplog.text
    record = slow.client.wait_for_check(queued.id)
    assert record.status == "done" and record.result is not None
    assert record.result.matches[0].id == listed.id


def test_synchronous_checks_are_stored_too(lookalike: ServerHandle, photos: list[bytes]) -> None:
    client = lookalike.client
    client.create_list("banned")
    result = client.check(photos[0], ["banned"], request_id="upload-1")
    record = client.get_check("upload-1")
    assert record.status == "done" and record.result is not None
    assert (record.result.decision, record.result.sha256) == (result.decision, result.sha256)
    lookalike.restart()
    assert lookalike.client.get_check("upload-1").status == "done"  # written by then, not only kept in memory
    with pytest.raises(NotFound) as error:
        lookalike.client.get_check("never-made")
    assert error.value.reason == "CHECK_NOT_FOUND"


def test_checks_by_hash_are_stored_and_allow_lists_apply_to_them(lookalike: ServerHandle, photos: list[bytes]) -> None:
    client = lookalike.client
    client.create_list("banned")
    client.create_list("public", kind="allow")
    listed = client.add("banned", photos[0])
    result = client.check_hashes(["banned"], sha256=listed.sha256, request_id="by-hash")
    assert result.decision == "reject"
    record = client.get_check("by-hash")
    assert record.result is not None and record.result.matches[0].id == listed.id
    client.add("public", photos[0])
    allowed = client.check_hashes(["banned"], sha256=listed.sha256)
    assert allowed.decision == "accept" and [d.cause for d in allowed.downgrades] == ["allow_list"]


def test_a_deferred_check_that_fails_says_why(slow: ServerHandle) -> None:
    slow.client.create_list("banned")
    queued = slow.client.check(b"not a picture", ["banned"], defer=True)
    record = slow.client.wait_for_check(queued.id)
    assert record.status == "failed" and record.result is None and record.error is not None
    assert record.error["reason"] == "IMAGE_UNDECODABLE" and record.error["code"] == "INVALID_ARGUMENT"


def test_deferred_checks_refuse_at_once_what_would_surely_fail(slow: ServerHandle, photos: list[bytes]) -> None:
    client = slow.client
    with pytest.raises(NotFound):
        client.check(photos[0], ["missing"], defer=True)
    client.create_list("banned")
    with pytest.raises(InvalidArgument) as error:
        client.check(photos[0], ["banned"], defer=True, top_k=-1)
    assert error.value.reason == "TOP_K_OUT_OF_RANGE"
    with pytest.raises(InvalidArgument) as error:
        client.check(photos[0], ["banned"], defer=True, request_id="x" * 300)
    assert error.value.reason == "CHECK_ID_INVALID"


def test_resubmitting_a_deferred_check_runs_it_once_and_ids_belong_to_their_key(
    slow: ServerHandle, photos: list[bytes]
) -> None:
    boot = slow.client
    boot.create_list("banned")
    root = boot.create_key("admin", name="root")
    admin = LookalikeClient(slow.address, api_key=root.secret)
    one = LookalikeClient(slow.address, api_key=admin.create_key("checker", name="one").secret)
    two = LookalikeClient(slow.address, api_key=admin.create_key("checker", name="two").secret)
    try:
        with slow.running.service.cpu_slot():
            first = one.check(photos[0], ["banned"], defer=True, request_id="upload-9")
            again = one.check(photos[0], ["banned"], defer=True, request_id="upload-9")
            assert first.id == again.id == "upload-9" and slow.running.checks is not None
            assert slow.running.checks.pending == 1
            with pytest.raises(NotFound):
                two.get_check("upload-9")  # another key's check reads as missing
            assert two.check(photos[0], ["banned"], defer=True, request_id="upload-9").id == "upload-9"  # its own
            assert slow.running.checks.pending == 2
        assert one.wait_for_check("upload-9").status == two.wait_for_check("upload-9").status == "done"
        one_id = next(key.id for key in admin.keys() if key.name == "one")
        assert admin.get_check("upload-9", owner=one_id).status == "done"
    finally:
        for client in (admin, one, two):
            client.close()


def test_too_many_pending_checks_are_refused(tmp_path: Path, photos: list[bytes]) -> None:
    handle = start_server(tmp_path / "data", cpu_slots=1, max_pending_checks=2, metrics_listen="127.0.0.1:0")
    try:
        handle.client.create_list("banned")
        with handle.running.service.cpu_slot():
            handle.client.check(photos[0], ["banned"], defer=True)
            handle.client.check(photos[1], ["banned"], defer=True)
            with pytest.raises(ResourceExhausted) as error:
                handle.client.check(photos[2], ["banned"], defer=True)
            assert error.value.reason == "QUEUE_FULL"
            assert scrape(handle, "lookalike_deferred_checks_pending") == 2
        wait_until(lambda: scrape(handle, "lookalike_deferred_checks_pending") == 0)
        # Counted once, when they finish: not when their submission was answered.
        assert scrape(handle, "lookalike_check_decisions_total", decision="accept") == 2
    finally:
        handle.stop()


def gone(client: LookalikeClient, check_id: str) -> bool:
    try:
        client.get_check(check_id)
    except NotFound:
        return True
    return False


def test_results_expire_after_the_retention_time(lookalike: ServerHandle, photos: list[bytes]) -> None:
    client, ledger = lookalike.client, lookalike.running.checks
    assert ledger is not None
    client.create_list("banned")
    client.check(photos[0], ["banned"], request_id="kept")
    record = client.get_check("kept")
    assert record.expires is not None and record.completed is not None
    retention = (record.expires - record.completed).total_seconds()
    assert retention == pytest.approx(lookalike.config.check_retention)
    wait_until(lambda: ledger.unwritten == 0)
    assert ledger.sweep(now=time.time()) == 0
    assert not gone(client, "kept")
    assert ledger.sweep(now=time.time() + retention + 1) == 1
    assert gone(client, "kept")


def test_the_sweeper_deletes_expired_results_in_the_background(tmp_path: Path, photos: list[bytes]) -> None:
    handle = start_server(tmp_path / "data", check_retention=0.2, sweep_interval=0.05)
    try:
        handle.client.create_list("banned")
        handle.client.check(photos[0], ["banned"], request_id="short-lived")
        wait_until(lambda: gone(handle.client, "short-lived"))
    finally:
        handle.stop()


# Webhooks ---------------------------------------------------------------------------------------


def test_a_webhook_is_signed_verifiable_and_refuses_replays(
    slow: ServerHandle, photos: list[bytes], receiver: Receiver
) -> None:
    client = slow.client
    client.create_list("banned")
    listed = client.add("banned", photos[0])
    result = client.check(photos[0], ["banned"], callback_url=receiver.url, request_id="hooked")
    assert result.decision == "reject" and result.status == "done"
    (delivered,) = receiver.wait_for(1)
    headers = delivered.headers
    assert headers["Content-Type"] == "application/json" and headers[CHECK_ID_HEADER] == "hooked"
    secret = client.webhook_secret()
    verify(secret, headers[TIMESTAMP_HEADER], delivered.body, headers[SIGNATURE_HEADER])
    record = parse_body(delivered.body)
    assert record.id == "hooked" and record.result.matches[0].id == listed.id
    assert json.loads(delivered.body)["status"] == "CHECK_DONE"

    with pytest.raises(SignatureError):
        verify(
            secret, headers[TIMESTAMP_HEADER], delivered.body.replace(b"hooked", b"hacked"), headers[SIGNATURE_HEADER]
        )
    with pytest.raises(SignatureError):
        verify("another secret", headers[TIMESTAMP_HEADER], delivered.body, headers[SIGNATURE_HEADER])
    sent = int(headers[TIMESTAMP_HEADER])
    with pytest.raises(SignatureError, match="replay"):
        verify(secret, sent, delivered.body, headers[SIGNATURE_HEADER], now=sent + 3600)
    assert sign(secret, sent, delivered.body) == headers[SIGNATURE_HEADER]

    delivery = delivered_state(client, "hooked")  # stored once the receiver's answer is back
    assert (delivery.attempts, delivery.last_status) == (1, 200)
    slow.restart()
    assert slow.client.webhook_secret() == secret  # made once, kept in the data folder


def test_a_failing_receiver_gets_retries_until_it_answers(
    slow: ServerHandle, photos: list[bytes], receiver: Receiver
) -> None:
    receiver.failures = 2
    client = slow.client
    client.create_list("banned")
    queued = client.check(photos[1], ["banned"], defer=True, callback_url=receiver.url)
    (delivered,) = receiver.wait_for(1)
    assert len(receiver.requests) == 3 and {r.body for r in receiver.requests} == {delivered.body}
    delivery = delivered_state(client, queued.id)
    assert (delivery.attempts, delivery.last_status, delivery.last_error) == (3, 200, "")
    assert delivery.delivered is not None and parse_body(delivered.body).status == 2  # CHECK_DONE


def test_a_webhook_gives_up_after_its_attempts(tmp_path: Path, photos: list[bytes], receiver: Receiver) -> None:
    receiver.always_fail = True
    handle = start_server(tmp_path / "data", webhook_max_attempts=2, metrics_listen="127.0.0.1:0", **FAST_WEBHOOKS)
    try:
        handle.client.create_list("banned")
        handle.client.check(photos[0], ["banned"], callback_url=receiver.url, request_id="doomed")
        delivery = wait_until(lambda: (d := handle.client.get_check("doomed").delivery) and d.state == "failed" and d)
        assert (delivery.attempts, delivery.last_status) == (2, 500) and "HTTP 500" in delivery.last_error
        assert len(receiver.requests) == 2
        assert scrape(handle, "lookalike_webhook_deliveries_total", outcome="retry") == 1
        assert scrape(handle, "lookalike_webhook_deliveries_total", outcome="failed") == 1
        assert scrape(handle, "lookalike_webhooks_pending") == 0
    finally:
        handle.stop()


def test_a_restart_in_the_middle_of_retries_still_delivers(
    tmp_path: Path, photos: list[bytes], receiver: Receiver
) -> None:
    receiver.always_fail = True
    handle = start_server(tmp_path / "data", webhook_backoff=0.3, webhook_backoff_max=0.5, webhook_max_attempts=50)
    try:
        handle.client.create_list("banned")
        handle.client.check(photos[2], ["banned"], callback_url=receiver.url, request_id="persistent")
        before = wait_until(lambda: (d := handle.client.get_check("persistent").delivery) and d.attempts >= 2 and d)
        assert before.state == "pending" and before.next_attempt is not None
        handle.restart()
        receiver.always_fail = False
        (delivered,) = receiver.wait_for(1)
        after = delivered_state(handle.client, "persistent")
        assert after.attempts > before.attempts  # counted on from before the restart
        assert parse_body(delivered.body).id == "persistent"
    finally:
        handle.stop()


def test_webhooks_to_refused_addresses_are_refused_clearly(
    tmp_path: Path, photos: list[bytes], receiver: Receiver
) -> None:
    handle = start_server(tmp_path / "data", allow_private_urls=False)
    try:
        handle.client.create_list("banned")
        for defer in (False, True):
            with pytest.raises(InvalidArgument) as error:
                handle.client.check(photos[0], ["banned"], callback_url=receiver.url, defer=defer)
            assert error.value.reason == "URL_ADDRESS_REFUSED"
            assert "--allow-private-urls" in error.value.message
        with pytest.raises(InvalidArgument) as error:
            handle.client.check(photos[0], ["banned"], callback_url="ftp://example.com/hook")
        assert error.value.reason == "URL_SCHEME"
        assert receiver.requests == []
    finally:
        handle.stop()


# The command line -----------------------------------------------------------------------------------


def test_cli_defers_checks_and_reads_results(
    slow: ServerHandle, photos: list[bytes], tmp_path: Path, receiver: Receiver
) -> None:
    slow.client.create_list("banned")
    listed = slow.client.add("banned", photos[0])
    upload = tmp_path / "upload.jpg"
    upload.write_bytes(photos[0])
    code, (queued,) = json_cli(slow.address, "check", "banned", str(upload), "--defer", "--callback-url", receiver.url)
    assert code == 0 and set(queued) == {"path", "id"} and queued["path"] == str(upload)
    code, (shown,) = json_cli(slow.address, "result", queued["id"], "--wait", "30")
    assert code == 0 and shown["id"] == queued["id"] and shown["status"] == "done"
    assert shown["decision"] == "reject" and shown["matches"][0]["id"] == listed.id
    receiver.wait_for(1)
    delivered_state(slow.client, queued["id"])
    code, (shown,) = json_cli(slow.address, "result", queued["id"])
    assert shown["delivery"]["state"] == "delivered" and shown["delivery"]["attempts"] == 1
    code, (missing,) = json_cli(slow.address, "result", "no-such-check")
    assert code == 1 and missing["code"] == "NOT_FOUND"
    code, (secret,) = json_cli(slow.address, "webhooks", "secret")
    assert code == 0 and secret["secret"] == slow.client.webhook_secret()
