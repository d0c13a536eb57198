"""The dashboard in a real headless Chromium (Debian's `chromium`, which scripts/test installs; driven by
Playwright's Python package, never `playwright install`): log in, create a list, upload three pictures, check an
edited copy and see the right entry flagged, mark it a false positive on the review page and see the calibration
change and apply it, remove an entry; then a checker key, which is shown no admin page and refused one; and a
picture pasted on a photo, checked, drawn with the box where its match was found. A real server, real photos, the
real model. Each page's screenshot is saved under tests/screenshots/."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from playwright.sync_api import Page, expect, sync_playwright

from benchmarks.edits import EDIT_FAMILIES, encode_edited
from lookalike.client import LookalikeClient
from tests.conftest import (
    SCREENSHOTS,
    ServerHandle,
    distinct_photos,
    pasted_on_a_photo,
    screenshots_taken,
    start_server,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 60_000


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A fresh headless Chromium (its own profile folder) and a page in it."""
    if not CHROMIUM.exists():
        why = f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package (apt-get install chromium)"
        if os.environ.get("LOOKALIKE_BROWSER_REQUIRED"):
            pytest.fail(why)
        pytest.skip(why)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path / "data", http_listen="127.0.0.1:0")
    yield handle
    handle.stop()


def test_a_reviewer_lists_checks_judges_and_calibrates_in_a_real_browser(
    page: Page, server: ServerHandle, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    base = f"http://127.0.0.1:{server.running.http_port}"
    SCREENSHOTS.mkdir(exist_ok=True)
    taken = request.config.stash.setdefault(screenshots_taken, [])

    def shot(name: str) -> None:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        taken.append(path)

    photos = distinct_photos(3, seed=21)
    with Image.open(photos[0]) as original:
        cropped = encode_edited(EDIT_FAMILIES["crop_30"](original.convert("RGB"), random.Random(0)))
    copy = tmp_path / "cropped-copy.jpg"
    copy.write_bytes(cropped)
    admin_secret = server.client.create_key("admin", name="ops").secret
    admin = LookalikeClient(server.address, api_key=admin_secret)
    checker_secret = admin.create_key("checker", name="uploads").secret

    # Log in.
    page.goto(base + "/")
    expect(page).to_have_url(re.compile(r"/login"))
    shot("01-login")
    page.get_by_label("API key").fill(admin_secret)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Lists", exact=True)).to_be_visible()

    # Create a list that keeps thumbnails.
    page.get_by_label("Name").fill("banned")
    page.get_by_label("Description").fill("pictures taken down")
    page.get_by_label("Keep thumbnails").check()
    page.get_by_role("button", name="Create list").click()
    expect(page).to_have_url(base + "/lists/banned")

    # Upload three pictures at once, each with its progress bar.
    page.get_by_label("Pictures (several at once)").set_input_files([str(photo) for photo in photos])
    page.locator("#upload-meta").fill("source=takedowns")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-progress li[data-done=true]")).to_have_count(3, timeout=WAIT_MS)
    expect(page.locator("#upload-progress")).not_to_contain_text("failed")
    assert page.locator("#upload-progress progress").evaluate_all("bars => bars.map(bar => bar.value)") == [1, 1, 1]
    shot("02-upload")
    page.get_by_role("link", name="Show the new entries").click()
    ids = {entry.hashes.sha256: entry.id for entry in admin.entries("banned")}
    by_photo = [ids[hashlib.sha256(photo.read_bytes()).hexdigest()] for photo in photos]
    rows = page.locator("table.entries tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("table.entries")).to_contain_text("takedowns")
    loaded = page.locator("img.thumb").evaluate_all("images => images.map(image => image.naturalWidth)")
    assert len(loaded) == 3 and all(0 < width <= 160 for width in loaded)
    shot("03-list")

    # Check an edited copy of the first picture: its entry is flagged, with the evidence in words.
    page.get_by_role("link", name="Check").click()
    page.get_by_label("Picture", exact=True).set_input_files(str(copy))
    page.get_by_role("button", name="Check", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile(r"^Decision: review"))).to_be_visible()
    best = page.locator("ol.matches > li").first
    expect(best).to_contain_text(by_photo[0])
    expect(best).to_contain_text("PDQ perceptual hash")
    expect(best).to_contain_text("Copy-detection model")
    shot("04-check")

    # Review: the check is waiting with its entry; it is a false positive; the calibration moves.
    page.get_by_role("link", name="Review").click()
    card = page.locator("li.check-card").first
    expect(card).to_contain_text(by_photo[0])
    page.get_by_label("List", exact=True).select_option("banned")
    page.get_by_role("button", name="Show calibration").click()
    calibration = page.locator("table.calibration")
    expect(calibration.locator("td.changed")).to_have_count(0)
    expect(page.get_by_text("no feedback on this list yet")).to_be_visible()
    card.get_by_role("button", name=re.compile(r"^False positive")).click()
    expect(page.get_by_role("status")).to_contain_text("marked false positive")
    expect(page.locator("li.check-card").first).to_contain_text("Judged: false positive")
    expect(calibration.locator("td.changed")).to_have_count(1)
    expect(page.locator("figure.chart svg rect.bar.false-positive")).to_have_count(1)
    recommended = float(calibration.locator("td.changed").inner_text())
    assert recommended > admin.get_list("banned").review_threshold
    shot("05-review")
    page.get_by_role("button", name=re.compile(r"^Apply")).click()
    expect(page.get_by_role("status")).to_contain_text(f"set to review {recommended:g}")
    assert admin.get_list("banned").review_threshold == pytest.approx(recommended)

    # Remove an entry (the page asks first).
    page.goto(base + "/lists/banned")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Remove entry {by_photo[2]}").click()
    expect(page.get_by_role("status")).to_contain_text(f"Entry {by_photo[2]} removed")
    expect(page.locator("table.entries tbody tr")).to_have_count(2)
    assert sorted(entry.id for entry in admin.entries("banned")) == sorted(by_photo[:2])

    page.get_by_role("link", name="Lists", exact=True).click()
    expect(page.locator("tbody tr").first).to_contain_text("1 review")
    shot("06-lists")
    page.get_by_role("link", name="Activity").click()
    expect(page.locator("figure.chart svg rect.bar.review")).to_have_count(1)
    expect(page.locator("table").first).to_contain_text("entry.remove")
    shot("07-activity")

    # A checker key sees no admin page, and is refused one asked for by its address.
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(base + "/login")
    page.get_by_label("API key").fill(checker_secret)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(base + "/check")
    navigation = page.get_by_role("navigation", name="Pages")
    expect(navigation.get_by_role("link")).to_have_text(["Check", "Review"])
    page.goto(base + "/activity")
    expect(page.get_by_role("alert")).to_contain_text("may not read the audit log")
    expect(page.get_by_role("heading")).to_contain_text("403")
    shot("08-checker-refused")
    admin.close()


def test_a_checked_picture_is_shown_with_the_box_where_its_match_was_found_in_a_real_browser(
    page: Page, server: ServerHandle, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The check page draws the upload (a `data:` image, which the page's policy must let Chromium show) with a
    numbered box where the listed picture was found inside it."""
    base = f"http://127.0.0.1:{server.running.http_port}"
    photo, background = distinct_photos(12, seed=11)[:2]
    canvas, _ = pasted_on_a_photo(photo, background)
    composite = tmp_path / "pasted.jpg"
    composite.write_bytes(encode_edited(canvas))
    admin_secret = server.client.create_key("admin", name="ops").secret
    admin = LookalikeClient(server.address, api_key=admin_secret)
    admin.create_list("banned", thumbnails=True)  # its pictures are shown: so is the upload, unfolded
    admin.add("banned", photo)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    page.goto(base + "/login")
    page.get_by_label("API key").fill(admin_secret)
    page.get_by_role("button", name="Log in").click()
    page.goto(base + "/check")
    page.get_by_label("Picture", exact=True).set_input_files(str(composite))
    page.get_by_role("button", name="Check", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile(r"^Decision: (review|reject)"))).to_be_visible()
    expect(page.locator("details.upload")).to_have_attribute("open", "")
    box = page.locator("details.upload svg rect.found[data-match='1']").first
    expect(box).to_be_visible()
    drawn = box.bounding_box()
    shown = page.locator("details.upload svg").bounding_box()
    assert drawn is not None and shown is not None
    scale = shown["width"] / 1200  # the box in the upload's pixels, drawn at the figure's scale
    assert abs(drawn["x"] - shown["x"] - 300 * scale) < 8 and abs(drawn["y"] - shown["y"] - 160 * scale) < 8
    with Image.open(io.BytesIO(page.locator("details.upload svg").screenshot())) as rendered:
        corner = rendered.convert("L").crop((0, 0, rendered.width // 5, rendered.height // 6))  # no box there
        assert ImageStat.Stat(corner).stddev[0] > 12  # the upload is drawn there (22 today), not an empty figure (5)
    assert not [text for text in console if "Content Security Policy" in text], console
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / "09-check-found-inside.png"
    page.screenshot(path=str(path), full_page=True)
    request.config.stash.setdefault(screenshots_taken, []).append(path)
    admin.close()
