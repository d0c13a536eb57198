"""Hash list files in other programs' layouts through the real CLI and a real server: each layout told
apart from its first lines, `--format` overriding that, and exports in every format read back the same."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Any

from lookalike.client import LookalikeClient
from tests.conftest import ServerHandle
from tests.processes import LOOKALIKE
from tests.test_cli import run


def pdq_hashes(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.randbytes(32).hex() for _ in range(count)]


def listed(client: LookalikeClient, name: str) -> list[tuple[str, int, dict[str, str], str]]:
    """A list's entries as (pdq, quality, meta, md5), in the order added."""
    return [(e.hashes.pdq, e.hashes.pdq_quality, e.meta, e.hashes.md5) for e in client.export_entries(name)]


def imported(server: ServerHandle, name: str, path: Path, *flags: str) -> tuple[int, list[dict[str, Any]]]:
    """Import `path` into a new list `name`; the exit code and what the CLI printed."""
    server.client.create_list(name)
    code, printed, _ = run(server, "import", name, str(path), "--json", "--quiet", *flags)
    return code, printed


def test_each_programs_layout_is_recognised_from_its_first_lines(lookalike: ServerHandle, tmp_path: Path) -> None:
    """No --format, and file names that say nothing: the content alone picks the reader."""
    h = pdq_hashes(4, seed=1)
    md5 = "0f" * 16
    layouts = {
        "bare": f"{h[0]}\n\n{h[1].upper()}\n",
        "signals": f"pdq {h[0]}\n pdq {h[1]} 80\nmd5 {md5}\nPDQ {h[2]} 'Sample Data'\n",
        "hash-filename": f"{h[0]},photos/a.jpg\n{h[1]},b,c.jpg\n",
        "hasher-details": (
            f"hash={h[0]},norm=128,delta=0,quality=90,filename=photos/a,b=c.jpg\n"
            f"hash={h[1]},norm=130,delta=120,quality=49,filename=b.jpg\n"
        ),
        "dataset": (
            "signal_type,signal_str,collab,category,tags\n"
            f"pdq,{h[0]},Sample Data,POSITIVE_CLASS,tag1 tag2\n"
            f"pdq,{h[1]},Sample Data,INVESTIGATION_SEED,\n"
        ),
        "hasher-csv": f"{h[0]},60,a.jpg\n{h[1]},70,b.jpg\n",  # today's pdq-csv, headerless
    }
    expected: dict[str, list[tuple[str, int, dict[str, str], str]]] = {
        "bare": [(h[0], 100, {}, ""), (h[1], 100, {}, "")],
        "signals": [
            (h[0], 100, {}, ""),
            (h[1], 80, {}, ""),
            ("", 0, {}, md5),
            (h[2], 100, {"note": "'Sample Data'"}, ""),
        ],
        "hash-filename": [(h[0], 100, {"filename": "photos/a.jpg"}, ""), (h[1], 100, {"filename": "b,c.jpg"}, "")],
        "hasher-details": [(h[0], 90, {"filename": "photos/a,b=c.jpg"}, ""), (h[1], 49, {"filename": "b.jpg"}, "")],
        "dataset": [
            (h[0], 100, {"collab": "Sample Data", "category": "POSITIVE_CLASS", "tags": "tag1 tag2"}, ""),
            (h[1], 100, {"collab": "Sample Data", "category": "INVESTIGATION_SEED"}, ""),
        ],
        "hasher-csv": [(h[0], 60, {"filename": "a.jpg"}, ""), (h[1], 70, {"filename": "b.jpg"}, "")],
    }
    for name, text in layouts.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(text)
        code, printed = imported(lookalike, name, path)
        assert code == 0 and printed[-1]["failed"] == 0, (name, printed)
        assert listed(lookalike.client, name) == expected[name], name

    # From stdin too: the lines read to recognise the layout are imported with the rest.
    details = (tmp_path / "hasher-details.txt").read_text()
    lookalike.client.create_list("piped")
    completed = subprocess.run(
        [str(LOOKALIKE), "import", "piped", "-", "--json", "--quiet"],
        input=details,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LOOKALIKE_SERVER": lookalike.address},
    )
    assert completed.returncode == 0, completed.stderr
    assert listed(lookalike.client, "piped") == expected["hasher-details"]


def test_format_overrides_the_guess_and_bad_lines_are_named_in_every_layout(
    lookalike: ServerHandle, tmp_path: Path
) -> None:
    h = pdq_hashes(6, seed=2)
    # File names that are numbers read like qualities: recognised as pdq-csv, every line fails ...
    numbered = tmp_path / "numbered.csv"
    numbered.write_text(f"{h[0]},101\n{h[1]},102\n")
    code, printed = imported(lookalike, "guessed", numbered)
    assert code == 1 and [p.get("reason") for p in printed[:-1]] == ["PDQ_QUALITY_INVALID"] * 2
    # ... and --format says what they are.
    code, printed = imported(lookalike, "forced", numbered, "--format", "hash-filename")
    assert code == 0 and [meta for _, _, meta, _ in listed(lookalike.client, "forced")] == [
        {"filename": "101"},
        {"filename": "102"},
    ]

    bad_files = {
        "pdq-hashes": (f"{h[0]}\n{h[1]} extra\n\nnothex\n{h[2][:60]}\n", [2, 4, 5]),
        "te-signals": (f"pdq {h[0]}\nvideo_md5 {'ab' * 16}\npdq\npdq {h[1]} 101\nurl_md5 x\n", [2, 3, 4, 5]),
        "hash-filename": (f"{h[0]},a.jpg\nzz,b.jpg\n{h[1]}\n", [2]),
        "pdq-details": (f"hash={h[0]},quality=80,filename=a\nnonsense\nhash={h[1]},quality=high\n", [2, 3]),
        "te-dataset": (
            f"signal_type,signal_str,collab,category,tags\npdq,{h[0]},c,POSITIVE_CLASS,\nurl,http://x,c,,\n"
            f'pdq,"{h[1]}\nsecond line",c,,\npdq,{h[2]},c,,,extra\n',
            [3, 4, 6],
        ),
    }
    messages: dict[str, dict[int, str]] = {}
    for layout, (text, bad_lines) in bad_files.items():
        path = tmp_path / f"bad-{layout}.txt"
        path.write_text(text)
        code, printed = imported(lookalike, f"bad-{layout}", path)
        *errors, final = printed
        assert code == 1 and [e["line"] for e in errors] == bad_lines, (layout, errors)
        assert final["failed"] == len(bad_lines) and final["added"] >= 1, (layout, final)
        messages[layout] = {e["line"]: e["error"] for e in errors}
    assert "'video_md5' is not a picture hash" in messages["te-signals"][2]
    assert "e.g. 'pdq HASH'" in messages["te-signals"][3]
    assert "one PDQ hash alone" in messages["pdq-hashes"][2] and "key=value" in messages["pdq-details"][2]
    assert "'url' is not a picture hash" in messages["te-dataset"][3]

    # A dataset file without its header row names what is missing on every line.
    headless = tmp_path / "headless.csv"
    headless.write_text(f"pdq,{h[3]},c,,\n")
    code, printed = imported(lookalike, "headless", headless, "--format", "te-dataset")
    assert code == 1 and printed[0]["line"] == 1 and "signal_type" in printed[0]["error"]


def test_exports_in_every_format_import_into_a_fresh_list_as_the_same_entries(
    lookalike: ServerHandle, tmp_path: Path
) -> None:
    client = lookalike.client
    client.create_list("source")
    h = pdq_hashes(3, seed=3)
    client.add_hash("source", client.hash_entry(pdq=h[0], pdq_quality=70, meta={"filename": "a, b.jpg"}, id="one"))
    client.add_hash("source", client.hash_entry(pdq=h[1], pdq_quality=100, meta={"filename": "b.jpg"}, id="two"))
    client.add_hash("source", client.hash_entry(pdq=h[2], pdq_quality=55, meta={"filename": "c.jpg"}, id="three"))
    client.add_hash("source", client.hash_entry(md5="1e" * 16, id="digest-only"))
    source = listed(client, "source")
    with_pdq = [entry for entry in source if entry[0]]

    exports = {
        "jsonl": ("--format", "jsonl"),
        "pdq-csv": ("--format", "pdq-csv"),
        "headerless": ("--format", "pdq-csv", "--no-header"),
        "hashes": ("--format", "pdq-hashes"),
    }
    files: dict[str, Path] = {}
    for name, flags in exports.items():
        files[name] = tmp_path / f"{name}.out"
        code, _, stderr = run(lookalike, "export", "source", "--output", str(files[name]), *flags)
        written = 4 if name == "jsonl" else 3
        assert code == 0 and f"exported {written} entries" in stderr, (name, stderr)
        code, printed = imported(lookalike, name, files[name])
        assert code == 0 and printed[-1] == {"list": name, "added": written, "duplicates": 0, "failed": 0}

    assert listed(client, "jsonl") == source
    assert [e.id for e in client.export_entries("jsonl")] == ["one", "two", "three", "digest-only"]
    assert listed(client, "pdq-csv") == listed(client, "headerless") == with_pdq
    assert [e.id for e in client.export_entries("pdq-csv")] == ["one", "two", "three"]
    assert listed(client, "hashes") == [(pdq, 100, {}, "") for pdq, *_ in with_pdq]  # the hashes alone

    headerless = files["headerless"].read_text().splitlines()
    assert headerless == [f'{h[0]},70,"a, b.jpg"', f"{h[1]},100,b.jpg", f"{h[2]},55,c.jpg"]
    assert files["hashes"].read_text() == "".join(f"{pdq}\n" for pdq in h)
    code, _, stderr = run(lookalike, "export", "source", "--format", "jsonl", "--no-header")
    assert code != 0 and "--no-header applies to --format pdq-csv only" in stderr


def test_a_headerless_export_without_file_names_is_hash_and_quality(lookalike: ServerHandle, tmp_path: Path) -> None:
    client = lookalike.client
    client.create_list("plain")
    h = pdq_hashes(2, seed=4)
    for quality, pdq in zip((80, 90), h, strict=True):
        client.add_hash("plain", client.hash_entry(pdq=pdq, pdq_quality=quality, meta={"case": "7"}))
    code, _, _ = run(lookalike, "export", "plain", "--format", "pdq-csv", "--no-header", "-o", str(tmp_path / "p.csv"))
    assert code == 0 and (tmp_path / "p.csv").read_text() == f"{h[0]},80\n{h[1]},90\n"
    code, _ = imported(lookalike, "copy", tmp_path / "p.csv")
    assert code == 0 and listed(client, "copy") == [(h[0], 80, {}, ""), (h[1], 90, {}, "")]
