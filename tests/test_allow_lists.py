"""Allow lists on a real server: they never flag, they outrank disallow matches, and the reply says why.

The rule: an allow-list match at or above its list's review threshold (score A)
against the best flagging disallow match (score D) accepts when A ≥ D; otherwise
a reject stands only when its best rejecting match beats A by --allow-margin
(0.1 by default), else it becomes a review.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.edits import EDIT_FAMILIES, encode_edited
from lookalike.client import CheckResult, Match
from tests.conftest import ServerHandle, distinct_photos
from tests.processes import LOOKALIKE


@pytest.fixture(scope="module")
def original() -> Path:
    return distinct_photos(1, seed=21)[0]


def edited(path: Path, family: str) -> bytes:
    with Image.open(path) as image:
        picture = image.convert("RGB")
    return encode_edited(EDIT_FAMILIES[family](picture, random.Random(0)))


def best(result: CheckResult, kind: str) -> Match:
    return max((m for m in result.matches if m.list_kind == kind), key=lambda m: m.score)


def test_an_allow_list_never_flags_and_applies_to_every_check(lookalike: ServerHandle, original: Path) -> None:
    client = lookalike.client
    client.create_list("banned")
    logos = client.create_list("logos", kind="allow")
    assert logos.kind == "allow" and client.get_list("banned").kind == "disallow"
    entry = client.add("logos", original).id
    for lists in ([], ["banned"]):  # named or not, allow lists are policy
        result = client.check(original, lists)
        assert result.decision == "accept" and result.downgrades == []
        (match,) = result.matches  # shown, as it qualified, but never flagging
        assert (match.list, match.id, match.list_kind, match.decision, match.score) == (
            "logos",
            entry,
            "allow",
            "accept",
            1.0,
        )


def test_allow_beats_review(lookalike: ServerHandle, original: Path) -> None:
    client = lookalike.client
    client.create_list("banned", reject_threshold=1.0)  # only the same bytes reject
    client.create_list("public", kind="allow")
    listed = client.add("banned", original).id
    upload = edited(original, "crop_30")
    assert client.check(upload, ["banned"]).decision == "review"
    allowed = client.add("public", original).id  # the same picture: it scores as high as the listed one
    result = client.check(upload, ["banned"])
    assert result.decision == "accept"
    (downgrade,) = result.downgrades
    assert (downgrade.cause, downgrade.list, downgrade.id) == ("allow_list", "public", allowed)
    assert (downgrade.before, downgrade.after) == ("review", "accept")
    assert f"{allowed!r}" in downgrade.reason and "at least as high" in downgrade.reason
    assert best(result, "disallow").id == listed and best(result, "disallow").decision == "review"
    assert best(result, "allow").score >= best(result, "disallow").score


def test_reject_needs_a_clearly_better_disallow_match(lookalike: ServerHandle, original: Path) -> None:
    client = lookalike.client
    client.create_list("banned")
    client.create_list("public", kind="allow")
    listed = client.add("banned", original).id
    upload = original.read_bytes()  # the listed bytes themselves: disallow score 1

    client.add("public", edited(original, "crop_30"))  # a weak likeness
    result = client.check(upload, ["banned"])
    allow = best(result, "allow")
    assert 0.5 <= allow.score <= 0.9, allow.score  # qualifies, yet 1 beats it by more than the margin
    assert result.decision == "reject" and result.downgrades == []

    close = client.add("public", edited(original, "colour_jitter")).id  # a close likeness
    result = client.check(upload, ["banned"])
    allow = best(result, "allow")
    assert allow.id == close and 0.9 < allow.score < 1.0, allow.score
    assert result.decision == "review"
    (downgrade,) = result.downgrades
    assert (downgrade.cause, downgrade.id, downgrade.before, downgrade.after) == (
        "allow_list",
        close,
        "reject",
        "review",
    )
    assert "clearly better" in downgrade.reason
    assert best(result, "disallow").id == listed and best(result, "disallow").decision == "reject"

    client.add("public", original)  # as good as the listed one: allow wins outright
    result = client.check(upload, ["banned"])
    assert result.decision == "accept" and [(d.before, d.after) for d in result.downgrades] == [("reject", "accept")]


def test_the_margin_is_configurable(tmp_path: Path, original: Path) -> None:
    from tests.conftest import start_server

    handle = start_server(tmp_path / "data", allow_margin=0.5)
    try:
        handle.client.create_list("banned")
        handle.client.create_list("public", kind="allow")
        handle.client.add("banned", original)
        handle.client.add("public", edited(original, "crop_30"))
        result = handle.client.check(original, ["banned"])
        assert 1.0 - best(result, "allow").score < 0.5
        assert result.decision == "review"
    finally:
        handle.stop()


def test_cli_creates_allow_lists_and_prints_why_a_check_was_downgraded(
    lookalike: ServerHandle, original: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "LOOKALIKE_SERVER": lookalike.address}

    def run(*args: str) -> list[dict[str, object]]:
        completed = subprocess.run(
            [str(LOOKALIKE), *args, "--json"], capture_output=True, text=True, timeout=120, env=env, check=True
        )
        return [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]

    (created,) = run("lists", "create", "public", "--kind", "allow")
    assert created["kind"] == "allow"
    run("lists", "create", "banned")
    upload = tmp_path / "upload.jpg"
    upload.write_bytes(original.read_bytes())
    run("add", "banned", str(upload))
    run("add", "public", str(upload))
    (checked,) = run("check", "banned", str(upload))
    assert checked["decision"] == "accept"
    assert [d["cause"] for d in checked["downgrades"]] == ["allow_list"]  # type: ignore[union-attr]
    assert {m["list_kind"] for m in checked["matches"]} == {"allow", "disallow"}  # type: ignore[union-attr]
