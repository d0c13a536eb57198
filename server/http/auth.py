"""Who calls over HTTP: the same keys as gRPC (`Authorization: Bearer KEY`), and while no key exists,
any caller on loopback, decided by `Access.caller_for` exactly as for gRPC."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from lookalike.client.errors import PermissionDenied
from lookalike.server.auth import Access, Caller, is_loopback_host

LOOPBACK_NAMES = ("localhost", "localhost.")


def peer_is_loopback(connection: HTTPConnection) -> bool:
    """Whether the request came from this machine (its TCP peer; a unix socket has none and is local)."""
    client = connection.client
    if client is None:
        return True
    return is_loopback_host(client.host)


def caller(connection: HTTPConnection, access: Access, authorization: str | None = None) -> Caller:
    """The caller a request authenticates as: by `authorization` when given (the dashboard's session
    holds a key), else by its `Authorization` header, else (while no key exists) by coming from loopback."""
    header = authorization if authorization is not None else connection.headers.get("authorization")
    keyless = header is None and peer_is_loopback(connection)
    if keyless and access.open:
        refuse_other_sites(connection)
    return access.caller_for(header, keyless)


def refuse_other_sites(connection: HTTPConnection, pages: bool = False) -> None:
    """While no key exists a loopback caller needs none, so a web page open in a browser on this machine
    must not be able to call in its place: refuse requests another site's page makes (by `Origin` and
    `Sec-Fetch-Site`, which browsers set and scripts cannot forge) and requests for a host name that is
    not loopback (a DNS-rebinding page reaches 127.0.0.1 under its own name). Scripts, curl and
    `lookalike` send neither header and name the loopback address. For the dashboard's `pages`, a link
    followed from elsewhere may open them (their forms carry a CSRF token another site cannot read): only
    the host name is checked."""
    host = (connection.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
    origin = connection.headers.get("origin")
    fetched_from = connection.headers.get("sec-fetch-site", "none")
    from_elsewhere = not pages and (
        fetched_from not in ("none", "same-origin")
        or (origin is not None and urlsplit(origin).netloc.lower() != (connection.headers.get("host") or "").lower())
    )
    if from_elsewhere or (host and host not in LOOPBACK_NAMES and not is_loopback_host(host)):
        raise PermissionDenied(
            "while no API key exists, only this machine's own programs may call without one, not a web page "
            "from another site or a host name that is not loopback; create an admin key "
            "(`lookalike keys create --role admin`) and send it",
            "CROSS_SITE_REQUEST",
        )
