"""The dashboard over real HTTP, page by page: sessions, login and logout, CSRF, what each key is shown and refused,
escaping, bad input, the request log. A real server on a loopback port, real photos; tests/test_dashboard_browser.py
drives the same pages in a real browser."""

from __future__ import annotations

import base64
import io
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from benchmarks.edits import apply_edit, encode_edited
from lookalike.client import LookalikeClient
from tests.conftest import ServerHandle, distinct_photos, pasted_on_a_photo, start_server
from tests.processes import ServerProcess
from tests.test_access import Pki, pki  # noqa: F401 - the test CA and certificates, a fixture
from tests.test_check_activity import written
from tests.test_keypoints import no_other_photos, rgb

COOKIE = "lookalike_session"


@dataclass
class Site:
    handle: ServerHandle
    base: str
    visitors: list[httpx.Client] = field(default_factory=list)

    def browser(self) -> httpx.Client:
        """A new visitor: its own cookies, redirects not followed (they are checked)."""
        visitor = httpx.Client(base_url=self.base, timeout=120)
        self.visitors.append(visitor)
        return visitor


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    handle = start_server(tmp_path / "data", http_listen="127.0.0.1:0")
    served = Site(handle, f"http://127.0.0.1:{handle.running.http_port}")
    yield served
    for visitor in served.visitors:
        visitor.close()
    handle.stop()


def csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


def log_in(site: Site, key: str) -> tuple[httpx.Client, str]:
    """A visitor logged in with `key`, and its session's CSRF token."""
    browser = site.browser()
    form = browser.get("/login")
    answer = browser.post("/login", data={"api_key": key, "csrf_token": csrf(form), "next": ""})
    assert answer.status_code == 303, answer.text
    return browser, csrf(browser.get(_first_page(browser)))


def _first_page(browser: httpx.Client) -> str:
    return str(browser.get("/").headers["location"])


def set_cookie(response: httpx.Response) -> str:
    (header,) = response.headers.get_list("set-cookie")
    return str(header)


def test_keyless_loopback_needs_no_login_and_every_form_needs_its_sessions_csrf_token(site: Site) -> None:
    browser, other = site.browser(), site.browser()
    first = browser.get("/")
    assert first.headers["location"] == "/lists"
    cookie = set_cookie(first)
    assert re.match(rf"{COOKIE}=[\w-]{{40,}}; HttpOnly; Path=/; SameSite=strict$", cookie), cookie
    page = browser.get("/lists")
    assert page.status_code == 200 and "no keys yet" in page.text and "set-cookie" not in page.headers
    for header, value in {
        "content-security-policy": "default-src 'self'",
        "x-frame-options": "DENY",
        "x-content-type-options": "nosniff",
        "cache-control": "no-store",
    }.items():
        assert page.headers[header].startswith(value)
    token = csrf(page)

    for sent in ({}, {"csrf_token": "forged"}, {"csrf_token": csrf(other.get("/lists"))}):
        refused = browser.post("/lists", data={"name": "banned", **sent})
        assert refused.status_code == 403 and "CSRF_TOKEN_INVALID" in refused.text, refused.text
    assert site.handle.client.lists() == []
    created = browser.post("/lists", data={"name": "banned", "csrf_token": token, "dihedral": "on"})
    assert (created.status_code, created.headers["location"]) == (303, "/lists/banned")
    assert [info.name for info in site.handle.client.lists()] == ["banned"]
    shown = browser.get("/lists/banned")
    assert "List banned created." in shown.text and "List banned created." not in browser.get("/lists").text
    assert browser.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")


def test_logging_in_and_out_and_a_revoked_key_ends_its_sessions(site: Site) -> None:
    boot = site.handle.client
    first = boot.create_key("admin", name="first")
    admin = LookalikeClient(site.handle.address, api_key=first.secret)
    try:
        browser = site.browser()
        away = browser.get("/lists?x=1")
        assert (away.status_code, away.headers["location"]) == (303, "/login?next=%2Flists%3Fx%3D1")
        form = browser.get("/login")
        anonymous = browser.cookies[COOKIE]
        assert 'name="api_key"' in form.text and 'type="password"' in form.text
        wrong = browser.post("/login", data={"api_key": "lk_k1_guess", "csrf_token": csrf(form)})
        assert wrong.status_code == 401 and "API key not recognised" in wrong.text
        no_token = browser.post("/login", data={"api_key": first.secret})
        assert no_token.status_code == 403
        logged_in = browser.post(
            "/login", data={"api_key": first.secret, "csrf_token": csrf(form), "next": "/lists?x=1"}
        )
        assert (logged_in.status_code, logged_in.headers["location"]) == (303, "/lists?x=1")
        cookie = set_cookie(logged_in)
        session = browser.cookies[COOKIE]
        assert session != anonymous and "HttpOnly" in cookie and "SameSite=strict" in cookie
        random_part = first.secret.split("_", 2)[2]  # lk_<id>_<secret>: the secret itself may hold "_"
        assert first.secret not in cookie and random_part not in cookie
        assert "key k1 (admin)" in browser.get("/lists").text
        stale = site.browser()
        stale.cookies.set(COOKIE, anonymous)  # the id from before the login is worth nothing after it
        assert stale.get("/lists").status_code == 303

        other, _ = log_in(site, first.secret)
        login_form = other.get("/login")
        outside = other.post(
            "/login", data={"api_key": first.secret, "csrf_token": csrf(login_form), "next": "//evil.example/"}
        )
        assert outside.headers["location"] == "/"

        replacement = admin.create_key("admin", name="second")
        admin.revoke_key(first.info.id)
        for revoked in (browser, other):
            bounced = revoked.get("/lists")
            assert (bounced.status_code, bounced.headers["location"]) == (303, "/login?next=%2Flists")
            assert "API key &#39;k1&#39; was revoked" in revoked.get("/login").text

        browser, token = log_in(site, replacement.secret)
        assert browser.post("/logout", data={}).status_code == 403  # the logout form carries its token too
        out = browser.post("/logout", data={"csrf_token": token})
        assert (out.status_code, out.headers["location"]) == (303, "/login")
        assert f'{COOKIE}=""' in set_cookie(out) and "Max-Age=0" in set_cookie(out)
        browser.cookies.set(COOKIE, session)
        assert browser.get("/lists").status_code == 303
    finally:
        admin.close()


def test_what_a_key_may_not_do_is_not_shown_and_refused_with_403(site: Site) -> None:
    boot = site.handle.client
    for name in ("a", "b"):
        boot.create_list(name)
    boot.add_hash("a", boot.hash_entry(pdq="ab" * 32))
    root = boot.create_key("admin", name="root")
    admin = LookalikeClient(site.handle.address, api_key=root.secret)
    try:
        writer_key = admin.create_key("writer", ["a"], name="uploader").secret
        checker_key = admin.create_key("checker", name="uploads").secret
    finally:
        admin.close()

    checker, token = log_in(site, checker_key)
    assert checker.get("/").headers["location"] == "/check"
    page = checker.get("/check")
    assert 'href="/check"' in page.text and 'href="/review"' in page.text
    assert 'href="/lists"' not in page.text and 'href="/activity"' not in page.text
    assert 'name="more_lists"' in page.text  # it may not read lists, so it names them
    for path in ("/lists", "/lists/a", "/activity", "/lists/a/delete"):
        refused = checker.get(path)
        assert refused.status_code == 403 and "may not" in refused.text and "ROLE_NOT_ALLOWED" in refused.text, path
    assert checker.post("/lists", data={"name": "c", "csrf_token": token}).status_code == 403
    assert checker.post("/keys", data={"role": "admin", "csrf_token": token}).status_code == 403
    assert checker.get("/review").status_code == 200
    assert [info.name for info in boot_lists(site, root.secret)] == ["a", "b"]

    writer, token = log_in(site, writer_key)
    lists = writer.get("/lists")
    assert 'href="/lists/a"' in lists.text and 'href="/lists/b"' not in lists.text
    assert "Create a list" not in lists.text and "/delete" not in lists.text and 'href="/activity"' not in lists.text
    own = writer.get("/lists/a")
    assert 'id="upload-form"' in own.text and "Remove" in own.text
    assert "Save settings" not in own.text and "Delete this list" not in own.text
    refused = writer.get("/lists/b")
    assert refused.status_code == 403 and "LIST_NOT_ALLOWED" in refused.text
    for path, data in (("/lists/a/delete", {}), ("/lists/a/settings", {"review_threshold": "0.1"})):
        assert writer.post(path, data={"csrf_token": token, **data}).status_code == 403, path
    assert [info.name for info in boot_lists(site, root.secret)] == ["a", "b"]

    admin_browser, _ = log_in(site, root.secret)
    full = admin_browser.get("/lists/a")
    assert "Save settings" in full.text and "Delete this list" in full.text
    assert 'href="/activity"' in full.text


def boot_lists(site: Site, key: str) -> list[object]:
    with LookalikeClient(site.handle.address, api_key=key) as client:
        return list(client.lists())


def test_everything_users_wrote_is_escaped(site: Site) -> None:
    boot = site.handle.client
    boot.create_list("banned", description="<script>alert(1)</script>")
    evil_id = '"><img src=x onerror=alert(2)>'
    boot.add_hash("banned", boot.hash_entry(pdq="ab" * 32, id=evil_id, meta={"<b>key</b>": "<i>value</i>"}))
    browser, _ = log_in(site, boot.create_key("admin", name="<u>ops</u>").secret)
    pages = [browser.get(path).text for path in ("/lists", "/lists/banned", "/activity")]
    joined = "\n".join(pages)
    for raw in ("<script>alert(1)</script>", evil_id, "<b>key</b>", "<i>value</i>", "<u>ops</u>"):
        assert raw not in joined, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in pages[1] and "&lt;i&gt;value&lt;/i&gt;" in pages[1]
    assert "&lt;u&gt;ops&lt;/u&gt;" in pages[2]
    search = browser.get("/lists/banned", params={"q": "<script>x</script>"})
    assert "<script>x</script>" not in search.text and "&lt;script&gt;x&lt;/script&gt;" in search.text


def test_pages_refuse_bad_input_with_the_apis_status_and_are_logged_like_api_calls(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    (photo,) = distinct_photos(1, seed=41)
    browser = site.browser()
    token = csrf(browser.get("/lists"))
    browser.post("/lists", data={"name": "banned", "csrf_token": token, "thumbnails": "on", "dihedral": "on"})
    refusals = [
        ("/lists", {"name": "Bad Name"}, 400, "LIST_NAME_INVALID"),
        ("/lists", {"name": "fine", "review_threshold": "abc"}, 400, "THRESHOLD_INVALID"),
        ("/lists", {"name": "banned"}, 409, "LIST_EXISTS"),
        ("/lists/banned/add-hash", {"pdq": "ab" * 32, "meta": "no equals sign"}, 400, "META_INVALID"),
        ("/lists/banned/add-hash", {"pdq": "zz"}, 400, "PDQ_INVALID"),
        ("/lists/missing/add-hash", {"pdq": "ab" * 32}, 404, "LIST_NOT_FOUND"),
        ("/lists/banned/remove", {"id": "nothing"}, 404, "ENTRY_NOT_FOUND"),
        ("/check", {}, 400, "IMAGE_MISSING"),
        ("/review/feedback", {"check_id": "nothing", "verdict": "confirmed"}, 404, "CHECK_NOT_FOUND"),
    ]
    for path, data, status, reason in refusals:
        refused = browser.post(path, data={"csrf_token": token, **data})
        assert (refused.status_code, reason in refused.text) == (status, True), (path, refused.text[-800:])
        assert refused.headers["content-type"].startswith("text/html") and "Traceback" not in refused.text
    assert browser.get("/activity", params={"since": "yesterday"}).status_code == 400

    with caplog.at_level(logging.INFO, logger="lookalike.requests"):
        uploaded = browser.post(
            "/lists/banned/upload",
            data={"csrf_token": token, "meta": "case=7"},
            files=[("image", (photo.name, photo.read_bytes())), ("image", ("notes.txt", b"not a picture"))],
            headers={"Accept": "application/json"},
        )
        checked = browser.post("/check", data={"csrf_token": token}, files={"image": ("c.jpg", photo.read_bytes())})
    added, refused_file = uploaded.json()["results"]
    assert added["file"] == photo.name and added["duplicate"] is False
    assert refused_file == {
        "file": "notes.txt",
        "error": "image format not recognised; send JPEG, PNG, WebP, AVIF, HEIC, GIF, BMP or TIFF bytes",
        "reason": "IMAGE_UNDECODABLE",
    }
    assert 'Decision: <span class="decision reject">reject</span>' in checked.text and added["id"] in checked.text
    assert "The very same file: its SHA-256 digest is identical." in checked.text
    lines = [record.getMessage() for record in caplog.records if record.name == "lookalike.requests"]
    assert re.fullmatch(
        r"request id=\w+ method=dashboard\.list\.upload lists=- items=1 decision=- code=OK ms=[\d.]+", lines[0]
    )
    assert re.fullmatch(
        r"request id=\w+ method=dashboard\.check lists=- items=0 decision=reject code=OK ms=[\d.]+", lines[1]
    )

    picture = browser.get("/lists/banned/thumbnail", params={"id": added["id"]})
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/webp"
    hashed = site.handle.client.add_hash("banned", site.handle.client.hash_entry(pdq="cd" * 32)).id
    assert browser.get("/lists/banned/thumbnail", params={"id": hashed}).status_code == 404
    page = browser.get("/lists/banned")
    assert f"/lists/banned/thumbnail?id={added['id']}" in page.text and "case" in page.text

    imported = browser.post(
        "/lists/banned/import",
        data={"csrf_token": token, "format": ""},
        files={"file": ("shared.txt", ("ef" * 32 + "\nzz\n").encode())},
    )
    assert imported.status_code == 303
    notices = browser.get("/lists/banned").text
    assert "Imported shared.txt as pdq-hashes: 1 added, 0 already listed, 1 lines refused." in notices
    assert "Line 2:" in notices
    gone = browser.post("/lists/banned/remove", data={"csrf_token": token, "id": hashed})
    assert gone.status_code == 303 and [e.id for e in site.handle.client.entries("banned")].count(hashed) == 0


def test_serve_prints_the_dashboards_address_and_it_answers(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--http-listen", "127.0.0.1:0", "--workers", "0")
    try:
        found = None
        for _ in range(100):
            found = re.search(r"dashboard at (http://127\.0\.0\.1:\d+/) ", server.log.read_text())
            if found:
                break
            time.sleep(0.1)
        assert found is not None, server.log.read_text()
        with httpx.Client(base_url=found.group(1), timeout=60) as browser:
            page = browser.get("/", follow_redirects=True)
        assert page.status_code == 200 and "<h1>Lists</h1>" in page.text
    finally:
        assert server.stop() == 0


def test_over_https_the_session_cookie_is_also_secure(tmp_path: Path, pki: Pki) -> None:  # noqa: F811 - the fixture
    handle = start_server(
        tmp_path / "data", http_listen="127.0.0.1:0", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)
    )
    try:
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        with httpx.Client(base_url=f"https://127.0.0.1:{handle.running.http_port}", verify=trusted) as browser:
            cookie = set_cookie(browser.get("/"))
        assert re.match(rf"{COOKIE}=[\w-]+; HttpOnly; Path=/; SameSite=strict; Secure$", cookie), cookie
    finally:
        handle.stop()


def test_the_activity_page_filters_the_audit_log_by_list_key_and_time(site: Site) -> None:
    boot = site.handle.client
    boot.create_list("a")
    secret = boot.create_key("admin", name="ops").secret
    with LookalikeClient(site.handle.address, api_key=secret) as admin:
        admin.create_list("b")
        admin.check_hashes(["a", "b"], pdq="ab" * 32)
    written(site.handle)  # counted once its result is written
    browser, _ = log_in(site, secret)

    def actions(**query: str) -> list[tuple[str, str]]:
        page = browser.get("/activity", params=query)
        assert page.status_code == 200, page.text
        rows = re.findall(r"<td>(list\.create|key\.create)</td>\s*<td>([a-z]*)</td>", page.text)
        return [(action, name) for action, name in rows]

    assert actions() == [("list.create", "a"), ("key.create", ""), ("list.create", "b")]
    assert actions(key="k1") == [("list.create", "b")]
    assert actions(list="a") == [("list.create", "a")]
    assert actions(since="2000-01-01T00:00", until="2000-01-02T00:00") == []
    chart = browser.get("/activity", params={"list": "b", "hours": "48"}).text
    assert chart.count('class="bar accept"') == 1 and "48 hours" in chart


class _Picture(BaseHTTPRequestHandler):
    """Serves one picture at any path, for adding and checking by URL."""

    picture = b""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.picture)))
        self.end_headers()
        self.wfile.write(self.picture)

    def log_message(self, *_: object) -> None:
        pass


def test_an_admin_edits_and_deletes_lists_adds_and_checks_by_url_confirms_guards_and_manages_keys(
    tmp_path: Path,
) -> None:
    (photo,) = distinct_photos(1, seed=43)
    handler = type("Served", (_Picture,), {"picture": photo.read_bytes()})
    pictures = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=pictures.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{pictures.server_address[1]}/photo.jpg"
    guard_on = {"flood_min_matches": 3, "flood_short_window": 60.0, "flood_long_window": 6000.0, "flood_factor": 5.0}
    handle = start_server(tmp_path / "data", http_listen="127.0.0.1:0", **guard_on)
    site = Site(handle, f"http://127.0.0.1:{handle.running.http_port}")
    try:
        client = handle.client
        client.create_list("banned", thumbnails=True)
        browser = site.browser()
        token = csrf(browser.get("/lists"))

        added = browser.post("/lists/banned/add-url", data={"csrf_token": token, "url": url, "id": "from-url"})
        assert added.status_code == 303
        assert f"{url}: added as entry from-url." in browser.get("/lists/banned").text
        checked = browser.post("/check", data={"csrf_token": token, "url": url, "lists": "banned"}, files={})
        assert 'class="decision reject"' in checked.text and "from-url" in checked.text
        assert 'class="upload"' not in checked.text  # the server fetched the picture: the page has none to show

        flooding = client.add_hash("banned", client.hash_entry(pdq="ab" * 32, id="stock")).id
        for _ in range(3):
            client.check_hashes(["banned"], pdq="ab" * 32)
        page = browser.get("/lists/banned").text
        assert "Entries under flood guard" in page and "under flood guard</div>" in page
        confirmed = browser.post("/lists/banned/confirm", data={"csrf_token": token, "id": flooding})
        assert confirmed.status_code == 303 and client.get_list("banned").guarded == []
        assert "its flood guard is lifted" in browser.get("/lists/banned").text

        assert client.get_list("banned").keypoints  # on by default
        assert re.findall(r"<td>(on|off)</td>", browser.get("/lists").text) == ["on", "on"]  # thumbnails, keypoints
        settings = {"description": "new", "review_threshold": "0.6", "reject_threshold": "0.9", "dihedral": "on"}
        assert browser.post("/lists/banned/settings", data={"csrf_token": token, **settings}).status_code == 303
        info = client.get_list("banned")
        assert (info.description, info.review_threshold, info.reject_threshold) == ("new", 0.6, 0.9)
        assert info.dihedral and not info.thumbnails and not info.keypoints  # boxes left unticked turn them off
        assert "keypoints off" in browser.get("/lists/banned").text
        assert re.findall(r"<td>(on|off)</td>", browser.get("/lists").text) == ["off", "off"]
        reversed_order = {**settings, "review_threshold": "0.95"}
        refused = browser.post("/lists/banned/settings", data={"csrf_token": token, **reversed_order})
        assert refused.status_code == 400 and "THRESHOLD_ORDER" in refused.text

        confirm_page = browser.get("/lists/banned/delete")
        assert "Delete banned and its entries" in confirm_page.text and client.get_list("banned")
        assert browser.post("/lists/banned/delete", data={"csrf_token": token}).status_code == 303
        assert client.lists() == [] and "deleted with its 2 entries" in browser.get("/lists").text

        first = browser.post("/keys", data={"csrf_token": token, "role": "checker", "lists": "", "name": "x"})
        assert first.status_code == 400 and "FIRST_KEY_NOT_ADMIN" in first.text
        made = browser.post("/keys", data={"csrf_token": token, "role": "admin", "lists": "", "name": "ops"})
        shown = re.search(r'value="(lk_k1_[\w-]+)"', made.text)
        assert made.status_code == 200 and shown is not None and "shown this once" in made.text
        assert browser.get("/lists").headers["location"] == "/login?next=%2Flists"  # keys exist now: log in
        admin, token = log_in(site, shown.group(1))
        admin.post("/keys", data={"csrf_token": token, "role": "checker", "lists": "a, b", "name": "uploads"})
        revoked = admin.post("/keys/revoke", data={"csrf_token": token, "id": "k2"})
        assert revoked.status_code == 303 and "Key k2 (uploads) revoked" in admin.get("/activity").text
        with LookalikeClient(handle.address, api_key=shown.group(1)) as keys:
            assert [(k.id, k.role, k.lists, k.revoked is not None) for k in keys.keys()] == [
                ("k1", "admin", [], False),
                ("k2", "checker", ["a", "b"], True),
            ]
    finally:
        for visitor in site.visitors:
            visitor.close()
        handle.stop()
        pictures.shutdown()
        pictures.server_close()


def test_a_match_found_by_keypoints_alone_says_so_in_words(site: Site) -> None:
    photo = distinct_photos(40, seed=3)[4]  # its crop below is one the embedding leaves under review
    crop = encode_edited(apply_edit("crop_70", rgb(photo), random.Random(4), no_other_photos))
    site.handle.client.create_list("banned")
    site.handle.client.add("banned", photo)
    browser = site.browser()
    checked = browser.post("/check", data={"csrf_token": csrf(browser.get("/check"))}, files={"image": ("c.jpg", crop)})
    assert 'class="decision review"' in checked.text
    assert re.search(r"Local features: \d+ keypoints of the upload land on the listed picture", checked.text)
    assert "Copy-detection model" in checked.text and "the model sees a different picture" in checked.text


def test_a_match_found_inside_the_upload_says_where_in_words_and_drawn_on_the_upload(site: Site) -> None:
    """A picture pasted on another photo: its PDQ, not the whole upload's, is close to the entry's, and the
    reviewer is told where in the upload it lies, and shown. The upload is never stored, so the page carries it
    (small, as a data: URI the page's policy allows for images only) under a box in the upload's pixels,
    numbered as the match is; folded where the match's list keeps no pictures (lists of illegal material)."""
    photo, background = distinct_photos(12, seed=11)[:2]
    canvas, pasted = pasted_on_a_photo(photo, background)
    site.handle.client.create_list("banned")
    site.handle.client.add("banned", photo)
    browser = site.browser()
    checked = browser.post(
        "/check", data={"csrf_token": csrf(browser.get("/check"))}, files={"image": ("p.jpg", encode_edited(canvas))}
    )

    def near(left: int, top: int, width: int, height: int) -> bool:
        return (
            abs(left - pasted[0]) + abs(top - pasted[1]) + abs(left + width - pasted[2]) + abs(top + height - pasted[3])
            <= 24
        )

    words = r"PDQ perceptual hash of a picture found inside the upload \((\d+) × (\d+) px at (\d+), (\d+)\): \d+ of"
    found = re.search(words, checked.text)
    assert found is not None
    width, height, left, top = map(int, found.groups())
    assert near(left, top, width, height), found.groups()

    assert "img-src 'self' data:;" in checked.headers["content-security-policy"]
    assert '<details class="upload">' in checked.text and '<svg viewBox="0 0 1200 800"' in checked.text
    shown = re.search(r'<image href="data:image/webp;base64,([A-Za-z0-9+/=]+)"', checked.text)
    assert shown is not None
    with Image.open(io.BytesIO(base64.b64decode(shown.group(1)))) as preview:
        assert preview.format == "WEBP" and preview.size == (480, 320)
    drawn = r'<rect class="found" data-match="1" x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"'
    boxes = [tuple(map(int, box)) for box in re.findall(drawn, checked.text)]
    assert boxes and all(near(*box) for box in boxes), boxes
    assert '<span class="number">1.</span>' in checked.text

    whole = browser.post(
        "/check", data={"csrf_token": csrf(browser.get("/check"))}, files={"image": ("w.jpg", photo.read_bytes())}
    )
    assert 'class="upload"' in whole.text and 'class="found"' not in whole.text  # found as the whole upload
