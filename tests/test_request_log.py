"""The request log and the list names a call may carry stay bounded, whatever a caller sends:
a log line shows a few names and counts the rest, and a request naming more lists than any
real caller does is refused before any other work."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lookalike.client import LookalikeClient
from lookalike.client.errors import InvalidArgument, NotFound, Unauthenticated
from lookalike.server.records import LISTS_NAMED_MAX
from tests.conftest import ServerHandle, corpus_photos

LINE_MAX = 400
"""Longer than any request line with three short names, far shorter than one listing thousands."""


def request_lines(caplog: pytest.LogCaptureFixture, method: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "lookalike.requests" and f" method={method} " in r.getMessage()
    ]


@pytest.fixture
def photo() -> bytes:
    return corpus_photos()[0].read_bytes()


@pytest.fixture
def keyless(lookalike: ServerHandle) -> LookalikeClient:
    """A caller without a key, once a key exists (so calls need one)."""
    lookalike.client.create_key("admin", name="ops")
    return lookalike.client


def test_an_unauthenticated_call_naming_100_000_lists_is_refused_with_a_short_log_line(
    keyless: LookalikeClient, photo: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lookalike.requests")
    names = [f"list-{number}" for number in range(100_000)]

    with pytest.raises(InvalidArgument, match=f"100,000 list names in one request; at most {LISTS_NAMED_MAX}") as check:
        keyless.check(photo, names)
    with pytest.raises(InvalidArgument) as hashes:
        keyless.check_hashes(names, md5="0" * 32)
    with pytest.raises(InvalidArgument) as key:
        keyless.create_key("checker", names)
    assert check.value.reason == hashes.value.reason == key.value.reason == "LISTS_TOO_MANY"

    for method in ("Check", "CheckHashes", "CreateKey"):
        (line,) = request_lines(caplog, method)
        assert " lists=list-0,list-1,list-2,+99997 items=1 " in line and "code=INVALID_ARGUMENT" in line, line
        assert len(line) < LINE_MAX, line


def test_names_past_the_byte_limit_are_refused_and_logged_cut_short(
    keyless: LookalikeClient, photo: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lookalike.requests")
    with pytest.raises(InvalidArgument, match="list names of 100,000 bytes in one request; at most 16,384") as raised:
        keyless.check(photo, ["x" * 50_000, "y" * 50_000])
    assert raised.value.reason == "LISTS_TOO_MANY"
    (line,) = request_lines(caplog, "Check")
    assert len(line) < LINE_MAX, line


def test_a_request_at_the_limit_is_judged_as_usual(lookalike: ServerHandle, photo: bytes) -> None:
    names = [f"list-{number}" for number in range(LISTS_NAMED_MAX)]
    with pytest.raises(NotFound):  # not refused for its size: the lists just do not exist
        lookalike.client.check(photo, names)
    lookalike.client.create_key("admin", name="ops")
    with pytest.raises(Unauthenticated):
        lookalike.client.check(photo, names)


def test_a_check_stream_whose_items_name_many_lists_keeps_one_short_log_line(
    lookalike: ServerHandle, photo: bytes, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="lookalike.requests")
    client = lookalike.client
    client.create_list("banned")
    items = 20
    per_item = 5000
    requests = [client.check_request(photo, ["banned"])]
    requests += [
        client.check_request(photo, [f"item-{item}-list-{number}" for number in range(per_item)])
        for item in range(items)
    ]
    requests.append(client.check_request(photo, ["banned"]))

    outcomes = [outcome for _, outcome in client.check_many(requests)]

    refused = outcomes[1:-1]
    assert all(isinstance(o, InvalidArgument) and o.reason == "LISTS_TOO_MANY" for o in refused), refused[:1]
    assert [o.decision for o in (outcomes[0], outcomes[-1])] == ["accept", "accept"]  # type: ignore[union-attr]
    (line,) = request_lines(caplog, "CheckStream")
    more = items * per_item - 2  # "banned" and the first item's first two names are shown
    assert f" lists=banned,item-0-list-0,item-0-list-1,+{more} items={items + 2} " in line, line
    assert len(line) < LINE_MAX, line
