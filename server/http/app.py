"""The HTTP server: the ASGI app (the API at /v1, the dashboard at /) served by uvicorn on a thread of its
own, on a socket bound before anything is served, so a taken address fails the start as gRPC's does."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lookalike.client.errors import FailedPrecondition, InvalidArgument, LookalikeError, NotFound
from lookalike.server.config import ServerConfig
from lookalike.server.http import api, dashboard, openapi
from lookalike.server.http.context import HttpContext
from lookalike.server.http.errors import error_body, error_response

log = logging.getLogger("lookalike")
BACKLOG = 512


def build_app(context: HttpContext) -> Starlette:
    """The API's routes and document under /v1, the dashboard's pages at /; every error in one JSON shape."""
    return Starlette(
        routes=[
            *api.routes(context),
            *openapi.routes(),
            *dashboard.routes(context),  # the pages, at / (a Mount would answer 404 where 405 is meant)
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
    )


async def _http_error(request: Request, error: Exception) -> Response:
    """The router's own refusals (no such path, a verb the path does not take) in the API's error shape."""
    assert isinstance(error, HTTPException)
    domain: LookalikeError
    if error.status_code == 404:
        domain = NotFound(f"no such path: {request.url.path} (the API is under /v1; see /v1/docs)", "PATH_NOT_FOUND")
    elif error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        domain = InvalidArgument(
            f"{request.method} is not accepted on {request.url.path}; use {allowed}", "METHOD_NOT_ALLOWED"
        )
    else:
        domain = InvalidArgument(str(error.detail), "REQUEST_INVALID")
    body = error_body(domain)
    body["error"]["code"] = error.status_code
    return JSONResponse(body, error.status_code, headers=error.headers)


async def _unexpected(request: Request, error: Exception) -> Response:
    return error_response(error, f"HTTP {request.method} {request.url.path}")


def split_listen(listen: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT ([::1]:8080 for IPv6); FAILED_PRECONDITION when it is not one."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise FailedPrecondition(
            f"cannot serve HTTP on {listen!r}: give --http-listen as HOST:PORT (e.g. 127.0.0.1:8080) or off",
            "LISTEN_FAILED",
        )
    return host.strip("[]"), int(port)


def bind(listen: str) -> socket.socket:
    """A listening socket on HOST:PORT (port 0: any free one); OSError when it cannot be bound."""
    host, port = split_listen(listen)
    family, kind, protocol, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, protocol)
    try:
        # Reuse only an address whose old connections linger (TIME_WAIT); a listening one stays taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn serving the app on a bound socket, on its own thread and event loop."""

    def __init__(self, app: Starlette, sock: socket.socket, config: ServerConfig) -> None:
        self.app = app
        self.socket = sock
        self.port = int(sock.getsockname()[1])
        self.tls = bool(config.tls_cert)
        settings: dict[str, Any] = {}
        if config.tls_cert:
            settings |= {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key}
            if config.tls_client_ca:
                settings |= {"ssl_ca_certs": config.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            http="h11",
            ws="none",
            log_config=None,
            access_log=False,  # the request log has one line per call already
            server_header=False,
            timeout_graceful_shutdown=int(config.grace) or 1,
            **settings,
        )
        try:
            self._config.load()  # TLS files are read here, so a bad one fails the start
        except (ssl.SSLError, OSError) as error:
            raise FailedPrecondition(
                f"cannot serve HTTPS with --tls-cert/--tls-key: {error}", "TLS_FILE_INVALID"
            ) from None
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start and stop lines repeat ours
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self.socket]))

    def begin_stop(self) -> None:
        """Stop accepting; requests in flight go on (up to --grace)."""
        self._server.should_exit = True

    def stop(self) -> None:
        """`begin_stop`, and wait until the requests in flight have finished."""
        self.begin_stop()
        if self._thread.is_alive():
            self._thread.join()
        self.socket.close()
