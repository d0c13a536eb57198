"""Feedback on checks and calibration from it, on a real server with real photos and edits."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest
from PIL import Image

from benchmarks.edits import EDIT_FAMILIES, encode_edited
from lookalike.client import FailedPrecondition, InvalidArgument, LookalikeClient, NotFound
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.client.stub import translate
from lookalike.server.feedback import CONFIRMED, FALSE_POSITIVE, MISSED_DUPLICATE, calibrate
from lookalike.server.records import ListRecord
from lookalike.server.storage.feedback import FeedbackRecord
from tests.conftest import ServerHandle, distinct_photos
from tests.processes import json_cli


def edited(path: Path, family: str) -> bytes:
    with Image.open(path) as image:
        picture = image.convert("RGB")
    return encode_edited(EDIT_FAMILIES[family](picture, random.Random(0)))


def _just_above(score: float) -> float:
    return (int(score * 100) + 1) / 100


def test_feedback_is_stored_listed_and_calibrates_the_list(lookalike: ServerHandle) -> None:
    original, stranger = distinct_photos(2, seed=21)
    boot = lookalike.client
    root = boot.create_key("admin", name="root")
    admin = LookalikeClient(lookalike.address, api_key=root.secret)
    checker_key = admin.create_key("checker", name="moderation")
    checker = LookalikeClient(lookalike.address, api_key=checker_key.secret)
    other = LookalikeClient(lookalike.address, api_key=admin.create_key("checker", name="other").secret)
    try:
        admin.create_list("banned", review_threshold=0.8, reject_threshold=0.9)
        listed = admin.add("banned", original).id
        trimmed = checker.check(edited(original, "crop_10"), ["banned"])
        caption = checker.check(edited(original, "text_caption"), ["banned"])
        crop = checker.check(edited(original, "crop_30"), ["banned"], top_k=1)
        unrelated = checker.check(stranger, ["banned"], top_k=1)
        # What the photos and edits give with the real model: the premises of what follows.
        assert (trimmed.decision, caption.decision, crop.decision, unrelated.decision) == (
            "reject",
            "reject",
            "accept",
            "accept",
        )
        fp_score, caption_score, crop_score = trimmed.matches[0].score, caption.matches[0].score, crop.matches[0].score
        assert fp_score < caption_score and _just_above(fp_score) <= caption_score and 0.5 < crop_score < 0.8

        false_positive = checker.submit_feedback(trimmed.id, "false_positive", note="a different photo of the spot")
        assert (false_positive.entry_id, false_positive.list, false_positive.verdict) == (
            listed,
            "banned",
            "false_positive",
        )
        assert false_positive.key_id == checker_key.info.id and false_positive.score == pytest.approx(fp_score)
        assert false_positive.decision == "reject"
        checker.submit_feedback(caption.id, "confirmed", entry_id=listed)
        missed = checker.submit_feedback(crop.id, "missed_duplicate", entry_id=listed)
        assert missed.score == pytest.approx(crop_score) and missed.decision == "accept"
        with pytest.raises(NotFound):
            other.submit_feedback(trimmed.id, "confirmed")  # another key's check reads as missing

        listed_feedback = list(admin.feedback("banned"))
        assert [f.verdict for f in listed_feedback] == ["false_positive", "confirmed", "missed_duplicate"]
        assert {f.key_id for f in listed_feedback} == {checker_key.info.id}
        code, lines = json_cli(lookalike.address, "feedback", "ls", "--list", "banned", key=root.secret)
        assert code == 0 and [line["verdict"] for line in lines] == ["false_positive", "confirmed", "missed_duplicate"]
        assert lines[0]["check_id"] == trimmed.id and lines[0]["note"] == "a different photo of the spot"

        advice = admin.calibrate("banned")
        assert not advice.applied and advice.feedback_seen == 3 and advice.checks_seen == 4
        best = [fp_score, caption_score, crop_score, unrelated.matches[0].score]
        assert advice.reject.current == 0.9 and advice.reject.recommended == pytest.approx(_just_above(fp_score))
        assert (advice.reject.errors_avoided, advice.reject.confirmed_affected) == (1, 0)
        assert advice.reject.checks_affected == sum(1 for s in best if 0.9 <= s < advice.reject.recommended)
        assert advice.review.current == 0.8 and advice.review.recommended == pytest.approx(int(crop_score * 100) / 100)
        assert advice.review.errors_avoided == 1
        assert advice.review.checks_affected == sum(1 for s in best if advice.review.recommended <= s < 0.8)
        assert admin.get_list("banned").reject_threshold == 0.9  # nothing applied yet

        code, (applied,) = json_cli(lookalike.address, "calibrate", "banned", "--apply", key=root.secret)
        assert code == 0 and applied["applied"] and applied["reject"]["recommended"] == advice.reject.recommended
        info = admin.get_list("banned")
        assert (info.review_threshold, info.reject_threshold) == (advice.review.recommended, advice.reject.recommended)
        change = [r for r in admin.audit("banned") if r.action == "list.update"][-1]
        assert change.key_id == root.info.id and change.detail["cause"] == "calibrate"

        # The reported errors no longer happen; the confirmed match still rejects.
        assert checker.check(edited(original, "crop_10"), ["banned"]).decision == "review"
        assert checker.check(edited(original, "crop_30"), ["banned"]).decision == "review"
        assert checker.check(edited(original, "text_caption"), ["banned"]).decision == "reject"
    finally:
        for client in (admin, checker, other):
            client.close()


def test_feedback_that_cannot_be_attributed_is_refused(lookalike: ServerHandle) -> None:
    original, stranger = distinct_photos(2, seed=5)
    client = lookalike.client
    client.create_list("banned")
    client.create_list("other")
    listed = client.add("banned", original).id
    elsewhere = client.add("other", stranger).id
    accepted = client.check(stranger, ["banned"])
    with pytest.raises(InvalidArgument) as error:
        client.submit_feedback(accepted.id, "false_positive")
    assert error.value.reason == "ENTRY_ID_MISSING"  # nothing was flagged, so no default entry
    with pytest.raises(InvalidArgument) as error:
        client.submit_feedback(accepted.id, "missed_duplicate")
    assert error.value.reason == "ENTRY_ID_MISSING"
    with pytest.raises(NotFound) as error:
        client.submit_feedback(accepted.id, "missed_duplicate", entry_id=elsewhere)
    assert error.value.reason == "ENTRY_NOT_IN_CHECK"
    # Named with its list, a missed entry the check never came near is accepted, with no score.
    missed = client.submit_feedback(accepted.id, "missed_duplicate", entry_id=elsewhere, list_name="other")
    assert (missed.list, missed.score) == ("other", None)
    with pytest.raises(InvalidArgument) as error:
        client.submit_feedback(accepted.id, "false_positive", entry_id=elsewhere, list_name="other")
    assert error.value.reason == "ENTRY_NOT_IN_CHECK"
    with pytest.raises(NotFound):
        client.submit_feedback(accepted.id, "missed_duplicate", entry_id="no-such-entry", list_name="banned")
    with pytest.raises(NotFound):
        client.submit_feedback("no-such-check", "confirmed", entry_id=listed)
    with pytest.raises(InvalidArgument) as error:
        client.submit_feedback(client.check(original, ["banned"]).id, "confirmed", note="x" * 5000)
    assert error.value.reason == "NOTE_TOO_LONG"
    with pytest.raises(InvalidArgument):
        client.submit_feedback(accepted.id, "wrong")  # refused by the client
    channel = grpc.insecure_channel(lookalike.address)  # the server refuses a missing verdict too
    with pytest.raises(grpc.RpcError) as raw_error:
        pb_grpc.LookalikeStub(channel).SubmitFeedback(pb.SubmitFeedbackRequest(check_id=accepted.id, entry_id=listed))
    channel.close()
    assert translate(raw_error.value).reason == "VERDICT_MISSING"


def test_feedback_needs_a_finished_check(tmp_path: Path) -> None:
    from tests.conftest import start_server

    (photo,) = distinct_photos(1, seed=8)
    handle = start_server(tmp_path / "data", cpu_slots=1)
    try:
        handle.client.create_list("banned")
        with handle.running.service.cpu_slot():
            pending = handle.client.check(photo, ["banned"], defer=True)
            with pytest.raises(FailedPrecondition) as error:
                handle.client.submit_feedback(pending.id, "confirmed")
            assert error.value.reason == "CHECK_NOT_DONE"
    finally:
        handle.stop()


def test_allow_lists_cannot_be_calibrated(lookalike: ServerHandle) -> None:
    lookalike.client.create_list("logos", kind="allow")
    with pytest.raises(FailedPrecondition) as error:
        lookalike.client.calibrate("logos")
    assert error.value.reason == "LIST_KIND_ALLOW"


# The rules of calibration, by hand --------------------------------------------------------------------


def _record(review: float, reject: float) -> ListRecord:
    return ListRecord(1, "banned", "", review, reject, "sscd-distilled", 0.0)


def _said(verdict: str, score: float | None) -> FeedbackRecord:
    return FeedbackRecord(0.0, "k1", "c", "banned", "e", verdict, score=score)


def test_calibration_rules() -> None:
    # A false positive at 0.857 puts reject at 0.86; a confirmed match at 0.85 then goes to review.
    result = calibrate(_record(0.5, 0.8), [_said(FALSE_POSITIVE, 0.857), _said(CONFIRMED, 0.85)], [0.81, 0.86, 0.9])
    assert (result.reject.recommended, result.reject.errors_avoided, result.reject.confirmed_affected) == (0.86, 1, 1)
    assert result.reject.checks_affected == 1  # 0.81 would be reviewed instead of rejected
    assert result.review.recommended == 0.5
    # A false positive scoring 1 cannot be avoided by any threshold.
    result = calibrate(_record(0.5, 0.8), [_said(FALSE_POSITIVE, 1.0)], [])
    assert (result.reject.recommended, result.reject.errors_left) == (0.8, 1) and "remove the entry" in result.notes[0]
    # Misses lower review to the grid step at or below the lowest; an unknown score is left, and said so.
    result = calibrate(_record(0.5, 0.8), [_said(MISSED_DUPLICATE, 0.437), _said(MISSED_DUPLICATE, None)], [0.44, 0.3])
    assert (result.review.recommended, result.review.errors_avoided, result.review.errors_left) == (0.43, 1, 1)
    assert result.review.checks_affected == 1 and any("add those images" in note for note in result.notes)
    # With no misses, review rises above false positives at review level unless a confirmed match lies between.
    result = calibrate(_record(0.5, 0.8), [_said(FALSE_POSITIVE, 0.62)], [0.55, 0.7])
    assert (result.review.recommended, result.review.errors_avoided, result.review.checks_affected) == (0.63, 1, 1)
    result = calibrate(_record(0.5, 0.8), [_said(FALSE_POSITIVE, 0.62), _said(CONFIRMED, 0.55)], [])
    assert result.review.recommended == 0.5 and any("confirmed" in note for note in result.notes)
    assert not calibrate(_record(0.5, 0.8), [], [0.9]).changes
