"""The web dashboard, at / on the HTTP server: server-rendered pages over the same operations as the API.

Every page and form goes through `Dashboard.page`: admission and readiness as for API calls (one
`--max-concurrent-requests` for both), the session (`sessions`), the caller its key authenticates as (while no
key exists, the keyless loopback caller, as over gRPC), the CSRF token on every POST, one request log line and
the same metrics (method `dashboard.<page>`), and errors as pages with the status the API would give. What the
caller's role may not do is left off the pages, and refused by the operations (403) when asked for anyway.
Everything a user wrote (list descriptions, entry ids, meta, key names) is escaped by the templates.
"""

from __future__ import annotations

import base64
import functools
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from lookalike.client.errors import InvalidArgument, LookalikeError, PermissionDenied, Unauthenticated
from lookalike.client.hashfiles import FORMATS
from lookalike.server.auth import ROLE_ACTIONS, Action, Caller
from lookalike.server.check_index import REVIEW
from lookalike.server.checks import StoredCheck
from lookalike.server.embedder import MODELS
from lookalike.server.errors import reported
from lookalike.server.feedback import CONFIRMED, FALSE_POSITIVE
from lookalike.server.fingerprint import FRAME, PART, WHOLE, Place
from lookalike.server.hashes import HashAdd
from lookalike.server.http import auth
from lookalike.server.http.api import MULTIPART_MEDIA, _import, media_type, read_body, read_form
from lookalike.server.http.charts import hourly_chart, score_histogram
from lookalike.server.http.context import HttpContext
from lookalike.server.http.errors import error_body, http_status
from lookalike.server.http.sessions import COOKIE, Session, Sessions
from lookalike.server.imaging import decode_image, thumbnail_webp
from lookalike.server.observability import CallNotes, record_call
from lookalike.server.operations.checking import CheckQuery, NewCheck
from lookalike.server.operations.entries import EntryQuery, NewPicture
from lookalike.server.operations.judging import FeedbackSubmission
from lookalike.server.operations.lists import ListChange, ListSpec
from lookalike.server.operations.types import ImageSource, PageRequest
from lookalike.server.records import LIST_KIND_ALLOW, LIST_KINDS, ROLES, AddOutcome, AuditRecord
from lookalike.server.regions import Box
from lookalike.server.scoring import Evidence
from lookalike.server.service import CheckResult, Match

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
ENTRIES_PER_PAGE = 50
CHECKS_PER_PAGE = 25
AUDIT_SHOWN = 200
AUDIT_READ_MAX = 10_000
"""Audit records read at most for one page when filtering by key or end time (a read is a page of 1000)."""
FEEDBACK_READ_MAX = 10_000
UPLOAD_FILES_MAX = 100
"""Pictures one upload form may carry (the page's script sends one per request, for its progress bar)."""
ACTIVITY_HOURS = (24, 48, 168)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def may(caller: Caller, action: Action, list_name: str | None = None) -> bool:
    """Whether the caller's role (and, given a list, its lists) allow `action`: what the pages show."""
    return action in ROLE_ACTIONS[caller.role] and (list_name is None or caller.may_use(list_name))


def when(seconds: float | None) -> str:
    if not seconds:
        return "–"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def segment(text: str) -> str:
    """`text` quoted for a URL's query or path, every reserved character escaped."""
    return urllib.parse.quote(text, safe="")


def _whose(place: Place | None, preposition: str = "of") -> str:
    """Which part of the upload a signal is of, for a reviewer to look at: nothing for the whole upload."""
    if place is None or place.kind == WHOLE:
        return ""
    if place.kind == FRAME:
        return f" {preposition} frame {place.frame + 1} of the animation"
    left, top, right, bottom = place.box
    return f" {preposition} a picture found inside the upload ({right - left} × {bottom - top} px at {left}, {top})"


PREVIEW_SIDE = 480
"""Long side of the checked upload as the check page shows it, with where each match was found drawn on it."""


@dataclass(frozen=True)
class Preview:
    """A checked upload, small, and the boxes inside it where matches were found: the words give a box's
    pixels, the picture shows a reviewer what lies there."""

    uri: str
    """The picture as a `data:` URI (the upload itself is never stored, so it has no address to load it from)."""
    size: tuple[int, int]
    """The upload's size as shown: the pixels the boxes are in."""
    found: list[tuple[int, Box]]
    """(match number from 1, box) for each picture found inside the upload that a match's signal came from."""
    unfolded: bool
    """Shown at once only where every match's entry shows its picture anyway (its list keeps thumbnails); else
    folded, for a reviewer to open on purpose (lists of illegal material keep no pictures)."""


def upload_preview(data: bytes, max_pixels: int, matches: list[Match], unfolded: bool) -> Preview | None:
    """The preview of an uploaded picture that was just checked (so it decodes); None where it does not."""
    try:
        decoded = decode_image(data, max_pixels)
    except LookalikeError:
        return None
    found: list[tuple[int, Box]] = []
    for number, match in enumerate(matches, 1):
        for place in (match.evidence.embedding_place, match.evidence.pdq_place):
            if place is not None and place.kind == PART and (number, place.box) not in found:
                found.append((number, place.box))
    picture = base64.b64encode(thumbnail_webp(decoded.upright, PREVIEW_SIDE)).decode("ascii")
    return Preview(f"data:image/webp;base64,{picture}", decoded.shown_size, found, unfolded)


def evidence_words(evidence: Evidence) -> list[str]:
    """Each signal's evidence, worded for a reviewer."""
    words = []
    if evidence.exact_sha256:
        words.append("The very same file: its SHA-256 digest is identical.")
    elif evidence.exact_md5:
        words.append("The very same file: its MD5 digest is identical.")
    scores = evidence.signal_scores()
    if evidence.pdq_distance is not None:
        bits = f"PDQ perceptual hash{_whose(evidence.pdq_place)}: {evidence.pdq_distance} of 256 bits differ"
        if "pdq" not in scores:
            words.append(f"{bits}, but the picture is too plain for PDQ to count (quality {evidence.pdq_quality}).")
        elif scores["pdq"] >= 0.8:
            words.append(f"{bits}: as close as edited copies of one picture come.")
        elif scores["pdq"] >= 0.5:
            words.append(f"{bits}: close, possibly a copy.")
        else:
            words.append(f"{bits}: far apart, as different photos are.")
    if evidence.embedding_similarity is not None:
        model = f"Copy-detection model ({evidence.model}){_whose(evidence.embedding_place, 'on')}"
        similarity = f"{model}: similarity {evidence.embedding_similarity:.3f}"
        value = scores.get("embedding", 0.0)
        if value >= 0.8:
            words.append(f"{similarity}: the model sees a copy, edited or not.")
        elif value >= 0.5:
            words.append(f"{similarity}: the model sees a likely copy.")
        else:
            words.append(f"{similarity}: the model sees a different picture.")
    if evidence.keypoints_agreeing:
        words.append(
            f"Local features: {evidence.keypoints_agreeing} keypoints of the upload land on the listed picture's "
            "under one move and resize, as a crop or a pasted copy of it would (another photo of the same scene "
            "can too)."
        )
    if not words:
        words.append("No signal reached review level.")
    return words


@dataclass
class View:
    """One request to the dashboard: its session, its caller, and its log notes."""

    request: Request
    session: Session
    caller: Caller | None
    """None only on the login page, before logging in."""
    notes: CallNotes
    form: FormData | None = None
    cookie: str | None = None
    """A session id to set as the cookie with the response (a new session)."""
    notices: list[str] = field(default_factory=list)

    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else default

    def files(self, name: str) -> list[UploadFile]:
        if self.form is None:
            return []
        return [item for item in self.form.getlist(name) if isinstance(item, UploadFile) and item.filename]

    @property
    def user(self) -> Caller:
        """The caller, on every page but the login page's."""
        assert self.caller is not None
        return self.caller

    def may(self, action: Action, list_name: str | None = None) -> bool:
        return self.caller is not None and may(self.caller, action, list_name)

    def notice(self, text: str) -> None:
        self.session.notices.append(text)


Handler = Callable[[View], Awaitable[Response]]


class Dashboard:
    """The pages of one HTTP server, and its sessions."""

    def __init__(self, context: HttpContext) -> None:
        self.context = context
        self.ops = context.operations
        self.sessions = Sessions()
        self.templates = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = when
        self.templates.filters["segment"] = segment
        self.templates.filters["hex"] = bytes.hex  # hashes are bytes inside; pages show them as hex
        self.templates.globals.update(Action=Action, evidence_words=evidence_words)

    def routes(self) -> list[BaseRoute]:
        public: list[tuple[str, str, Handler, str]] = [
            ("GET", "/login", self.login_form, "login"),
            ("POST", "/login", self.login, "login"),
            ("POST", "/logout", self.logout, "logout"),
        ]
        pages: list[tuple[str, str, Handler, str]] = [
            ("GET", "/", self.home, "home"),
            ("GET", "/lists", self.lists, "lists"),
            ("POST", "/lists", self.create_list, "lists.create"),
            ("GET", "/lists/{list}", self.list_page, "list"),
            ("POST", "/lists/{list}/settings", self.update_list, "list.settings"),
            ("GET", "/lists/{list}/delete", self.delete_form, "list.delete"),
            ("POST", "/lists/{list}/delete", self.delete_list, "list.delete"),
            ("POST", "/lists/{list}/upload", self.upload, "list.upload"),
            ("POST", "/lists/{list}/add-url", self.add_url, "list.add_url"),
            ("POST", "/lists/{list}/add-hash", self.add_hash, "list.add_hash"),
            ("POST", "/lists/{list}/import", self.import_file, "list.import"),
            ("POST", "/lists/{list}/remove", self.remove_entry, "list.remove"),
            ("POST", "/lists/{list}/confirm", self.confirm_entry, "list.confirm"),
            ("GET", "/lists/{list}/thumbnail", self.thumbnail, "list.thumbnail"),
            ("GET", "/check", self.check_form, "check"),
            ("POST", "/check", self.check, "check"),
            ("GET", "/review", self.review, "review"),
            ("POST", "/review/feedback", self.feedback, "review.feedback"),
            ("POST", "/review/calibrate", self.calibrate, "review.calibrate"),
            ("GET", "/activity", self.activity, "activity"),
            ("POST", "/keys", self.create_key, "keys.create"),
            ("POST", "/keys/revoke", self.revoke_key, "keys.revoke"),
        ]
        routes: list[BaseRoute] = [
            Route(path, self.page(handler, name, group is public), methods=[verb], name=f"{name}.{verb.lower()}")
            for group in (public, pages)
            for verb, path, handler, name in group
        ]
        routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
        return routes

    # The one way into a page ------------------------------------------------------------------------

    def page(self, handler: Handler, name: str, public: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """`handler` served as a page; `public`: also to those not logged in (its view's caller may be None)."""
        context = self.context

        async def serve(request: Request) -> Response:
            notes = CallNotes(f"dashboard.{name}", request_id=request.headers.get("x-request-id", ""))
            context.metrics.in_flight.inc()
            admitted = False
            code = "CANCELLED"
            response: Response | None = None
            session = None
            view: View | None = None
            try:
                context.admit()
                admitted = True
                context.require_ready()
                session, cookie = self._session(request)
                try:
                    view = View(request, session, self._caller(request, session), notes, cookie=cookie)
                except Unauthenticated:
                    if not public or session.authorization is not None:  # a revoked key's session ends
                        raise
                    view = View(request, session, None, notes, cookie=cookie)
                if request.method == "POST":
                    view.form = await self._form(request)
                    if not session.csrf_matches(view.field("csrf_token")):
                        raise PermissionDenied(
                            "this form's security token is missing or stale (CSRF): reload the page and send the "
                            "form again",
                            "CSRF_TOKEN_INVALID",
                        )
                try:
                    response = await handler(view)
                finally:
                    if view.form is not None:
                        await view.form.close()
                if view.cookie:
                    self._set_cookie(request, response, view.cookie)
                code = "OK"
            except Exception as error:  # noqa: BLE001 - every failure becomes a page with its status
                shown = reported(error, f"dashboard {name}")
                code = shown.code
                if isinstance(shown, Unauthenticated) and session is not None:
                    response = self._to_login(request, session, shown)
                else:
                    response = self._error_page(request, session, shown, view)
            finally:
                if admitted:
                    context.calls.leave()
                context.metrics.in_flight.dec()
                record_call(context.metrics, notes, code)
            response.headers.update(SECURITY_HEADERS)
            return response

        return serve

    def _session(self, request: Request) -> tuple[Session, str | None]:
        """The request's session, or a new anonymous one (and its id, to set as the cookie)."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is not None:
            return session, None
        session = self.sessions.start()
        return session, session.id

    def _caller(self, request: Request, session: Session) -> Caller:
        """Who the session is: its key, authenticated afresh (a revoked key fails here); anonymous, the keyless
        loopback caller while no key exists. The dashboard reads no Authorization header: only its cookie."""
        if session.authorization is not None:
            return auth.caller(request, self.context.access, session.authorization)
        if self.context.access.open:
            auth.refuse_other_sites(request, pages=True)
        return self.context.access.caller_for(None, auth.peer_is_loopback(request))

    async def _form(self, request: Request) -> FormData:
        limit = self.context.config.max_request_bytes
        if media_type(request) == MULTIPART_MEDIA:
            return await read_form(request, limit, files=UPLOAD_FILES_MAX)
        body = await read_body(request, limit)
        try:
            pairs: list[tuple[str, str | UploadFile]] = list(
                urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=1000)
            )
        except (UnicodeDecodeError, ValueError) as error:
            raise InvalidArgument(f"the form cannot be read: {error}", "FORM_MALFORMED") from None
        return FormData(pairs)

    def _set_cookie(self, request: Request, response: Response, session_id: str) -> None:
        response.set_cookie(
            COOKIE,
            session_id,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )

    def _to_login(self, request: Request, session: Session, error: Unauthenticated) -> Response:
        """Back to the login page: the session's key is missing, unknown or revoked (its session ends)."""
        fresh = session
        if session.authorization is not None:
            self.sessions.end(session.id)
            fresh = self.sessions.start()
            fresh.notices.append(f"Please log in again: {error.message}")
        target = "/login"
        if request.method == "GET" and request.url.path not in ("/", "/login"):
            target += "?next=" + segment(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        response = RedirectResponse(target, status_code=303)
        if fresh is not session or request.cookies.get(COOKIE) != session.id:
            self._set_cookie(request, response, fresh.id)
        return response

    def _error_page(
        self, request: Request, session: Session | None, error: LookalikeError, view: View | None
    ) -> Response:
        """The error as a page with the status the API gives it (its JSON body, to the page's own script)."""
        status = http_status(error)
        if request.headers.get("accept", "").startswith("application/json"):
            return JSONResponse(error_body(error), status)
        body = self.templates.get_template("error.html").render(
            title=f"{status}: {error.code.replace('_', ' ').lower()}",
            error=error,
            status=status,
            session=session,
            caller=None if view is None else view.caller,
            may=(lambda *_: False) if view is None else view.may,
            path=request.url.path,
            notices=[],
            back=request.headers.get("referer", "") if _same_origin(request) else "",
        )
        return HTMLResponse(body, status)

    def render(self, view: View, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        body = self.templates.get_template(template).render(
            session=view.session,
            caller=view.caller,
            may=view.may,
            notices=view.session.take_notices(),
            path=view.request.url.path,
            models=MODELS,
            list_kinds=LIST_KINDS,
            **values,
        )
        return HTMLResponse(body, status)

    async def run[T](self, work: Callable[[], T]) -> T:
        return await self.context.run(work)

    # Logging in ----------------------------------------------------------------------------------

    async def home(self, view: View) -> Response:
        return RedirectResponse("/lists" if view.may(Action.READ_LISTS) else "/check", status_code=303)

    async def login_form(self, view: View) -> Response:
        return self.render(view, "login.html", next=_safe_next(view.request.query_params.get("next", "")))

    async def login(self, view: View) -> Response:
        key = view.field("api_key")
        try:
            if not key:
                raise Unauthenticated("enter an API key (lk_…) to log in", "API_KEY_MISSING")
            self.context.access.caller_for(f"Bearer {key}", False)
        except Unauthenticated as error:
            return self.render(view, "login.html", status=401, next=_safe_next(view.field("next")), error=error.message)
        self.sessions.end(view.session.id)
        fresh = self.sessions.start(f"Bearer {key}")
        response = RedirectResponse(_safe_next(view.field("next")) or "/", status_code=303)
        view.cookie = None
        self._set_cookie(view.request, response, fresh.id)
        return response

    async def logout(self, view: View) -> Response:
        self.sessions.end(view.session.id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # Lists -----------------------------------------------------------------------------------------

    async def lists(self, view: View) -> Response:
        states = await self.run(lambda: self.ops.lists.visible(view.user))
        return self.render(view, "lists.html", lists=states)

    async def create_list(self, view: View) -> Response:
        spec = ListSpec(
            view.field("name"),
            view.field("description"),
            _score(view.field("review_threshold"), "review threshold"),
            _score(view.field("reject_threshold"), "reject threshold"),
            view.field("model"),
            dihedral=view.field("dihedral") == "on",
            kind=view.field("kind"),
            thumbnails=view.field("thumbnails") == "on",
            keypoints=view.field("keypoints") == "on",
        )
        state = await self.run(lambda: self.ops.lists.create(view.user, spec))
        view.notice(f"List {state.record.name} created.")
        return RedirectResponse(f"/lists/{state.record.name}", status_code=303)

    async def list_page(self, view: View) -> Response:
        name = view.request.path_params["list"]
        q = view.request.query_params.get("q", "")
        token = view.request.query_params.get("page_token", "")
        caller = view.user

        def read() -> dict[str, Any]:
            state = self.ops.lists.get(caller, name)
            found: dict[str, Any] = {"list": state, "entries": [], "next_page_token": "", "thumbnails": set()}
            if may(caller, Action.READ_ENTRIES, name):
                page = self.ops.entries.page(caller, name, EntryQuery(q, ENTRIES_PER_PAGE, token))
                found["entries"] = page.entries
                found["next_page_token"] = page.next_page_token
                if state.record.thumbnails:
                    found["thumbnails"] = {
                        e.entry.id for e in page.entries if self.ops.entries.thumbnail(caller, name, e.entry.id)
                    }
            return found

        found = await self.run(read)
        return self.render(view, "list.html", q=q, page_token=token, formats=FORMATS, **found)

    async def update_list(self, view: View) -> Response:
        name = view.request.path_params["list"]
        change = ListChange(
            name,
            description=view.field("description"),
            review_threshold=_score(view.field("review_threshold"), "review threshold"),
            reject_threshold=_score(view.field("reject_threshold"), "reject threshold"),
            dihedral=view.field("dihedral") == "on",
            thumbnails=view.field("thumbnails") == "on",
            keypoints=view.field("keypoints") == "on",
        )
        await self.run(lambda: self.ops.lists.update(view.user, change))
        view.notice(f"Settings of {name} saved.")
        return RedirectResponse(f"/lists/{name}", status_code=303)

    async def delete_form(self, view: View) -> Response:
        name = view.request.path_params["list"]
        view.user.require(Action.DELETE_LISTS, [name])
        state = await self.run(lambda: self.ops.lists.get(view.user, name))
        return self.render(view, "delete_list.html", list=state)

    async def delete_list(self, view: View) -> Response:
        name = view.request.path_params["list"]
        record = await self.run(lambda: self.ops.lists.delete(view.user, name))
        view.notice(f"List {record.name} deleted with its {record.entry_count:,} entries.")
        return RedirectResponse("/lists", status_code=303)

    # Entries ---------------------------------------------------------------------------------------

    async def upload(self, view: View) -> Response:
        """Pictures uploaded (several at once; the page's script sends them one per request, with progress);
        JSON for the script, else notices and back to the list."""
        name = view.request.path_params["list"]
        meta = _meta(view.field("meta"))
        pictures = view.files("image")
        if not pictures:
            raise InvalidArgument("choose one or more pictures to upload (field image)", "IMAGE_MISSING")
        results: list[dict[str, Any]] = []

        def add(data: bytes) -> AddOutcome:
            return self.ops.entries.add(view.user, name, NewPicture(ImageSource("data", data), meta))

        for picture in pictures:
            data = await picture.read()
            try:
                outcome = await self.run(functools.partial(add, data))
            except (PermissionDenied, Unauthenticated):
                raise
            except LookalikeError as error:
                results.append({"file": picture.filename, "error": error.message, "reason": error.reason})
                continue
            view.notes.items += 1
            results.append({"file": picture.filename, "id": outcome.entry.id, "duplicate": outcome.duplicate})
        if view.request.headers.get("accept", "").startswith("application/json"):
            return JSONResponse({"results": results})
        for result in results:
            view.notice(_upload_words(result))
        return RedirectResponse(f"/lists/{name}", status_code=303)

    async def add_url(self, view: View) -> Response:
        name = view.request.path_params["list"]
        picture = NewPicture(ImageSource("url", view.field("url")), _meta(view.field("meta")), view.field("id"))
        outcome = await self.run(lambda: self.ops.entries.add(view.user, name, picture))
        view.notice(_upload_words({"file": view.field("url"), "id": outcome.entry.id, "duplicate": outcome.duplicate}))
        return RedirectResponse(f"/lists/{name}", status_code=303)

    async def add_hash(self, view: View) -> Response:
        name = view.request.path_params["list"]
        quality = view.field("pdq_quality")
        if quality and not quality.isdigit():
            raise InvalidArgument(f"PDQ quality must be a whole number 0-100, got {quality!r}", "PDQ_QUALITY_INVALID")
        item = HashAdd(
            id=view.field("id"),
            pdq=view.field("pdq"),
            pdq_quality=int(quality) if quality else None,
            md5=view.field("md5"),
            sha256=view.field("sha256"),
            meta=_meta(view.field("meta")),
        )
        outcome = await self.run(lambda: self.ops.entries.add_hash(view.user, name, item))
        view.notice(_upload_words({"file": "the hashes", "id": outcome.entry.id, "duplicate": outcome.duplicate}))
        return RedirectResponse(f"/lists/{name}", status_code=303)

    async def import_file(self, view: View) -> Response:
        name = view.request.path_params["list"]
        files = view.files("file")
        if not files:
            raise InvalidArgument("choose a hash list file to import (field file)", "FILE_MISSING")
        data = await files[0].read()
        chosen = view.field("format") or None
        if chosen is not None and chosen not in FORMATS:
            raise InvalidArgument(f"format {chosen!r} is unknown; use one of {', '.join(FORMATS)}", "FORMAT_UNKNOWN")
        filename = files[0].filename or ""
        summary = await self.run(lambda: _import(self.ops, view.user, name, data, chosen, filename))
        view.notes.items = summary["added"] + summary["duplicates"] + summary["failed"]
        view.notice(
            f"Imported {filename} as {summary['format']}: {summary['added']} added, {summary['duplicates']} already "
            f"listed, {summary['failed']} lines refused."
        )
        for error in summary["errors"][:10]:
            view.notice(f"Line {error['line']}: {error['error']}")
        return RedirectResponse(f"/lists/{name}", status_code=303)

    async def remove_entry(self, view: View) -> Response:
        name = view.request.path_params["list"]
        entry = await self.run(lambda: self.ops.entries.remove(view.user, name, view.field("id")))
        view.notice(f"Entry {entry.id} removed from {name}.")
        return RedirectResponse(f"/lists/{name}", status_code=303)

    async def confirm_entry(self, view: View) -> Response:
        name = view.request.path_params["list"]
        entry = await self.run(lambda: self.ops.entries.confirm(view.user, name, view.field("id")))
        view.notice(f"Entry {entry.id} confirmed: its flood guard is lifted, its present match rate taken as usual.")
        return RedirectResponse(f"/lists/{name}", status_code=303)

    async def thumbnail(self, view: View) -> Response:
        name = view.request.path_params["list"]
        entry_id = view.request.query_params.get("id", "")
        picture = await self.run(lambda: self.ops.entries.thumbnail(view.user, name, entry_id))
        if picture is None:
            return Response(status_code=404)
        return Response(picture, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})

    # Checks ----------------------------------------------------------------------------------------

    async def check_form(self, view: View) -> Response:
        lists = await self._checkable(view)
        return self.render(view, "check.html", lists=lists, result=None, thumbnails={}, preview=None)

    async def _checkable(self, view: View) -> list[str]:
        if not view.may(Action.READ_LISTS):
            return []
        states = await self.run(lambda: self.ops.lists.visible(view.user))
        return [state.record.name for state in states]

    async def check(self, view: View) -> Response:
        pictures = view.files("image")
        url = view.field("url")
        if pictures and url:
            raise InvalidArgument("give a picture or a URL, not both", "IMAGE_TWICE")
        upload = await pictures[0].read() if pictures else b""
        if pictures:
            image = ImageSource("data", upload)
        elif url:
            image = ImageSource("url", url)
        else:
            raise InvalidArgument("choose a picture to check, or paste its URL", "IMAGE_MISSING")
        named = [item for item in (view.form.getlist("lists") if view.form else []) if isinstance(item, str) and item]
        named += [name.strip() for name in view.field("more_lists").split(",") if name.strip()]
        order = NewCheck(image, list(dict.fromkeys(named)), top_k=5 if view.field("near") == "on" else 0)
        result = await self.run(lambda: self.ops.checks.check(view.user, order))
        assert isinstance(result, CheckResult)
        view.notes.decisions[result.decision] += 1
        view.notes.request_id = result.request_id
        thumbnails = await self.run(lambda: self._thumbnails_of(view.user, result.matches))
        max_pixels, matches = self.context.config.max_pixels, result.matches
        pictures_shown = bool(matches) and all(thumbnails.get((match.list, match.entry.id)) for match in matches)
        preview = None
        if upload:  # a URL's picture was fetched by the server: the page has none to show
            preview = await self.run(lambda: upload_preview(upload, max_pixels, matches, pictures_shown))
        return self.render(
            view, "check.html", lists=await self._checkable(view), result=result, thumbnails=thumbnails, preview=preview
        )

    def _thumbnails_of(self, caller: Caller, matches: list[Match]) -> dict[tuple[str, str], bool]:
        """Which matched entries have a thumbnail the caller may see."""
        shown = {}
        for match in matches:
            if may(caller, Action.READ_ENTRIES, match.list):
                kept = self.ops.entries.thumbnail(caller, match.list, match.entry.id)
                shown[(match.list, match.entry.id)] = kept is not None
        return shown

    # Review and calibration --------------------------------------------------------------------------

    async def review(self, view: View) -> Response:
        caller = view.user
        token = view.request.query_params.get("page_token", "")
        chosen = view.request.query_params.get("list", "")

        def read() -> dict[str, Any]:
            page = self.ops.checks.page(caller, CheckQuery(REVIEW, CHECKS_PER_PAGE, token))
            matches = [m for check in page.checks if check.result for m in check.result.matches]
            found: dict[str, Any] = {
                "checks": page.checks,
                "next_page_token": page.next_page_token,
                "thumbnails": self._thumbnails_of(caller, matches),
                "verdicts": self._verdicts(caller, page.checks),
                "calibration": None,
                "histogram": None,
                "calibrated_lists": [],
            }
            if may(caller, Action.CALIBRATE):
                names = [s.record.name for s in self.ops.lists.visible(caller) if s.record.kind != LIST_KIND_ALLOW]
                found["calibrated_lists"] = names
                if chosen:  # asked for: calibrating reads every stored check
                    outcome = self.ops.feedback.calibrate(caller, chosen)
                    found["calibration"] = outcome
                    found["histogram"] = self._histogram(caller, outcome.calibration)
            return found

        found = await self.run(read)
        return self.render(view, "review.html", page_token=token, chosen=chosen, **found)

    def _verdicts(self, caller: Caller, checks: list[StoredCheck]) -> dict[tuple[str, str, str], str]:
        """(check id, list, entry id) → the verdict given on it, for the checks shown (admins read feedback)."""
        if not checks or not may(caller, Action.READ_FEEDBACK):
            return {}
        ids = {check.id for check in checks}
        since = min(check.submitted for check in checks)
        verdicts: dict[tuple[str, str, str], str] = {}
        token = ""
        read = 0
        while read < FEEDBACK_READ_MAX:
            records, token = self.ops.feedback.page(caller, PageRequest(since=since, page_token=token))
            read += len(records)
            for record in records:
                if record.check_id in ids:
                    verdicts[(record.check_id, record.list, record.entry_id)] = record.verdict
            if not token:
                break
        return verdicts

    def _histogram(self, caller: Caller, calibration: Any) -> Any:
        confirmed: list[float] = []
        false_positives: list[float] = []
        token = ""
        read = 0
        while read < FEEDBACK_READ_MAX:
            records, token = self.ops.feedback.page(caller, PageRequest(calibration.list_name, page_token=token))
            read += len(records)
            for record in records:
                if record.score is None:
                    continue
                if record.verdict == CONFIRMED:
                    confirmed.append(record.score)
                elif record.verdict == FALSE_POSITIVE:
                    false_positives.append(record.score)
            if not token:
                break
        thresholds = {"review": calibration.review.current, "reject": calibration.reject.current}
        if calibration.changes:
            thresholds |= {
                "recommended review": calibration.review.recommended,
                "recommended reject": calibration.reject.recommended,
            }
        return score_histogram(confirmed, false_positives, thresholds)

    async def feedback(self, view: View) -> Response:
        owner = view.field("owner")
        verdict = view.field("verdict")
        submission = FeedbackSubmission(
            view.field("check_id"),
            verdict if verdict in (CONFIRMED, FALSE_POSITIVE) else None,
            view.field("entry_id"),
            view.field("list"),
            view.field("note"),
            None if owner == view.user.key_id else owner,
        )
        record = await self.run(lambda: self.ops.feedback.submit(view.user, submission))
        view.notice(
            f"Check {record.check_id}: the match with {record.list}/{record.entry_id} marked "
            f"{record.verdict.replace('_', ' ')}."
        )
        return RedirectResponse(_back_to(view, "/review"), status_code=303)

    async def calibrate(self, view: View) -> Response:
        name = view.field("list")
        outcome = await self.run(lambda: self.ops.feedback.calibrate(view.user, name, apply=True))
        record = outcome.list.record
        if outcome.applied:
            view.notice(
                f"Thresholds of {name} set to review {record.review_threshold:g}, reject {record.reject_threshold:g}."
            )
        else:
            view.notice(f"Nothing to change on {name}: the thresholds are already where the feedback puts them.")
        return RedirectResponse(f"/review?list={segment(name)}", status_code=303)

    # Activity and keys -------------------------------------------------------------------------------

    async def activity(self, view: View) -> Response:
        query = view.request.query_params
        caller = view.user
        list_name = query.get("list", "").strip()
        key_id = query.get("key", "").strip()
        since = _instant(query.get("since", ""), time.time() - 86400, "since")
        until = _instant(query.get("until", ""), 0.0, "until")
        hours = int(query["hours"]) if query.get("hours", "").isdigit() else ACTIVITY_HOURS[0]

        def read() -> dict[str, Any]:
            records: list[AuditRecord] = []
            token = ""
            read = 0
            while len(records) < AUDIT_SHOWN and read < AUDIT_READ_MAX:
                page, token = self.ops.keys.audit(caller, PageRequest(list_name, since, 1000, token))
                read += len(page)
                for record in page:
                    if until and record.time > until:
                        token = ""
                        break
                    if not key_id or record.key_id == key_id:
                        records.append(record)
                if not token:
                    break
            chart = hourly_chart(self.ops.checks.activity(caller, list_name, hours))
            keys = self.ops.keys.all(caller) if may(caller, Action.MANAGE_KEYS) else []
            more = bool(token) or len(records) > AUDIT_SHOWN
            return {"audit": records[:AUDIT_SHOWN], "more": more, "chart": chart, "keys": keys}

        found = await self.run(read)
        filters = {
            "list": list_name,
            "key": key_id,
            "since": _local(since),
            "until": _local(until) if until else "",
            "hours": hours,
        }
        return self.render(view, "activity.html", filters=filters, hour_choices=ACTIVITY_HOURS, roles=ROLES, **found)

    async def create_key(self, view: View) -> Response:
        lists = [name.strip() for name in view.field("lists").split(",") if name.strip()]
        record, secret = await self.run(
            lambda: self.ops.keys.create(view.user, view.field("role"), lists, view.field("name"))
        )
        return self.render(view, "key_created.html", key=record, secret=secret)

    async def revoke_key(self, view: View) -> Response:
        record = await self.run(lambda: self.ops.keys.revoke(view.user, view.field("id")))
        view.notice(f"Key {record.id} ({record.name or record.role}) revoked: it is refused from now on.")
        return RedirectResponse("/activity", status_code=303)


# Form values ------------------------------------------------------------------------------------


def _score(text: str, name: str) -> float | None:
    """A threshold typed in a form; None when left empty (the server's default, or unchanged)."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be a number from 0 to 1, got {text!r}", "THRESHOLD_INVALID") from None


def _meta(text: str) -> dict[str, str]:
    """Meta typed one `key=value` per line."""
    meta = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, equals, value = line.partition("=")
        if not equals or not key.strip():
            raise InvalidArgument(f"meta line {number} is not key=value: {line[:80]!r}", "META_INVALID")
        meta[key.strip()] = value.strip()
    return meta


def _instant(text: str, default: float, name: str) -> float:
    """A time from a datetime-local field (UTC), or `default` when empty."""
    if not text:
        return default
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise InvalidArgument(
            f"{name} must be a date and time, e.g. 2025-01-31T12:00, got {text!r}", "TIME_INVALID"
        ) from None


def _local(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M")


def _upload_words(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['file']}: not added: {result['error']}"
    if result["duplicate"]:
        return f"{result['file']}: already listed as entry {result['id']}."
    return f"{result['file']}: added as entry {result['id']}."


def _safe_next(target: str) -> str:
    """A page of this site to go to after logging in; "" for anything else (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else ""


def _same_origin(request: Request) -> bool:
    referer = urllib.parse.urlsplit(request.headers.get("referer", ""))
    return referer.netloc == request.url.netloc


def _back_to(view: View, default: str) -> str:
    """The page a form was sent from (this site's only), else `default`."""
    if _same_origin(view.request):
        referer = urllib.parse.urlsplit(view.request.headers.get("referer", ""))
        return referer.path + (f"?{referer.query}" if referer.query else "")
    return default


def routes(context: HttpContext) -> list[BaseRoute]:
    """The dashboard's pages and its static files (styles, its one script)."""
    return Dashboard(context).routes()
