"""The `lookalike` command as scripts use it: JSON lines, per-image errors, exit codes."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from PIL import Image

from lookalike.client import LookalikeClient
from lookalike.client.cli import MAX_TOP_K, build_parser
from lookalike.server import service
from tests.conftest import ServerHandle, distinct_photos, jpeg_bytes, pasted_on_a_photo
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
    assert created["keypoints"] and not created["thumbnails"]
    run(lookalike, "lists", "create", "full", "--model", "sscd", "--no-keypoints", "--json")
    code, lists, _ = run(lookalike, "lists", "ls", "--json")
    assert code == 0 and [(x["name"], x["count"]) for x in lists] == [("banned", 0), ("full", 0)]
    code, (shown,), _ = run(lookalike, "lists", "show", "full", "--json")
    assert shown["model"] == "sscd" and not shown["keypoints"]
    code, (updated,), _ = run(lookalike, "lists", "update", "full", "--keypoints", "--json")
    assert code == 0 and updated["keypoints"]
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
        assert set(record) == {"path", "id", "sha256", "duplicate", "consistency_token"}
        assert record["duplicate"] is False

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
    whole = {"kind": "whole", "box": {"x": 0, "y": 0, "width": 200, "height": 150}, "frame": 0}
    assert shrunk["matches"][0]["evidence"]["embedding_view"] == whole  # the copy is the whole upload
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
    assert "hint: is `lookalike serve` running on 127.0.0.1:1?" in stderr


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


# A new user's rough edges -----------------------------------------------------------------------


def on_terminal(
    server: ServerHandle, *args: str, answer: str | None = None, stdin_terminal: bool = True
) -> tuple[int, list[str]]:
    """Run the CLI with stdout and stderr (and stdin, unless `stdin_terminal` is false) on a
    pseudo-terminal, as a person at a terminal would; `answer` is typed once a question ends in `] `.
    Returns the exit status and the terminal's lines as they would be seen."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
    process = subprocess.Popen(
        [str(LOOKALIKE), *args],
        stdin=terminal if stdin_terminal else subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "LOOKALIKE_SERVER": server.address},
    )
    os.close(terminal)
    raw = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: every holder of the terminal is gone
            break
        if not chunk:
            break
        raw += chunk
        if answer is not None and raw.rstrip().endswith(b"]"):
            os.write(controller, answer.encode() + b"\n")
            answer = None
    os.close(controller)
    code = process.wait(timeout=30)
    return code, screen(raw.decode(errors="replace"))


def screen(raw: str) -> list[str]:
    """What a terminal shows for `raw`: a carriage return goes back to the line's start and later
    characters overwrite earlier ones (cursor-movement escapes are dropped)."""
    lines: list[str] = []
    line: list[str] = []
    column = 0
    for char in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw):
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("".join(line).rstrip())
            line, column = [], 0
        else:
            line[column : column + 1] = [char]
            column += 1
    if line:
        lines.append("".join(line).rstrip())
    return lines


def cli(server: ServerHandle, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run the CLI with no terminal (`stdin` on its standard input): exit status, stdout, stderr."""
    completed = subprocess.run(
        [str(LOOKALIKE), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, "LOOKALIKE_SERVER": server.address},
    )
    return completed.returncode, completed.stdout.decode(), completed.stderr.decode()


def copies(folder: Path, photos: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        (folder / photo.name).write_bytes(photo.read_bytes())
    return folder


def test_results_and_the_progress_bar_never_share_a_terminal_line(lookalike: ServerHandle, tmp_path: Path) -> None:
    photos = distinct_photos(4, seed=23)
    lookalike.client.create_list("banned")
    for photo in photos[:2]:
        lookalike.client.add("banned", photo)
    folder = copies(tmp_path / "uploads", photos)
    code, lines = on_terminal(lookalike, "check", "banned", str(folder))
    assert code == 0, lines
    shown = [line for line in lines if str(folder) in line]
    assert len(shown) == 4, lines
    assert all(line.startswith(str(folder)) for line in shown), lines  # no bar before a result
    assert all("img/s" not in line and "%|" not in line for line in shown), lines  # nor after one
    assert re.fullmatch(r"4 checked: 2 reject, 0 review, 2 accept, 0 failed in \d+\.\d s", lines[-1]), lines


def test_plain_text_shows_every_match_readable_meta_and_plurals(lookalike: ServerHandle) -> None:
    photos = distinct_photos(4, seed=29)
    lookalike.client.create_list("banned")
    ids = [lookalike.client.add("banned", photo, meta={"case": "12", "source": "cli"}).id for photo in photos[:3]]
    _, stdout, _ = cli(lookalike, "check", "banned", str(photos[0]), "--top-k", "3", "-q")
    first, *more = stdout.splitlines()
    assert first.split("\t")[:3] == [str(photos[0]), "reject", f"banned/{ids[0]}"]
    assert sorted(line.split("\t")[0].strip() for line in more) == sorted(f"banned/{i}" for i in ids[1:])
    assert all(line.startswith("  ") and line.endswith("\taccept") for line in more), more

    shown = cli(lookalike, "entry", "banned", ids[0])[1].splitlines()
    assert "meta\tcase=12 source=cli" in shown
    lookalike.client.create_list("single")
    lookalike.client.add("single", photos[3])
    listed = cli(lookalike, "lists", "ls")[1]
    assert "banned\t3 entries\t" in listed and "single\t1 entry\t" in listed
    assert cli(lookalike, "lists", "rm", "single")[1] == "deleted single (1 entry)\n"


def test_phone_photos_in_heic_and_avif_are_added_and_found(lookalike: ServerHandle, tmp_path: Path) -> None:
    """A folder of HEIC photos is listed as any other; the same photo re-encoded as AVIF is found."""
    photos = distinct_photos(3, seed=41)
    phone = tmp_path / "phone"
    phone.mkdir()
    for path in photos[:2]:
        with Image.open(path) as image:
            image.convert("RGB").save(phone / f"{path.stem}.HEIC", format="HEIF", quality=80)
    with Image.open(photos[0]) as image:
        image.convert("RGB").resize((image.width // 2, image.height // 2)).save(tmp_path / "shared.avif", quality=60)
    with Image.open(photos[2]) as image:
        image.convert("RGB").save(tmp_path / "other.avif", quality=60)
    lookalike.client.create_list("banned")

    code, added, _ = run(lookalike, "add", "banned", str(phone), "--json")
    assert code == 0 and sorted(Path(x["path"]).stem for x in added) == sorted(p.stem for p in photos[:2])
    code, checks, _ = run(
        lookalike, "check", "banned", str(tmp_path / "shared.avif"), str(tmp_path / "other.avif"), "--json"
    )
    shared, other = checks
    first = next(x["id"] for x in added if Path(x["path"]).stem == photos[0].stem)
    assert code == 0 and shared["decision"] in ("reject", "review") and shared["matches"][0]["id"] == first
    assert other["decision"] == "accept"


def test_an_error_every_image_would_meet_is_reported_once(lookalike: ServerHandle, tmp_path: Path) -> None:
    folder = copies(tmp_path / "uploads", distinct_photos(12, seed=31))
    lookalike.client.create_list("banned")
    for command in (["add", "nope"], ["check", "banned,nope"], ["check", "banned", "--callback-url", "ftp://hooks"]):
        code, stdout, stderr = cli(lookalike, *command, str(folder), "--json")
        (printed,) = [json.loads(line) for line in stdout.splitlines()]
        assert code == 1 and "path" not in printed, (command, stdout)
        assert stderr.count("lookalike: ") == 1, (command, stderr)
        if "--callback-url" not in command:
            assert printed["reason"] == "LIST_NOT_FOUND" and "'nope' does not exist" in printed["error"]
            assert "`lookalike lists ls`" in printed["hint"] and "hint: `lookalike lists ls`" in stderr
        else:
            assert printed["reason"] == "URL_SCHEME" and printed["error"].startswith("INVALID_ARGUMENT: --callback-url")
    assert lookalike.client.get_list("banned").entry_count == 0


def test_empty_folders_are_reported_and_stdin_is_a_picture(lookalike: ServerHandle, tmp_path: Path) -> None:
    (photo,) = distinct_photos(1, seed=37)
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no pictures here")
    (notes / ".hidden.jpg").write_bytes(photo.read_bytes())
    lookalike.client.create_list("banned")
    for command in ("add", "check"):
        code, stdout, stderr = cli(lookalike, command, "banned", str(empty), str(notes), "--json")
        printed = [json.loads(line) for line in stdout.splitlines()]
        assert code == 1 and [p["path"] for p in printed] == [str(empty), str(notes)], stdout
        assert all(p["error"].startswith("no pictures in this folder") for p in printed)
        assert "0 failed" not in stderr and "2 failed" in stderr

    code, stdout, stderr = cli(lookalike, "add", "banned", "-", "--json", stdin=photo.read_bytes())
    (added,) = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and added["path"] == "-" and not added["duplicate"], stderr
    code, stdout, stderr = cli(lookalike, "check", "banned", "-", "--json", stdin=photo.read_bytes())
    (checked,) = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and checked["decision"] == "reject" and checked["matches"][0]["id"] == added["id"], stderr
    code, _, stderr = cli(lookalike, "check", "banned", "-", "-", stdin=photo.read_bytes())
    assert code == 1 and "can be given only once" in stderr
    code, lines = on_terminal(lookalike, "check", "banned", "-")  # no picture will come: say so, do not wait
    assert code == 1 and "reads a picture from stdin, here a terminal" in lines[-1]


def test_add_and_check_end_with_a_summary_on_stderr(lookalike: ServerHandle, tmp_path: Path) -> None:
    photos = distinct_photos(3, seed=41)
    folder = copies(tmp_path / "uploads", photos[:2])
    (folder / "broken.jpg").write_bytes(b"not a picture")
    lookalike.client.create_list("banned")
    lookalike.client.add("banned", photos[0])
    code, stdout, stderr = cli(lookalike, "add", "banned", str(folder), "--json")
    assert code == 1 and len(stdout.splitlines()) == 3  # --json output unchanged: one object per input
    assert all(
        set(json.loads(line)) <= {"path", "id", "sha256", "duplicate", "consistency_token", "error", "code", "reason"}
        for line in stdout.splitlines()
    )
    assert re.fullmatch(r"1 added to banned, 1 duplicate, 1 failed in \d+\.\d s", screen(stderr)[-1]), stderr
    code, stdout, stderr = cli(lookalike, "check", "banned", str(folder), str(photos[2]), "--json")
    assert code == 1 and len(stdout.splitlines()) == 4
    assert re.fullmatch(r"3 checked: 2 reject, 0 review, 1 accept, 1 failed in \d+\.\d s", screen(stderr)[-1]), stderr
    code, _, stderr = cli(lookalike, "check", "banned", str(photos[2]), "--quiet")
    assert code == 0 and stderr == ""


def test_version_and_help_say_what_each_command_does(lookalike: ServerHandle) -> None:
    code, stdout, _ = cli(lookalike, "--version")
    assert code == 0 and stdout.strip() == f"lookalike {version('lookalike')}"
    code, stdout, _ = cli(lookalike, "import", "--help")
    assert code == 0 and "Import a hash list file into a list." in stdout and "(default: 1000)" in stdout
    code, _, stderr = cli(lookalike, "check", "banned", "x.jpg", "--top-k", "-1")
    assert code == 2 and "--top-k: must lie in [0, 1000], got -1" in stderr
    assert MAX_TOP_K == service.MAX_TOP_K

    def commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    yield from commands(command)

    for command in commands(build_parser()):
        assert command.description, command.prog
        for action in command._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{command.prog} {action.dest}"
        helped = command.format_help()
        for action in command._actions:
            if action.option_strings and action.dest != "server" and isinstance(action.default, int | float | str):
                # --server's default may come from LOOKALIKE_SERVER; its help names the built-in one
                shown = action.default not in (0, False, "", argparse.SUPPRESS)
                assert not shown or str(action.default) in helped, f"{command.prog} {action.dest}"


def test_removing_a_list_asks_on_a_terminal(lookalike: ServerHandle) -> None:
    (photo,) = distinct_photos(1, seed=43)
    for name in ("kept", "asked", "scripted", "piped"):
        lookalike.client.create_list(name)
    lookalike.client.add("kept", photo)
    code, lines = on_terminal(lookalike, "lists", "rm", "kept", answer="n")
    assert code == 1 and "delete list kept and its 1 entry? This cannot be undone. [y/N]" in lines[0]
    assert lines[-1] == "lookalike: kept not deleted"
    code, lines = on_terminal(lookalike, "lists", "rm", "asked", answer="y")
    assert code == 0 and lines[-1] == "deleted asked (0 entries)", lines
    code, lines = on_terminal(lookalike, "lists", "rm", "scripted", "--yes")
    assert code == 0 and lines == ["deleted scripted (0 entries)"]
    # no terminal to ask on (a script, a pipe): deleted as before, so existing scripts keep working
    code, lines = on_terminal(lookalike, "lists", "rm", "piped", stdin_terminal=False)
    assert code == 0 and lines == ["deleted piped (0 entries)"]
    assert [info.name for info in lookalike.client.lists()] == ["kept"]


def test_a_check_in_plain_text_says_where_in_the_picture_the_match_lies(
    lookalike: ServerHandle, tmp_path: Path
) -> None:
    """A listed photo pasted on another: the line ends with the part's size and place in the upload's pixels;
    the photo itself, matched whole, ends with its score as before."""
    photo, background = distinct_photos(12, seed=11)[:2]
    lookalike.client.create_list("banned")
    lookalike.client.add("banned", photo)
    canvas, (left, top, right, bottom) = pasted_on_a_photo(photo, background)
    (tmp_path / "pasted.jpg").write_bytes(jpeg_bytes(canvas, quality=90))
    code, stdout, _ = cli(lookalike, "check", "banned", str(tmp_path / "pasted.jpg"), str(photo))
    assert code == 0
    inside, whole = stdout.splitlines()
    found = re.search(r"\tin part (\d+)x(\d+) at (\d+),(\d+)$", inside)
    assert found is not None, inside
    width, height, x, y = map(int, found.groups())
    assert abs(x - left) + abs(y - top) + abs(x + width - right) + abs(y + height - bottom) <= 24
    assert whole.endswith("score 1.000"), whole
