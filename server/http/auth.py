"""Who calls over HTTP: the same keys as gRPC (`Authorization: Bearer KEY`), and while no key exists,
any caller on loopback, decided by `Access.caller_for` exactly as for gRPC."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from lookalike.server.auth import Access, Caller, is_loopback_host


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
    return access.caller_for(header, header is None and peer_is_loopback(connection))
