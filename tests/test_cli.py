"""The `lookalike` command as scripts use it: JSON lines, per-image errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from PIL import Image

from client import LookalikeClient
from tests.conftest import ServerHandle, distinct_photos, jpeg_bytes
from tests.processes import LOOKALIKE


def run(server: ServerHandle, *args: str, env: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]], str]:
    """Run the CLI; returns exit status, the JSON objects it printed, and stderr."""
    completed = subprocess.run(
        [str(LOOKALIKE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LOOKALIKE_SERVER": server.address, **(env or {})},
    )
    printed = completed.stdout.splitlines() if "--json" in args else []
    lines = [json.loads(line) for line in printed if line.strip()]
    return completed.returncode, lines, completed.stderr


def test_list_commands(lookalike: ServerHandle) -> None:
    code, (created,), _ = run(
        lookalike,
        "lists",
        "create",
        "banned",
        "--review-threshold",
        "0.4",
        "--reject-threshold",
        "0.9",
        "--description",
        "takedowns",
        "--json",
    )
    assert code == 0
    assert created["name"] == "banned" and created["review_threshold"] == 0.4 and created["model"] == "sscd-distilled"
    run(lookalike, "lists", "create", "full", "--model", "sscd", "--json")
    code, lists, _ = run(lookalike, "lists", "ls", "--json")
    assert code == 0 and [(x["name"], x["count"]) for x in lists] == [("banned", 0), ("full", 0)]
    code, (shown,), _ = run(lookalike, "lists", "show", "full", "--json")
    assert shown["model"] == "sscd"
    code, _, stderr = run(lookalike, "lists", "create", "banned", "--json")
    assert code == 1 and "ALREADY_EXISTS" in stderr
    code, _, stderr = run(lookalike, "lists", "show", "nope")
    assert code == 1 and "NOT_FOUND" in stderr
    code, (deleted,), _ = run(lookalike, "lists", "rm", "full", "--json")
    assert code == 0 and deleted["deleted"]


def test_add_check_remove_contract(lookalike: ServerHandle, tmp_path: Path) -> None:
    photos = distinct_photos(4, seed=11)
    listed = tmp_path / "listed" / "nested"
    listed.mkdir(parents=True)
    for path in photos[:3]:
        (listed / path.name).write_bytes(path.read_bytes())
    (listed / "broken.jpg").write_bytes(b"not a picture")
    run(lookalike, "lists", "create", "banned")

    code, added, _ = run(lookalike, "add", "banned", str(tmp_path / "listed"), "--meta", "source=cli", "--json")
    assert code == 1  # one image failed, the rest were added
    by_path = {Path(x["path"]).name: x for x in added}
    assert set(by_path) == {p.name for p in photos[:3]} | {"broken.jpg"}
    assert "error" in by_path["broken.jpg"]
    for path in photos[:3]:
        record = by_path[path.name]
        assert set(record) == {"path", "id", "sha256", "duplicate"} and record["duplicate"] is False

    code, again, _ = run(lookalike, "add", "banned", str(listed / photos[0].name), "--json")
    assert code == 0 and again[0]["duplicate"] is True and again[0]["id"] == by_path[photos[0].name]["id"]

    queries = tmp_path / "queries"
    queries.mkdir()
    with Image.open(photos[0]) as image:
        (queries / "shrunk.jpg").write_bytes(jpeg_bytes(image.convert("RGB").resize((200, 150)), quality=50))
    (queries / "other.jpg").write_bytes(photos[3].read_bytes())
    code, checks, _ = run(
        lookalike,
        "check",
        "banned",
        str(queries / "shrunk.jpg"),
        str(queries / "other.jpg"),
        str(tmp_path / "missing.jpg"),
        "--json",
    )
    assert code == 1
    results = {Path(x["path"]).name: x for x in checks}
    shrunk, other, missing = results["shrunk.jpg"], results["other.jpg"], results["missing.jpg"]
    assert shrunk["decision"] in ("reject", "review")
    assert shrunk["matches"][0]["id"] == by_path[photos[0].name]["id"]
    assert shrunk["matches"][0]["meta"] == {"source": "cli"}
    assert 0 < shrunk["matches"][0]["score"] <= 1 and shrunk["matches"][0]["list"] == "banned"
    assert other["decision"] == "accept" and other["matches"] == [] and len(other["sha256"]) == 64
    assert "error" in missing

    code, nearest, _ = run(lookalike, "check", "banned", str(queries / "other.jpg"), "--top-k", "2", "--json")
    assert code == 0 and len(nearest[0]["matches"]) == 2 and nearest[0]["decision"] == "accept"

    target = by_path[photos[0].name]["id"]
    code, removed, _ = run(lookalike, "remove", "banned", target, "no-such-id", "--json")
    assert code == 1 and removed[0] == {"id": target, "removed": True} and "error" in removed[1]
    code, after, _ = run(lookalike, "check", "banned", str(queries / "shrunk.jpg"), "--json")
    assert code == 0 and after[0]["decision"] == "accept"
    code, lists, _ = run(lookalike, "lists", "ls", "--json")
    assert lists[0]["count"] == 2


def test_server_flag_and_unreachable_server(lookalike: ServerHandle) -> None:
    code, lists, _ = run(
        lookalike, "lists", "ls", "--json", "--server", lookalike.address, env={"LOOKALIKE_SERVER": ""}
    )
    assert code == 0 and lists == []
    code, _, stderr = run(lookalike, "lists", "ls", "--server", "127.0.0.1:1")
    assert code == 1 and "UNAVAILABLE" in stderr


def test_urls_are_fetched_by_the_server(lookalike: ServerHandle, tmp_path: Path) -> None:
    import http.server
    import threading
    from functools import partial

    (photo,) = distinct_photos(1, seed=5)
    (tmp_path / photo.name).write_bytes(photo.read_bytes())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = partial(Quiet, directory=str(tmp_path))
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/{photo.name}"
    try:
        run(lookalike, "lists", "create", "banned")
        code, (added,), _ = run(lookalike, "add", "banned", url, "--json")
        assert code == 0 and added["path"] == url and not added["duplicate"]
        code, (checked, missing), _ = run(lookalike, "check", "banned", url, f"{url}.missing", "--json")
        assert code == 1
        assert checked["decision"] == "reject" and checked["matches"][0]["id"] == added["id"]
        assert missing["path"] == f"{url}.missing" and "404" in missing["error"]
    finally:
        web.shutdown()
        web.server_close()


def test_a_reader_that_stops_early_ends_the_command_quietly(lookalike: ServerHandle) -> None:
    """`lookalike export LIST | head` must not end in a traceback."""
    lookalike.client.create_list("banned")
    entries = [LookalikeClient.hash_entry(pdq=f"{number + 1:064x}") for number in range(2000)]
    assert lookalike.client.import_entries("banned", entries).added == 2000
    with subprocess.Popen(
        [str(LOOKALIKE), "export", "banned"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LOOKALIKE_SERVER": lookalike.address},
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.readline()
        process.stdout.close()  # the reader goes away after one line
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=60) == 141
    assert "Traceback" not in stderr
