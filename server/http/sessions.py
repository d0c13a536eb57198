"""The dashboard's sessions: kept in this server's memory, named by a random id in an HttpOnly, SameSite=Strict
cookie; the cookie carries nothing else, and the API key a session logged in with never leaves the server.

Every visitor gets a session on its first page (an anonymous one, before logging in: it carries the CSRF
token of the login form); logging in replaces it with a new one (a new id, so an id seen before the login
is worth nothing after it). Each request authenticates the session's key afresh, so a revoked key ends its
sessions at their next request. Sessions end after `IDLE_SECONDS` without a request, `LIFETIME_SECONDS` in
all, at logout, and with the server (a restart logs everybody out). Anonymous sessions are kept apart and
fewer, so that pages asked for without logging in never push out those of people logged in.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

COOKIE = "lookalike_session"
IDLE_SECONDS = 8 * 3600.0
LIFETIME_SECONDS = 7 * 86400.0
LOGGED_IN_MAX = 10_000
ANONYMOUS_MAX = 10_000
"""Sessions kept at most, each kind; past it the least recently used goes."""
TOKEN_BYTES = 32


@dataclass
class Session:
    id: str
    csrf: str
    """The token every form of this session carries back (`csrf_token`), checked on every POST."""
    authorization: str | None = None
    """`Bearer <key>` of a logged-in session; None: anonymous (the keyless loopback caller, or nobody yet)."""
    created: float = field(default_factory=time.time)
    seen: float = field(default_factory=time.time)
    notices: list[str] = field(default_factory=list)
    """Messages for the next page shown (what a form did), shown once."""

    def csrf_matches(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.csrf.encode())

    def take_notices(self) -> list[str]:
        shown, self.notices = self.notices, []
        return shown


class Sessions:
    """This server's sessions, by id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logged_in: OrderedDict[str, Session] = OrderedDict()
        self._anonymous: OrderedDict[str, Session] = OrderedDict()

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id (touched: its idle time starts again), or None."""
        if not session_id:
            return None
        now = time.time()
        with self._lock:
            for kept in (self._logged_in, self._anonymous):
                session = kept.get(session_id)
                if session is None:
                    continue
                if now - session.seen > IDLE_SECONDS or now - session.created > LIFETIME_SECONDS:
                    del kept[session_id]
                    return None
                session.seen = now
                kept.move_to_end(session_id)
                return session
        return None

    def start(self, authorization: str | None = None) -> Session:
        """A new session: anonymous, or logged in with `authorization` (`Bearer <key>`)."""
        session = Session(secrets.token_urlsafe(TOKEN_BYTES), secrets.token_urlsafe(TOKEN_BYTES), authorization)
        kept, most = (self._anonymous, ANONYMOUS_MAX) if authorization is None else (self._logged_in, LOGGED_IN_MAX)
        with self._lock:
            kept[session.id] = session
            while len(kept) > most:
                kept.popitem(last=False)
        return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._logged_in.pop(session_id, None)
            self._anonymous.pop(session_id, None)
