"""Hash lists on a real server: entries and checks by PDQ, MD5 and SHA-256, rotations and mirrors derived
from a hash, and lists moved between servers as JSON lines or ThreatExchange PDQ CSV through the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import grpc
import imagehash
import lmdb
import numpy as np
import pytest
from PIL import Image

from benchmarks.edits import EDIT_FAMILIES, encode_edited
from lookalike.client import CheckResult, InvalidArgument, LookalikeClient, NotFound
from lookalike.client.stub import translate
from lookalike.server.fingerprint import phash_variants
from lookalike.server.hashes import pdq_dihedral
from lookalike.server.pdq import pdq_hashes
from lookalike.server.scoring import DEFAULT_REJECT_THRESHOLD, DEFAULT_REVIEW_THRESHOLD, Evidence, score
from lookalike.server.service import nearest_bits
from lookalike.server.storage.schema import DB_ENTRIES, DB_LISTS
from tests.conftest import ServerHandle, distinct_photos, start_server
from tests.test_cli import run

TURNS = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)
"""The picture's rotations and mirrors, in the order `pdq_dihedral` returns their hashes."""


def photo_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def pdq_of(picture: Image.Image) -> tuple[str, int]:
    variants, quality = pdq_hashes(picture)
    return variants[0].hex(), quality


def with_flipped_bits(pdq: str, count: int, seed: int = 0) -> str:
    """`pdq` with `count` distinct bits flipped."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(pdq), np.uint8))
    bits[random.Random(seed).sample(range(256), count)] ^= 1
    return np.packbits(bits).tobytes().hex()


def random_pdq(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def summary(result: CheckResult) -> tuple[str, list[tuple[Any, ...]]]:
    """What a check answered, without its request id and time."""
    return result.decision, [(m.list, m.id, m.meta, m.score, m.decision, m.evidence) for m in result.matches]


# PDQ's rotations and mirrors from the hash alone ------------------------------------------


def test_pdq_variants_derived_from_a_hash_match_the_turned_pictures() -> None:
    """Transposes are exact; mirrors and turns land about as close as PDQ's own dihedral hashes do."""
    distances: dict[int, list[int]] = {turn: [] for turn in range(len(TURNS))}
    from_pixels: list[int] = []
    for path in distinct_photos(10, seed=21):
        picture = photo_rgb(path)
        pixels_variants, _ = pdq_hashes(picture)
        derived = pdq_dihedral(pixels_variants[0])
        assert len(set(derived)) == 8
        for turn, transpose in enumerate(TURNS):
            turned = picture if transpose is None else picture.transpose(transpose)
            distances[turn].append(nearest_bits([derived[turn]], pdq_hashes(turned)[0][0]))
        from_pixels.extend(nearest_bits(pixels_variants, d) for d in derived)
    assert distances[0] == distances[6] == [0] * 10  # itself, and the transpose: exact
    for turn, found in distances.items():
        assert np.mean(found) <= 20 and sum(d <= 31 for d in found) >= 8, (TURNS[turn], found)
    assert np.mean(from_pixels) <= 12, from_pixels  # PDQ's own variants, from the pixels, are close by


def test_phash_variants_are_imagehash_of_the_picture_and_of_each_turn() -> None:
    """The first is imagehash's pHash itself; the others, derived from one DCT, are the turned pictures' own pHash,
    but for a bit pair at the median now and then (resampling rounds differently)."""
    differing: list[int] = []
    for path in distinct_photos(10, seed=23):
        picture = photo_rgb(path).reduce(4)
        variants = phash_variants(picture)
        assert variants[0] == np.packbits(imagehash.phash(picture).hash.reshape(-1)).tobytes()
        assert len(set(variants)) == 8
        for turn, transpose in enumerate(TURNS[1:], start=1):
            own = phash_variants(picture.transpose(transpose))[0]
            differing.append(nearest_bits([own], variants[turn]))
    assert max(differing) <= 4 and sum(d == 0 for d in differing) >= 0.8 * len(differing), differing


# Adding and checking by hash -------------------------------------------------------------


def test_hash_entries_match_by_the_signals_they_have(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("shared")
    rng = random.Random(3)
    pdq = random_pdq(rng)
    md5, sha256 = rng.randbytes(16).hex(), rng.randbytes(32).hex()
    by_pdq = client.add_hash("shared", client.hash_entry(pdq=pdq.upper(), pdq_quality=90, meta={"case": "7"}))
    by_md5 = client.add_hash("shared", client.hash_entry(md5=md5, id="md5-entry"))
    by_sha = client.add_hash("shared", client.hash_entry(sha256=sha256, meta={"source": "ncmec"}))
    assert by_pdq.hashes.pdq == pdq and by_pdq.hashes.pdq_quality == 90 and by_pdq.sha256 == ""
    assert by_md5.id == "md5-entry" and by_md5.hashes.md5 == md5
    assert client.get_entry("shared", by_sha.id).hashes.sha256 == sha256
    assert client.get_list("shared").entry_count == 3

    near = client.check_hashes(["shared"], pdq=with_flipped_bits(pdq, 20))
    (match,) = near.matches
    assert (match.id, match.meta, match.evidence.pdq_distance) == (by_pdq.id, {"case": "7"}, 20)
    assert match.evidence.signals == ("pdq",) and match.evidence.embedding_similarity is None
    assert near.decision == "reject" and match.score == pytest.approx(score(Evidence(pdq_distance=20, pdq_quality=90)))
    assert client.check_hashes(["shared"], pdq=with_flipped_bits(pdq, 45)).decision == "review"
    far = client.check_hashes(["shared"], pdq=with_flipped_bits(pdq, 90), top_k=5)
    assert far.decision == "accept" and far.matches == []  # beyond the search radius: not even a candidate

    (exact_md5,) = client.check_hashes(["shared"], md5=md5.upper()).matches
    assert (exact_md5.id, exact_md5.score, exact_md5.evidence.signals) == ("md5-entry", 1.0, ("md5",))
    assert exact_md5.evidence.exact_md5 and not exact_md5.evidence.exact_sha256
    (exact_sha,) = client.check_hashes([], sha256=sha256).matches
    assert (exact_sha.id, exact_sha.score, exact_sha.evidence.signals) == (by_sha.id, 1.0, ("sha256",))
    assert client.check_hashes(["shared"], md5=rng.randbytes(16).hex()).decision == "accept"

    again = client.add_hash("shared", client.hash_entry(pdq=pdq, pdq_quality=50))
    assert again.duplicate and again.id == by_pdq.id
    assert client.add_hash("shared", client.hash_entry(md5=md5, sha256=rng.randbytes(32).hex())).id == "md5-entry"
    client.remove("shared", "md5-entry")
    assert client.check_hashes(["shared"], md5=md5).decision == "accept"
    assert not client.add_hash("shared", client.hash_entry(md5=md5, id="md5-entry")).duplicate


def test_a_pictures_digests_find_hash_entries_and_weak_hashes_decide_nothing(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("shared")
    first, second, third = distinct_photos(3, seed=31)
    data = first.read_bytes()
    client.add_hash("shared", client.hash_entry(md5=hashlib.md5(data).hexdigest(), id="by-md5"))
    client.add_hash("shared", client.hash_entry(sha256=hashlib.sha256(second.read_bytes()).hexdigest(), id="by-sha"))
    weak_pdq, _ = pdq_of(photo_rgb(third))
    client.add_hash("shared", client.hash_entry(pdq=weak_pdq, pdq_quality=20, id="weak"))

    checked = client.check(data, ["shared"])
    assert checked.decision == "reject" and [(m.id, m.evidence.signals) for m in checked.matches] == [
        ("by-md5", ("md5",))
    ]
    assert checked.hashes.md5 == hashlib.md5(data).hexdigest()
    (by_sha,) = client.check(second.read_bytes(), ["shared"]).matches
    assert by_sha.id == "by-sha" and by_sha.evidence.exact_sha256 and by_sha.score == 1.0
    weak = client.check(third.read_bytes(), ["shared"], top_k=3)
    assert weak.decision == "accept" and weak.matches[0].evidence.pdq_distance == 0 and weak.matches[0].score == 0.0


def test_a_hash_entry_scores_like_the_picture_entry_would_on_pdq_alone(lookalike: ServerHandle) -> None:
    """The same photo listed by picture and by its PDQ: edits get the same PDQ distance on both, and
    the hash entry's score and decision are what PDQ alone gives the picture entry."""
    client = lookalike.client
    client.create_list("pictures")
    client.create_list("hashes")
    decisions = set()
    for path in distinct_photos(3, seed=41):
        listed = client.add("pictures", path.read_bytes())
        client.add_hash(
            "hashes", client.hash_entry(pdq=listed.hashes.pdq, pdq_quality=listed.hashes.pdq_quality, id=listed.id)
        )
        for seed, family in enumerate(("resize_jpeg", "crop_10", "colour_jitter", "flip_h", "crop_30")):
            query = encode_edited(EDIT_FAMILIES[family](photo_rgb(path), random.Random(seed)))
            hash_check = client.check(query, ["hashes"], top_k=5)
            by_hash = {m.id: m for m in hash_check.matches}
            by_picture = {m.id: m for m in client.check(query, ["pictures"], top_k=5).matches}
            if listed.id not in by_hash:
                assert by_picture[listed.id].evidence.pdq_distance is None or (
                    by_picture[listed.id].evidence.pdq_distance > 63
                )
                continue
            hash_match, picture_match = by_hash[listed.id], by_picture[listed.id]
            distance = hash_match.evidence.pdq_distance
            assert distance == picture_match.evidence.pdq_distance
            quality = min(listed.hashes.pdq_quality, hash_check.hashes.pdq_quality)
            pdq_alone = Evidence(pdq_distance=distance, pdq_quality=quality)
            assert hash_match.score == pytest.approx(score(pdq_alone))
            assert hash_match.score == pytest.approx(
                Evidence(
                    pdq_distance=distance,
                    pdq_quality=quality,
                    embedding_similarity=picture_match.evidence.embedding_similarity,
                    model=picture_match.evidence.model,
                )
                .signal_scores()
                .get("pdq", 0.0)
            )
            expected = (
                "reject"
                if hash_match.score >= DEFAULT_REJECT_THRESHOLD
                else "review"
                if hash_match.score >= DEFAULT_REVIEW_THRESHOLD
                else "accept"
            )
            assert hash_match.decision == expected and picture_match.score >= hash_match.score
            decisions.add(expected)
    assert "reject" in decisions  # the comparison covered real catches, not only misses


def test_dihedral_lists_find_turned_copies_of_hash_entries_and_others_do_not(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("turned")
    straight = client.create_list("straight", dihedral=False)
    assert client.get_list("turned").dihedral and not straight.dihedral
    for path in distinct_photos(3, seed=51):
        picture = photo_rgb(path)
        pdq, quality = pdq_of(picture)
        for name in ("turned", "straight"):
            client.add_hash(name, client.hash_entry(pdq=pdq, pdq_quality=quality, id=path.stem))
        mirrored = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mirrored_pdq, mirrored_quality = pdq_of(mirrored)
        assert nearest_bits([bytes.fromhex(pdq)], bytes.fromhex(mirrored_pdq)) > 63
        for result in (
            client.check_hashes(["turned", "straight"], pdq=mirrored_pdq, pdq_quality=mirrored_quality, top_k=5),
            client.check(encode_edited(mirrored), ["turned", "straight"], top_k=5),
        ):
            found = {(m.list, m.id): m for m in result.matches}
            assert found[("turned", path.stem)].decision in ("reject", "review")
            straight_match = found.get(("straight", path.stem))
            assert straight_match is None or "pdq" not in straight_match.evidence.signals
        rotated_pdq, _ = pdq_of(picture.transpose(Image.Transpose.ROTATE_90))
        assert client.check_hashes(["turned"], pdq=rotated_pdq).decision in ("reject", "review")
        assert client.check_hashes(["straight"], pdq=rotated_pdq).decision == "accept"
    assert client.update_list("straight", dihedral=True).dihedral
    assert client.check_hashes(["straight"], pdq=rotated_pdq).decision in ("reject", "review")


def test_on_lists_of_pictures_only_the_embedding_finds_turned_copies_and_pdq_still_measures_every_turn(
    lookalike: ServerHandle,
) -> None:
    """A picture check scans a list's PDQ codes once (the picture as it is), not once per rotation and mirror,
    where every hashed entry also has an embedding: SSCD finds turned copies itself. A hash-only entry brings
    back all eight scans, and leaving takes them away again."""
    client = lookalike.client
    client.create_list("turned")
    path = distinct_photos(1, seed=52)[0]
    picture = photo_rgb(path)
    client.add("turned", path, id="picture")
    record, index = lookalike.running.service._list_and_index("turned")
    assert record.pdq_only_count == 0
    searched: list[int] = []
    search_pdq = index.search_pdq

    def recorded(codes: Any, max_distance: int) -> Any:
        searched.append(len(codes))
        return search_pdq(codes, max_distance)

    index.search_pdq = recorded  # type: ignore[method-assign]  # observes, then calls the real search
    mirrored = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mirrored_pdq = bytes.fromhex(pdq_of(mirrored)[0])
    listed_pdq = bytes.fromhex(client.get_entry("turned", "picture").hashes.pdq)
    assert nearest_bits([mirrored_pdq], listed_pdq) > 63  # the mirror's own hash is far: only a turn finds it

    match = client.check(encode_edited(mirrored), ["turned"]).matches[0]
    (scanned,) = searched  # the picture as it is, and each picture found inside it (as it is too)
    assert scanned < 8
    assert match.id == "picture" and match.evidence.pdq_distance == nearest_bits(pdq_dihedral(mirrored_pdq), listed_pdq)
    assert match.evidence.pdq_distance is not None and match.evidence.pdq_distance <= 31

    pdq, quality = pdq_of(photo_rgb(distinct_photos(2, seed=52)[1]))
    client.add_hash("turned", client.hash_entry(pdq=pdq, pdq_quality=quality, id="hash-only"))
    assert client.check(encode_edited(mirrored), ["turned"]).matches[0].id == "picture"
    assert client.check_hashes(["turned"], pdq=mirrored_pdq.hex()).matches[0].id == "picture"
    client.remove("turned", "hash-only")
    client.check(encode_edited(mirrored), ["turned"])
    assert searched == [scanned, scanned + 7, 8, scanned]  # the picture's own eight turns, then one again
    assert lookalike.running.service._list_and_index("turned")[0].pdq_only_count == 0


def test_bad_hashes_get_clear_invalid_argument_errors(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("shared")
    cases = {
        "PDQ_INVALID": client.hash_entry(pdq="zz" * 32),
        "PDQ_QUALITY_INVALID": client.hash_entry(pdq="ab" * 32, pdq_quality=101),
        "MD5_INVALID": client.hash_entry(md5="abc"),
        "SHA256_INVALID": client.hash_entry(sha256="ab" * 31),
        "HASH_MISSING": client.hash_entry(meta={"only": "meta"}),
        "ENTRY_ID_INVALID": client.hash_entry(pdq="ab" * 32, id=" padded "),
    }
    for reason, entry in cases.items():
        with pytest.raises(InvalidArgument) as error:
            client.add_hash("shared", entry)
        assert error.value.reason == reason, error.value
    with pytest.raises(InvalidArgument) as error:
        client.add_hash("shared", client.hash_entry(pdq="ab" * 31))
    assert "64 hex characters" in error.value.message and "62 characters" in error.value.message
    with pytest.raises(InvalidArgument) as error:
        client.check_hashes(["shared"], pdq="x")
    assert error.value.reason == "PDQ_INVALID"
    with pytest.raises(InvalidArgument) as error:
        client.check_hashes(["shared"])
    assert error.value.reason == "HASH_MISSING"
    assert client.get_list("shared").entry_count == 0


def test_request_bytes_that_are_no_message_get_invalid_argument(lookalike: ServerHandle) -> None:
    """Each new method's request (string field 1 holding bytes that are not UTF-8) is refused cleanly."""
    lookalike.client.create_list("shared")
    raw = b"\x0a\x02\xff\xfe"
    with grpc.insecure_channel(lookalike.address) as channel:
        calls = {
            "AddHash": channel.unary_unary,
            "CheckHashes": channel.unary_unary,
            "ExportEntries": channel.unary_stream,
            "ImportEntries": channel.stream_stream,
        }
        for method, kind in calls.items():
            call = kind(f"/lookalike.v1.Lookalike/{method}", request_serializer=bytes, response_deserializer=bytes)
            with pytest.raises(grpc.RpcError) as failure:
                reply = call(iter([raw]) if method == "ImportEntries" else raw, timeout=30)
                if method in ("ExportEntries", "ImportEntries"):
                    list(reply)  # a stream fails when read
            error = translate(failure.value)
            assert (error.code, error.reason) == ("INVALID_ARGUMENT", "REQUEST_MALFORMED"), (method, error)
    assert lookalike.client.get_list("shared").entry_count == 0


def test_hash_entries_and_list_settings_survive_a_restart_and_older_records(tmp_path: Path) -> None:
    """Lists and entries written before these fields existed read as dihedral, without MD5."""
    server = start_server(tmp_path / "data")
    client = server.client
    client.create_list("old")
    client.create_list("straight", dihedral=False)
    pdq = random_pdq(random.Random(5))
    client.add_hash("old", client.hash_entry(pdq=pdq, md5="11" * 16, id="e1"))
    client.add("old", distinct_photos(1, seed=53)[0], id="picture")
    server.stop()
    env = lmdb.open(str(tmp_path / "data"), map_size=server.config.map_size, max_dbs=16, subdir=True)
    with env.begin(write=True) as txn:
        lists, entries = env.open_db(DB_LISTS, txn=txn), env.open_db(DB_ENTRIES, txn=txn)
        record = json.loads(txn.get(b"old", db=lists))
        del record["dihedral"], record["pdq_only_count"]
        txn.put(b"old", json.dumps(record).encode(), db=lists)
        for key, raw in list(txn.cursor(db=entries)):
            entry = json.loads(raw)
            del entry["md5"]
            txn.put(key, json.dumps(entry).encode(), db=entries)
    env.close()
    server = start_server(tmp_path / "data")
    try:
        client = server.client
        assert client.get_list("old").dihedral and not client.get_list("straight").dihedral
        assert client.get_entry("old", "e1").hashes.md5 == ""
        assert client.check_hashes(["old"], pdq=pdq).matches[0].id == "e1"
        assert client.check_hashes(["old"], md5="11" * 16).matches[0].id == "e1"  # the md5 lookup is kept
        # Its hash-only entries were never counted: a thread counts them after start-up.
        deadline = time.monotonic() + 30
        while (counted := server.running.service._list_and_index("old")[0].pdq_only_count) is None:
            assert time.monotonic() < deadline, "the old list's hash-only entries were never counted"
            time.sleep(0.05)
        assert counted == 1
    finally:
        server.stop()


# Moving lists between servers ------------------------------------------------------------


def test_imports_and_exports_are_logged_and_refused_on_unknown_lists(
    lookalike: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lookalike.requests")
    client = lookalike.client
    client.create_list("shared")
    rng = random.Random(19)
    entries = [client.hash_entry(pdq=random_pdq(rng)) for _ in range(5)]
    assert [i for i, _ in client.import_stream("shared", entries, batch=2)] == [0, 1, 2, 3, 4]
    assert len(list(client.export_entries("shared"))) == 5
    with pytest.raises(NotFound):
        client.import_entries("missing", entries)
    with pytest.raises(NotFound):
        list(client.export_entries("missing"))
    lines = [r.getMessage() for r in caplog.records if r.name == "lookalike.requests"]
    assert any("method=ImportEntries lists=shared items=5 " in line and "code=OK" in line for line in lines)
    assert any("method=ExportEntries lists=shared items=1 " in line and "code=OK" in line for line in lines)
    assert any("method=ExportEntries lists=missing" in line and "code=NOT_FOUND" in line for line in lines)


def _queries(photos: list[Path]) -> list[bytes]:
    """The photos, edits of them (mirrors, crops, recompression) and an unrelated photo."""
    queries = [photos[0].read_bytes(), photos[-1].read_bytes()]
    for seed, family in enumerate(("resize_jpeg", "flip_h", "crop_30", "rotate_90", "colour_jitter")):
        queries.append(encode_edited(EDIT_FAMILIES[family](photo_rgb(photos[seed % 3]), random.Random(seed))))
    return queries


def test_export_then_import_into_another_server_gives_identical_checks(lookalike: ServerHandle, tmp_path: Path) -> None:
    source = lookalike.client
    photos = distinct_photos(4, seed=61)
    source.create_list("banned", review_threshold=0.4)
    for number, path in enumerate(photos[:3]):
        source.add("banned", path.read_bytes(), meta={"case": str(number)})
    rng = random.Random(7)
    source.add_hash("banned", source.hash_entry(pdq=random_pdq(rng), pdq_quality=70, meta={"from": "te"}))
    source.add_hash("banned", source.hash_entry(md5=hashlib.md5(photos[3].read_bytes()).hexdigest(), id="m"))
    exported = tmp_path / "banned.jsonl"
    code, _, stderr = run(lookalike, "export", "banned", "--with-embeddings", "--output", str(exported))
    assert code == 0 and "exported 5 entries" in stderr
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(lines) == 5 and all(len(base64.b64decode(x["embedding"])) == 2048 for x in lines[:3])

    target = start_server(tmp_path / "second")
    try:
        target.client.create_list("banned", review_threshold=0.4)
        code, printed, _ = run(target, "import", "banned", str(exported), "--json")
        assert code == 0 and printed == [{"list": "banned", "added": 5, "duplicates": 0, "failed": 0}]
        for query in _queries(photos):
            assert summary(target.client.check(query, ["banned"], top_k=10)) == summary(
                source.check(query, ["banned"], top_k=10)
            )
        assert [e.id for e in target.client.export_entries("banned")] == [e.id for e in source.export_entries("banned")]
        code, printed, _ = run(target, "import", "banned", str(exported), "--json")  # again: nothing new
        assert printed == [{"list": "banned", "added": 0, "duplicates": 5, "failed": 0}]
    finally:
        target.stop()


def test_pdq_csv_round_trip_and_threatexchange_hasher_output(lookalike: ServerHandle, tmp_path: Path) -> None:
    client = lookalike.client
    client.create_list("te")
    rng = random.Random(9)
    hashes = [random_pdq(rng) for _ in range(4)]
    hasher_output = tmp_path / "hashes.csv"  # what ThreatExchange's pdq-photo-hasher prints: hash,quality,filename
    hasher_output.write_text("".join(f"{h},{60 + i},photos/{i}.jpg\n" for i, h in enumerate(hashes[:3])))
    code, printed, _ = run(lookalike, "import", "te", str(hasher_output), "--json", "--quiet")
    assert code == 0 and printed[-1]["added"] == 3
    client.add_hash("te", client.hash_entry(pdq=hashes[3], meta={"id": "clash", "note": "a, b"}, id="x"))
    client.add_hash("te", client.hash_entry(md5="22" * 16))  # no PDQ: left out of a PDQ CSV
    entry = next(e for e in client.export_entries("te") if e.hashes.pdq == hashes[0])
    assert (entry.hashes.pdq_quality, entry.meta) == (60, {"filename": "photos/0.jpg"})

    exported = tmp_path / "te.csv"
    code, _, stderr = run(lookalike, "export", "te", "--output", str(exported))
    assert code == 0 and "exported 4 entries" in stderr and "1 without a PDQ hash" in stderr
    header = exported.read_text().splitlines()[0]
    assert header == "hash,quality,id,filename,meta.id,note"

    copy = start_server(tmp_path / "second")
    try:
        copy.client.create_list("te")
        code, printed, _ = run(copy, "import", "te", str(exported), "--json")
        assert code == 0 and printed[-1]["added"] == 4

        def rows(target: LookalikeClient) -> list[tuple[Any, ...]]:
            return sorted((e.id, e.hashes.pdq, e.hashes.pdq_quality, e.meta) for e in target.export_entries("te"))

        assert rows(copy.client) == [row for row in rows(client) if row[1]]
        query = with_flipped_bits(hashes[1], 25)
        assert summary(copy.client.check_hashes(["te"], pdq=query)) == summary(client.check_hashes(["te"], pdq=query))
    finally:
        copy.stop()


def test_a_file_with_bad_lines_imports_the_good_ones_and_names_each_bad_one(
    lookalike: ServerHandle, tmp_path: Path
) -> None:
    client = lookalike.client
    client.create_list("shared")  # sscd-distilled
    rng = random.Random(11)
    good = [random_pdq(rng) for _ in range(4)]
    unit = np.zeros(512, dtype="<f4")
    unit[0] = 1.0
    vector = base64.b64encode(unit.tobytes()).decode()
    lines = [
        json.dumps({"pdq": good[0], "pdq_quality": 80, "meta": {"n": "1"}}),
        json.dumps({"md5": rng.randbytes(16).hex()}),
        json.dumps({"pdq": "g" * 64}),  # 3: not hex
        "",
        json.dumps({"pdq": good[1][:60]}),  # 5: wrong length
        json.dumps({"pdq": good[2], "pdq_quality": 150}),  # 6: quality out of range
        json.dumps({"pdq": good[3]}),
        '{"pdq": "' + good[3][:10],  # 8: broken JSON
        json.dumps({"pdq": random_pdq(rng), "model": "sscd", "embedding": vector}),  # 9: another model's
        json.dumps({"sha256": rng.randbytes(32).hex(), "model": "sscd-distilled", "embedding": vector}),  # 10: kept
        json.dumps({"pdq": random_pdq(rng), "pdq_quality": "high"}),  # 11: quality not a number
        json.dumps(["not", "an", "object"]),  # 12
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, printed, _ = run(lookalike, "import", "shared", str(path), "--json", "--batch", "3")
    assert code == 1
    *errors, final = printed
    assert final == {"list": "shared", "added": 4, "duplicates": 0, "failed": 7}
    assert [e["line"] for e in errors] == [3, 5, 6, 8, 9, 11, 12]
    reasons = {e["line"]: e.get("reason", "") for e in errors}
    assert reasons[3] == reasons[5] == "PDQ_INVALID" and reasons[6] == "PDQ_QUALITY_INVALID"
    assert reasons[9] == "EMBEDDING_MODEL_MISMATCH"
    messages = {e["line"]: e["error"] for e in errors}
    assert "broken JSON" in messages[8] and "pdq_quality" in messages[11] and "JSON object" in messages[12]
    assert client.get_list("shared").entry_count == 4
    assert client.check_hashes(["shared"], pdq=good[3]).decision == "reject"
    with_vector = [e for e in client.export_entries("shared", with_embeddings=True) if e.embedding]
    assert len(with_vector) == 1 and with_vector[0].model == "sscd-distilled"

    csv_file = tmp_path / "mixed.csv"
    rows = f"hash,quality,source\n{good[0]},90,a\nnothex,50,b\n{good[1]},bad,c\n{random_pdq(rng)},,d\n"
    csv_file.write_bytes(rows.encode() + f"{random_pdq(rng)},60,caf".encode() + b"\xe9\n")  # 6: Latin-1
    code, printed, _ = run(lookalike, "import", "shared", str(csv_file), "--json")
    assert code == 1 and [e.get("line") for e in printed[:-1]] == [3, 4, 6]
    assert "UTF-8" in printed[2]["error"]
    assert printed[-1] == {"list": "shared", "added": 1, "duplicates": 1, "failed": 3}


def test_cli_add_hash_and_check_hash(lookalike: ServerHandle) -> None:
    run(lookalike, "lists", "create", "shared", "--no-dihedral")
    code, (shown,), _ = run(lookalike, "lists", "show", "shared", "--json")
    assert shown["dihedral"] is False
    pdq = random_pdq(random.Random(13))
    code, (added,), _ = run(
        lookalike, "add-hash", "shared", "--pdq", pdq, "--quality", "75", "--meta", "case=9", "--id", "c9", "--json"
    )
    assert code == 0 and added == {
        "id": "c9",
        "pdq": pdq,
        "pdq_quality": 75,
        "md5": "",
        "sha256": "",
        "duplicate": False,
        "consistency_token": added["consistency_token"],
    }
    after = ("--after", added["consistency_token"])
    code, (checked,), _ = run(lookalike, "check-hash", "shared", "--pdq", with_flipped_bits(pdq, 10), *after, "--json")
    assert code == 0 and checked["decision"] == "reject"
    (match,) = checked["matches"]
    assert (match["id"], match["meta"], match["evidence"]["signals"]) == ("c9", {"case": "9"}, ["pdq"])
    assert match["evidence"]["pdq_distance"] == 10
    code, printed, stderr = run(lookalike, "check-hash", "shared", "--pdq", "abc", "--json")
    assert code == 1 and printed[0]["reason"] == "PDQ_INVALID" and "64 hex characters" in stderr


@pytest.mark.slow
def test_importing_100_000_pdq_hashes_shows_progress_and_they_match_at_once(
    lookalike: ServerHandle, tmp_path: Path
) -> None:
    lookalike.client.create_list("big")
    rng = random.Random(17)
    hashes = [random_pdq(rng) for _ in range(100_000)]
    path = tmp_path / "big.csv"
    path.write_text("".join(f"{h},{50 + i % 51},img{i}.jpg\n" for i, h in enumerate(hashes)))
    code, printed, stderr = run(lookalike, "import", "big", str(path), "--json")
    assert code == 0 and printed == [{"list": "big", "added": 100_000, "duplicates": 0, "failed": 0}]
    assert "importing into big" in stderr and "/100000 [" in stderr  # the progress bar, on stderr
    assert lookalike.client.get_list("big").entry_count == 100_000
    for position in (0, 4_242, 99_999):
        result = lookalike.client.check_hashes(["big"], pdq=with_flipped_bits(hashes[position], 12, seed=position))
        assert result.decision == "reject"
        assert result.matches[0].meta == {"filename": f"img{position}.jpg"}
