"""Stored checks listed by decision, newest first, and checks counted per hour and per list: kept as results
are written, read without a scan of every stored check; on a real server, by hash checks (no model needed)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import lmdb
import pytest

from lookalike.client import InvalidArgument, LookalikeClient, LookalikeError, PermissionDenied
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.client.stub import translate
from lookalike.server.app import create_server
from lookalike.server.storage.schema import (
    DB_CHECK_COUNTS,
    DB_CHECK_DECISIONS,
    DB_META,
    KEY_CHECK_DECISIONS_INDEXED,
)
from lookalike.server.verify import verify
from tests.conftest import ServerHandle

_rng = random.Random(17)


def random_pdq() -> str:
    return _rng.randbytes(32).hex()


def flipped(pdq: str, bits: int) -> str:
    """`pdq` with its first `bits` bits flipped: 40 scores for review, 0 for reject at the default thresholds."""
    value = int(pdq, 16) ^ (((1 << bits) - 1) << (256 - bits))
    return f"{value:064x}"


def written(lookalike: ServerHandle) -> None:
    """Wait until the checks answered so far are written (results are committed by a writer thread)."""
    checks = lookalike.running.checks
    assert checks is not None
    deadline = time.monotonic() + 30
    while checks.unwritten and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not checks.unwritten


def start_again(lookalike: ServerHandle) -> None:
    """Start the stopped server again on its data folder."""
    lookalike.running = create_server(lookalike.config)
    lookalike.client = LookalikeClient(lookalike.address)


def refusal(call: Callable[[], object]) -> LookalikeError:
    """The typed error a raw gRPC call fails with."""
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return translate(failed.value)


def test_checks_are_listed_by_decision_newest_first_each_key_seeing_its_own(lookalike: ServerHandle) -> None:
    boot = lookalike.client
    boot.create_list("banned")
    listed = random_pdq()
    boot.add_hash("banned", boot.hash_entry(pdq=listed, id="stock"))
    admin_secret = boot.create_key("admin", name="root").secret
    admin = LookalikeClient(lookalike.address, api_key=admin_secret)
    checker_key = admin.create_key("checker", name="uploads")
    checker = LookalikeClient(lookalike.address, api_key=checker_key.secret)
    try:
        made = []
        for number in range(5):
            client = checker if number % 2 == 0 else admin
            check = client.check_hashes(["banned"], pdq=flipped(listed, 40), request_id=f"review-{number}")
            assert check.decision == "review"
            made.append(check.id)
        rejected = checker.check_hashes(["banned"], pdq=listed, request_id="reject-0")
        assert rejected.decision == "reject"
        checker.check_hashes(["banned"], pdq=random_pdq(), request_id="accept-0")

        # Listed at once (before the writer has committed them), newest first, across pages.
        everyone = [record.id for record in admin.list_checks("review", page_size=2)]
        assert everyone == list(reversed(made))
        mine = list(checker.list_checks("review", page_size=1))
        assert [r.id for r in mine] == ["review-4", "review-2", "review-0"]
        assert {r.owner for r in mine} == {checker_key.info.id}
        assert mine[0].result is not None and mine[0].result.matches[0].id == "stock"
        assert [r.id for r in admin.list_checks("review", owner=checker_key.info.id)] == [r.id for r in mine]
        assert [r.id for r in checker.list_checks("reject")] == ["reject-0"]
        assert [r.id for r in checker.list_checks("accept")] == ["accept-0"]
        assert list(admin.list_checks("reject", owner=admin.create_key("checker").info.id)) == []
        with pytest.raises(PermissionDenied) as other_owner:
            list(checker.list_checks("review", owner=""))
        assert other_owner.value.reason == "OWNER_NOT_ALLOWED"

        # The same id checked again replaces the check: listed once, under its new decision.
        written(lookalike)
        checker.check_hashes(["banned"], pdq=listed, request_id="review-4")  # stored over the written check
        assert [r.id for r in checker.list_checks("review")] == ["review-2", "review-0"]
        assert [r.id for r in checker.list_checks("reject")] == ["review-4", "reject-0"]

        stub = pb_grpc.LookalikeStub(grpc.insecure_channel(lookalike.address))
        metadata = [("authorization", f"Bearer {checker_key.secret}")]
        for request, reason in (
            (pb.ListChecksRequest(), "DECISION_MISSING"),
            (pb.ListChecksRequest(decision=pb.REVIEW, page_token="bm90IG91cnM"), "PAGE_TOKEN_INVALID"),
            (pb.ListChecksRequest(decision=pb.REVIEW, page_size=-1), "PAGE_SIZE_INVALID"),
        ):
            refused = refusal(lambda r=request: stub.ListChecks(r, metadata=metadata))  # type: ignore[misc]
            assert isinstance(refused, InvalidArgument) and refused.reason == reason
        # A token of one owner's pages is refused for another's.
        token = stub.ListChecks(pb.ListChecksRequest(decision=pb.REVIEW, page_size=1), metadata=metadata)
        admin_metadata = [("authorization", f"Bearer {admin_secret}")]
        request = pb.ListChecksRequest(decision=pb.REVIEW, page_token=token.next_page_token)
        assert isinstance(refusal(lambda: stub.ListChecks(request, metadata=admin_metadata)), InvalidArgument)

        lookalike.restart()
        admin.close()
        admin = LookalikeClient(lookalike.address, api_key=admin_secret)
        assert [r.id for r in admin.list_checks("review")] == ["review-3", "review-2", "review-1", "review-0"]
        assert lookalike.running.checks is not None
        assert lookalike.running.checks.sweep(time.time() + lookalike.config.check_retention + 1) == 7
        assert list(admin.list_checks("review")) == list(admin.list_checks("reject")) == []
    finally:
        checker.close()
        admin.close()


def test_checks_are_counted_per_hour_overall_and_per_list_by_the_decision_each_list_gave(
    lookalike: ServerHandle,
) -> None:
    boot = lookalike.client
    for name in ("banned", "other", "logos"):
        boot.create_list(name)
    listed = random_pdq()
    boot.add_hash("banned", boot.hash_entry(pdq=listed))
    boot.add_hash("other", boot.hash_entry(pdq=flipped(listed, 40)))
    boot.check_hashes(["banned", "other"], pdq=listed)  # banned rejects it, other reviews it: a reject
    boot.check_hashes(["banned", "other"], pdq=flipped(listed, 40))  # banned reviews, other rejects
    boot.check_hashes(["banned"], pdq=random_pdq())  # accepted
    boot.check_hashes([], pdq=random_pdq())  # every list: accepted by each
    written(lookalike)  # counted as results are written

    counts = {info.name: info.checks_last_day for info in boot.lists()}
    assert (counts["banned"].accept, counts["banned"].review, counts["banned"].reject) == (2, 1, 1)
    assert (counts["other"].accept, counts["other"].review, counts["other"].reject) == (1, 1, 1)
    assert (counts["logos"].accept, counts["logos"].review, counts["logos"].reject) == (1, 0, 0)
    assert boot.get_list("banned").checks_last_day == counts["banned"]

    every = boot.check_activity(hours=3)
    now_hour = datetime.fromtimestamp(time.time() // 3600 * 3600, UTC)
    assert [hour.start for hour in every] == [now_hour - timedelta(hours=back) for back in (2, 1, 0)]
    assert sum(h.counts.accept for h in every) == 2 and sum(h.counts.reject for h in every) == 2
    assert sum(h.counts.review for h in every) == 0
    banned = boot.check_activity("banned")
    assert len(banned) == 24 and sum(h.counts.accept for h in banned) == 2 and sum(h.counts.review for h in banned) == 1

    admin_secret = boot.create_key("admin").secret
    admin = LookalikeClient(lookalike.address, api_key=admin_secret)
    writer = LookalikeClient(lookalike.address, api_key=admin.create_key("writer", ["banned"]).secret)
    try:
        assert sum(h.counts.reject for h in writer.check_activity("banned")) == 1
        for refused_list in ("other", ""):
            with pytest.raises(PermissionDenied):
                writer.check_activity(refused_list)
        with pytest.raises(InvalidArgument) as too_long:
            admin.check_activity(hours=745)
        assert too_long.value.reason == "HOURS_OUT_OF_RANGE"
        assert len(admin.check_activity(hours=744)) == 744
        lookalike.restart()  # counted in LMDB
        writer.close()
        admin.close()
        admin = LookalikeClient(lookalike.address, api_key=admin_secret)
        assert admin.get_list("banned").checks_last_day == counts["banned"]
    finally:
        writer.close()
        admin.close()


def test_checks_stored_before_the_index_are_indexed_once_at_start_and_verify_reads_both(
    lookalike: ServerHandle,
) -> None:
    boot = lookalike.client
    boot.create_list("banned")
    listed = random_pdq()
    boot.add_hash("banned", boot.hash_entry(pdq=listed))
    ids = [boot.check_hashes(["banned"], pdq=flipped(listed, 40)).id for _ in range(3)]
    lookalike.stop()
    data = lookalike.config.data
    with lmdb.open(str(data), max_dbs=64) as env, env.begin(write=True) as txn:
        txn.drop(env.open_db(DB_CHECK_DECISIONS, txn=txn), delete=True)  # as a folder of an earlier version
        txn.delete(KEY_CHECK_DECISIONS_INDEXED, db=env.open_db(DB_META, txn=txn))
    start_again(lookalike)
    assert [r.id for r in lookalike.client.list_checks("review")] == list(reversed(ids))
    lookalike.stop()
    assert verify(data).problems == []
    with lmdb.open(str(data), max_dbs=64) as env, env.begin(write=True) as txn:
        counts = env.open_db(DB_CHECK_COUNTS, txn=txn)
        key = next(iter(txn.cursor(db=counts).iternext(values=False)))
        txn.put(key, b"bad", db=counts)
        txn.put(b"Xnot-an-index-key", b"", db=env.open_db(DB_CHECK_DECISIONS, txn=txn))
    problems = verify(data).problems
    assert sorted(p.database for p in problems) == ["check_counts", "check_decisions"]
    start_again(lookalike)
