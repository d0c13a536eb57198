"""Where in a checked picture a match was found: each view's place, in the upload's pixels as shown, and
stored checks that keep it (the end-to-end checks are in test_composites, test_animations, test_http and
test_cli)."""

from __future__ import annotations

import io

from PIL import Image

from lookalike.server.checks import result_from_json, result_to_json
from lookalike.server.embedder import EmbedderPool
from lookalike.server.fingerprint import PART, WHOLE, Fingerprinter, Hashes, Place
from lookalike.server.records import EntryRecord
from lookalike.server.regions import turned_box
from lookalike.server.scoring import Evidence
from lookalike.server.service import CheckResult, Match
from tests.test_imaging import jpeg_with_exif


def test_the_whole_pictures_place_is_the_upload_as_shown_its_exif_turn_applied() -> None:
    """A phone's portrait photo stored landscape with EXIF orientation 6: boxes are in the pixels a viewer
    sees, 600 wide and 900 tall, whatever the draft the check decoded."""
    stored = Image.new("RGB", (900, 600), (120, 160, 200))
    fingerprint = Fingerprinter(64_000_000, EmbedderPool()).fingerprint(jpeg_with_exif(stored, 6))
    assert fingerprint.places[0] == Place(WHOLE, (0, 0, 600, 900))


def test_a_picture_with_nothing_inside_it_has_only_the_whole_as_a_view() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 90, 90)).save(buffer, "PNG")
    assert Fingerprinter(64_000_000, EmbedderPool()).fingerprint(buffer.getvalue()).places == (
        Place(WHOLE, (0, 0, 640, 480)),
    )


def stored_result(evidence: Evidence) -> CheckResult:
    entry = EntryRecord("e1", 1, bytes(32), bytes(32), 100, bytes(8), "sscd-distilled")
    return CheckResult(
        "r1",
        0.0,
        Hashes(bytes(32), bytes(32), 100, bytes(8), bytes(16)),
        "review",
        [Match("banned", entry, 0.7, evidence, "review")],
    )


def test_a_stored_check_keeps_where_each_signal_found_its_entry() -> None:
    evidence = Evidence(
        pdq_distance=20,
        pdq_quality=100,
        embedding_similarity=0.8,
        model="sscd-distilled",
        pdq_place=Place(PART, (304, 162, 938, 682)),
        embedding_place=Place(WHOLE, (0, 0, 1200, 800)),
    )
    assert result_from_json(result_to_json(stored_result(evidence))).matches[0].evidence == evidence


def test_a_check_stored_before_places_were_kept_still_reads_its_places_unknown() -> None:
    evidence = Evidence(pdq_distance=20, pdq_quality=100, embedding_similarity=0.8, model="sscd-distilled")
    stored = result_to_json(stored_result(evidence))
    fields = stored["matches"][0]["evidence"]
    del fields["pdq_place"], fields["embedding_place"]
    fields["pdq_in_view"] = True
    assert result_from_json(stored).matches[0].evidence == evidence


def test_a_picture_turned_on_a_fill_is_placed_in_the_upright_box_around_it() -> None:
    photo = Image.new("RGB", (600, 400), (200, 120, 40))
    turned = photo.rotate(15, Image.Resampling.BICUBIC, expand=True, fillcolor=(40, 160, 90))
    upload = Image.new("RGB", (turned.width + 200, turned.height + 160), (40, 160, 90))
    upload.paste(turned, (100, 80))
    buffer = io.BytesIO()
    upload.save(buffer, "JPEG", quality=90)
    decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    left, top, right, bottom = turned_box(decoded)
    expected = (100, 80, 100 + turned.width, 80 + turned.height)
    assert max(abs(a - b) for a, b in zip((left, top, right, bottom), expected, strict=True)) <= 3
