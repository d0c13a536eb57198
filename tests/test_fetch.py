"""server.fetch against a real HTTP(S) server on 127.0.0.1.

Nothing here connects anywhere but loopback: refused addresses are refused
before any connection, and host names are mapped by patching getaddrinfo.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lookalike.client.errors import DeadlineExceeded, InvalidArgument, LookalikeError, ResourceExhausted
from lookalike.server import fetch
from lookalike.server.fetch import FetchLimits, check_address, fetch_url

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes
OPEN = FetchLimits(timeout_s=3.0, allow_private=True)


class _Server(ThreadingHTTPServer):
    stop: threading.Event
    requests: list[tuple[str, dict[str, str]]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: C901 - one small route table
        self.server.requests.append((self.path, dict(self.headers)))
        path, _, query = self.path.partition("?")
        stop = self.server.stop
        try:
            if path == "/image":
                self._send(200, PAYLOAD, {"Content-Type": "image/png"})
            elif path == "/echo":
                self._send(200, f"{self.headers['Host']}|{self.headers['User-Agent']}".encode())
            elif path.startswith("/redirect/"):
                left = int(path.rsplit("/", 1)[1])
                if left == 0:
                    self._send(200, PAYLOAD)
                else:
                    # Odd hops use a relative Location, even ones an absolute path.
                    location = f"{left - 1}" if left % 2 else f"/redirect/{left - 1}"
                    code = int(query.removeprefix("code=")) if query else 302
                    self._send(code, headers={"Location": location + (f"?{query}" if query else "")})
            elif path == "/to-metadata":
                self._send(302, headers={"Location": "http://169.254.169.254/x"})
            elif path == "/to-ftp":
                self._send(301, headers={"Location": "ftp://example.invalid/x"})
            elif path == "/no-location":
                self._send(302)
            elif path == "/big-length":
                self._send(200, b"x" * 1000)
            elif path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(10):
                    self.wfile.write(b"64\r\n" + b"y" * 100 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/endless":
                # Close-delimited and never ending: the client must stop reading on its own.
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                while not stop.is_set():
                    self.wfile.write(b"z" * 65536)
            elif path == "/stall":
                stop.wait(10)
            elif path == "/trickle":
                # Each byte arrives well inside any per-read timeout; only a whole-fetch deadline ends it.
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                give_up = time.monotonic() + 3  # a regression fails the test instead of hanging it
                while not stop.wait(0.05) and time.monotonic() < give_up:
                    self.wfile.write(b"t")
                    self.wfile.flush()
            elif path == "/truncated":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b"short")
                self.close_connection = True
            else:
                self._send(404, b"not found")
        except OSError:  # the client hung up, as it should for /endless and timeouts
            self.close_connection = True


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.stop = threading.Event()
    server.requests = []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(2)


@pytest.fixture
def http_server() -> Iterator[_Server]:
    yield from _serve()


def _url(server: _Server, path: str, scheme: str = "http", host: str = "127.0.0.1") -> str:
    return f"{scheme}://{host}:{server.server_address[1]}{path}"


def _fails(exc_type: type[LookalikeError], reason: str, url: str, limits: FetchLimits = OPEN) -> LookalikeError:
    with pytest.raises(exc_type) as info:
        fetch_url(url, limits)
    assert info.value.reason == reason, info.value
    return info.value


# --- success -------------------------------------------------------------------------


def test_fetches_body_and_sends_user_agent(http_server: _Server) -> None:
    assert fetch_url(_url(http_server, "/image"), OPEN) == PAYLOAD
    headers = http_server.requests[0][1]
    assert headers["User-Agent"] == "lookalike/1"


def test_body_of_exactly_max_bytes_is_accepted(http_server: _Server) -> None:
    limits = FetchLimits(timeout_s=3.0, allow_private=True, max_bytes=len(PAYLOAD))
    assert fetch_url(_url(http_server, "/image"), limits) == PAYLOAD


def test_chunked_body_is_read(http_server: _Server) -> None:
    assert fetch_url(_url(http_server, "/chunked"), OPEN) == b"y" * 1000


def test_connects_to_checked_address_with_original_host_header(
    http_server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once; a second (rebinding) answer is never asked for."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def fake(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "images.test":
            calls.append(host)
            if len(calls) > 1:
                raise socket.gaierror("rebinding: a second lookup must not happen")
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    port = http_server.server_address[1]
    assert fetch_url(f"http://images.test:{port}/echo", OPEN) == f"images.test:{port}|lookalike/1".encode()
    assert calls == ["images.test"]


def test_non_ascii_path_is_percent_encoded(http_server: _Server) -> None:
    _fails(InvalidArgument, "URL_HTTP_STATUS", _url(http_server, "/bild-\u00e4.png?q=\u00fc"))
    assert http_server.requests[0][0] == "/bild-%C3%A4.png?q=%C3%BC"


# --- address guard -------------------------------------------------------------------


def test_loopback_refused_without_allow_private(http_server: _Server) -> None:
    error = _fails(InvalidArgument, "URL_ADDRESS_REFUSED", _url(http_server, "/image"), FetchLimits())
    assert "loopback" in error.message and "--allow-private-urls" in error.message
    assert http_server.requests == []  # refused before connecting


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "100.64.0.1",  # carrier-grade NAT: not private, not global either
        "169.254.1.1",
        "fe80::1",
        "fe80::1%lo",  # scoped link-local, as getaddrinfo reports it
        "fc00::1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    ],
)
def test_private_addresses_refused(host: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_address(host, 80, allow_private=False)
    assert info.value.reason == "URL_ADDRESS_REFUSED"


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "::ffff:a9fe:a9fe", "64:ff9b::a9fe:a9fe"]
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_metadata_address_always_refused(host: str, allow_private: bool) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_address(host, 80, allow_private=allow_private)
    assert info.value.reason == "URL_ADDRESS_REFUSED"
    assert "metadata" in info.value.message


def test_allowed_addresses_are_returned_without_connecting() -> None:
    assert check_address("93.184.215.14", 80, allow_private=False) == "93.184.215.14"
    assert check_address("127.0.0.1", 80, allow_private=True) == "127.0.0.1"
    assert check_address("10.0.0.1", 80, allow_private=True) == "10.0.0.1"


@pytest.mark.parametrize("url", ["http://[::1]/x", "http://[::ffff:127.0.0.1]:8080/x", "http://10.0.0.1/x"])
def test_fetch_refuses_private_literals(url: str) -> None:
    _fails(InvalidArgument, "URL_ADDRESS_REFUSED", url, FetchLimits())


def test_any_bad_answer_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """One private address among public ones is enough to refuse (round-robin rebinding)."""

    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        assert host == "mixed.test"
        tcp = (socket.AF_INET, socket.SOCK_STREAM, 6, "")
        return [(*tcp, ("93.184.215.14", port)), (*tcp, ("10.1.2.3", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    error = _fails(InvalidArgument, "URL_ADDRESS_REFUSED", "http://mixed.test/x", FetchLimits())
    assert "10.1.2.3" in error.message


def test_dns_failure_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    _fails(InvalidArgument, "URL_UNREACHABLE", "http://nowhere.test/x")


def test_slow_dns_hits_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: release.wait(5))
    started = time.monotonic()
    try:
        _fails(DeadlineExceeded, "URL_TIMEOUT", "http://slow.test/x", FetchLimits(timeout_s=0.3))
    finally:
        release.set()
    assert time.monotonic() - started < 1.0


# --- URL validation ------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://example.invalid/x", "file:///etc/passwd", "gopher://h/x", "data:,hi"])
def test_unsupported_schemes_refused(url: str) -> None:
    _fails(InvalidArgument, "URL_SCHEME", url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "example.invalid/x",
        "http://",
        "http:///path",
        "http://h:99999/",
        "http://h:port/",
        "http://[::1/",
        "http://exa mple.invalid/",
        "http://h/\x00",
        "http://a..b/",
    ],
)
def test_malformed_urls_refused(url: str) -> None:
    _fails(InvalidArgument, "URL_INVALID", url)


def test_connection_refused_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _fails(InvalidArgument, "URL_UNREACHABLE", f"http://127.0.0.1:{port}/x")


# --- status and redirects ------------------------------------------------------------


def test_404_is_http_status(http_server: _Server) -> None:
    error = _fails(InvalidArgument, "URL_HTTP_STATUS", _url(http_server, "/missing"))
    assert "404" in error.message


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_chain_within_limit(http_server: _Server, code: int) -> None:
    limits = FetchLimits(timeout_s=3.0, allow_private=True, max_redirects=3)
    assert fetch_url(_url(http_server, f"/redirect/3?code={code}"), limits) == PAYLOAD
    assert [path for path, _ in http_server.requests] == [f"/redirect/{n}?code={code}" for n in (3, 2, 1, 0)]


def test_redirect_chain_over_limit(http_server: _Server) -> None:
    limits = FetchLimits(timeout_s=3.0, allow_private=True, max_redirects=2)
    _fails(InvalidArgument, "URL_TOO_MANY_REDIRECTS", _url(http_server, "/redirect/3"), limits)
    assert len(http_server.requests) == 3  # never asked for the hop past the limit


def test_redirect_to_metadata_refused_even_with_allow_private(http_server: _Server) -> None:
    error = _fails(InvalidArgument, "URL_ADDRESS_REFUSED", _url(http_server, "/to-metadata"))
    assert "169.254.169.254" in error.message


def test_redirect_to_other_scheme_refused(http_server: _Server) -> None:
    _fails(InvalidArgument, "URL_SCHEME", _url(http_server, "/to-ftp"))


def test_redirect_without_location(http_server: _Server) -> None:
    _fails(InvalidArgument, "URL_HTTP_STATUS", _url(http_server, "/no-location"))


# --- size ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/big-length", "/chunked", "/endless"])
def test_body_over_max_bytes(http_server: _Server, path: str) -> None:
    limits = FetchLimits(timeout_s=3.0, allow_private=True, max_bytes=500)
    _fails(ResourceExhausted, "URL_TOO_LARGE", _url(http_server, path), limits)


def test_truncated_body_is_unreachable(http_server: _Server) -> None:
    _fails(InvalidArgument, "URL_UNREACHABLE", _url(http_server, "/truncated"))


# --- deadline ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/stall", "/trickle"])
def test_stalling_server_hits_deadline(http_server: _Server, path: str) -> None:
    started = time.monotonic()
    _fails(DeadlineExceeded, "URL_TIMEOUT", _url(http_server, path), FetchLimits(timeout_s=0.5, allow_private=True))
    assert 0.4 < time.monotonic() - started < 1.2


# --- https ---------------------------------------------------------------------------


@pytest.fixture
def https_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_Server, list[str]]]:
    """A TLS server with a self-signed certificate for "localhost", trusted via SSL_CERT_FILE."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    fetch._tls_context.cache_clear()
    try:
        for server in _serve(context):
            yield server, names
    finally:
        fetch._tls_context.cache_clear()


def test_https_verifies_the_url_host_while_connecting_to_the_checked_address(
    https_server: tuple[_Server, list[str]],
) -> None:
    server, names = https_server
    assert fetch_url(_url(server, "/image", "https", "localhost"), OPEN) == PAYLOAD
    assert names == ["localhost"]  # SNI is the URL's host name, not the address dialled


def test_https_certificate_name_mismatch_is_unreachable(https_server: tuple[_Server, list[str]]) -> None:
    server, _ = https_server
    error = _fails(InvalidArgument, "URL_UNREACHABLE", _url(server, "/image", "https", "127.0.0.1"))
    assert "certificate" in error.message.lower()
