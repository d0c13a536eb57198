"""Flood guard: an entry that suddenly matches far more often than usual rejects no more until confirmed."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lookalike.client import LookalikeClient
from lookalike.server.changes import ListCreated
from lookalike.server.flood import FloodGuard, FloodSettings
from lookalike.server.records import EntryRecord
from lookalike.server.storage.store import Store
from tests.conftest import ServerHandle, distinct_photos, start_server
from tests.processes import json_cli

SMALL_WINDOWS = {"flood_min_matches": 3, "flood_short_window": 60.0, "flood_long_window": 6000.0, "flood_factor": 5.0}


def scrape(handle: ServerHandle, name: str, **labels: str) -> float:
    port = handle.running.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path / "data", metrics_listen="127.0.0.1:0", **SMALL_WINDOWS)
    yield handle
    handle.stop()


def test_a_burst_of_matches_guards_the_entry_until_an_admin_confirms_it(guarded: ServerHandle) -> None:
    common, rare = (path.read_bytes() for path in distinct_photos(2, seed=17))
    client = guarded.client
    client.create_list("banned")
    flooding = client.add("banned", common).id
    other = client.add("banned", rare).id
    assert [client.check(common, ["banned"]).decision for _ in range(2)] == ["reject", "reject"]

    tripped = client.check(common, ["banned"])  # the third within the short window
    assert tripped.decision == "review"
    (downgrade,) = tripped.downgrades
    assert (downgrade.cause, downgrade.list, downgrade.id) == ("flood_guard", "banned", flooding)
    assert (downgrade.before, downgrade.after) == ("reject", "review") and "admin confirms" in downgrade.reason
    (match,) = tripped.matches
    assert match.guarded and match.decision == "review" and match.score == 1.0
    assert client.check(rare, ["banned"]).decision == "reject"  # other entries are unaffected

    _, (shown,) = json_cli(guarded.address, "lists", "show", "banned", check=True)
    (guard,) = shown["guarded"]  # type: ignore[misc]
    assert guard["id"] == flooding and round(guard["recent_matches"]) == 3 and guard["usual_matches"] < 1
    entry = client.get_entry("banned", flooding)
    assert entry.guard is not None and entry.guard.id == flooding
    assert client.get_entry("banned", other).guard is None
    assert scrape(guarded, "lookalike_flood_guarded_entries", list="banned") == 1
    assert scrape(guarded, "lookalike_flood_downgrades_total", list="banned") == 1

    guarded.restart()  # the guard is stored: it outlives the process
    client = guarded.client
    assert client.check(common, ["banned"]).decision == "review"
    assert [g.id for g in client.get_list("banned").guarded] == [flooding]

    _, (confirmed,) = json_cli(guarded.address, "confirm", "banned", flooding, check=True)
    assert confirmed == {"list": "banned", "id": flooding, "confirmed": True}
    assert client.get_list("banned").guarded == []
    assert scrape(guarded, "lookalike_flood_guarded_entries", list="banned") == 0
    # Confirmed: the present rate is its usual one, so more of the same does not trip it again.
    assert [client.check(common, ["banned"]).decision for _ in range(3)] == ["reject"] * 3
    (audit,) = [record for record in client.audit("banned") if record.action == "entry.confirm"]
    assert audit.entry_id == flooding and audit.detail["guarded"] == "true"


def test_confirming_needs_an_admin(guarded: ServerHandle) -> None:
    from lookalike.client import PermissionDenied

    (photo,) = (path.read_bytes() for path in distinct_photos(1, seed=4))
    boot = guarded.client
    boot.create_list("banned")
    entry = boot.add("banned", photo).id
    root = boot.create_key("admin")
    admin = LookalikeClient(guarded.address, api_key=root.secret)
    writer = LookalikeClient(guarded.address, api_key=admin.create_key("writer", ["banned"]).secret)
    try:
        with pytest.raises(PermissionDenied):
            writer.confirm_entry("banned", entry)
        assert admin.confirm_entry("banned", entry).id == entry
    finally:
        admin.close()
        writer.close()


# The rates, with the clock in hand ------------------------------------------------------------------


def test_a_usual_rate_never_trips_but_a_burst_does_and_confirming_resets_usual(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", 1 << 26)
    try:
        guard = FloodGuard(store, FloodSettings(min_matches=3, factor=5.0, short_window=60.0, long_window=6000.0))
        new_list = ListCreated(
            time=1_000_000.0, name="banned", description="", review_threshold=0.5, reject_threshold=0.8, model="sscd"
        )
        listed = store.commit(new_list).result
        entry = EntryRecord("e1", 1, bytes(32), b"", 0, b"", "")
        now = 1_000_000.0
        for _ in range(1000):  # two matches a minute for eight hours: below min_matches in any short window
            now += 30.0
            guard.observe(listed, [entry], now)
        assert guard.guard_of(listed.uid, entry.seq) is None
        for _ in range(6):  # a few more at once: not five times the usual rate yet
            guard.observe(listed, [entry], now)
        assert guard.guard_of(listed.uid, entry.seq) is None
        for _ in range(20):
            now += 0.1
            guard.observe(listed, [entry], now)
        tripped = guard.guard_of(listed.uid, entry.seq)
        assert tripped is not None and tripped.recent > 5 * tripped.usual

        with guard.lifting(now) as lift, store.environment.transaction() as txn:  # as a confirmation commits
            lift(txn, (listed.uid, entry.seq))
        assert guard.guard_of(listed.uid, entry.seq) is None
        for _ in range(20):  # the same burst again is now usual
            now += 0.1
            guard.observe(listed, [entry], now)
        assert guard.guard_of(listed.uid, entry.seq) is None
        guard.save_rates(now)
        reloaded = FloodGuard(store, guard.settings)  # rates come back after a restart
        for _ in range(3):
            reloaded.observe(listed, [entry], now)
        assert reloaded.guard_of(listed.uid, entry.seq) is None
    finally:
        store.close()
