"""Fetch an image over http(s) on a caller's behalf, without becoming an SSRF proxy.

A client can ask the server to fetch any URL, so every hop's host is resolved
and checked (`check_address`) before connecting, and the connection goes to the
address that was checked rather than to the name, so a DNS answer that changes
between check and connect (rebinding) cannot redirect us. Redirects are
followed by hand so each one gets the same check. One deadline covers DNS,
connect, TLS and every read across all hops; bodies are read in bounded chunks
so a huge or endless response costs at most `max_bytes + 1` bytes.

Standard library only: http.client, socket, ssl, ipaddress, urllib.parse.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import math
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

from lookalike.client.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["FetchLimits", "check_address", "check_url", "fetch_url", "post"]

USER_AGENT = "lookalike/1"
_HEADERS = {"User-Agent": USER_AGENT, "Accept": "image/*, */*;q=0.5", "Connection": "close"}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1 << 20  # bounds each read's buffer whatever max_bytes is
_PRIVATE_HINT = "the server refuses private addresses unless started with --allow-private-urls"
# Cloud instance-metadata endpoints hand out credentials: refused even with allow_private.
_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_METADATA_WHAT = "the cloud metadata address"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # embeds an IPv4 address in the low 32 bits
# Keep every printable ASCII character; percent-encode the rest (non-ASCII paths).
_SAFE = "".join(chr(c) for c in range(33, 127))
# getaddrinfo has no timeout of its own; running it here lets the deadline cover DNS.
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lookalike-dns")

Addr = tuple[socket.AddressFamily, Any]  # (family, sockaddr) as getaddrinfo gives them
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one fetch; the defaults suit an image-upload path."""

    timeout_s: float = 10.0  # whole fetch, connect + read, across redirects
    max_bytes: int = 32 * 1024 * 1024
    max_redirects: int = 3
    allow_private: bool = False  # allow loopback/private/link-local targets (tests serve from loopback)


def fetch_url(url: str, limits: FetchLimits) -> bytes:
    """GET `url` and return the body, following up to `limits.max_redirects` redirects.

    Raises InvalidArgument (bad URL, refused address, non-2xx status, too many
    redirects, unreachable host), ResourceExhausted (body over max_bytes) or
    DeadlineExceeded (timeout_s elapsed), each with an UPPER_SNAKE reason.
    """
    deadline = time.monotonic() + limits.timeout_s
    try:
        return _fetch(url, limits, deadline)
    except TimeoutError:
        raise DeadlineExceeded(
            f"fetching {_short(url)} took longer than {limits.timeout_s:g} s; "
            "serve the image faster or pass the bytes directly",
            "URL_TIMEOUT",
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise InvalidArgument(
            f"could not fetch {_short(url)}: {exc or type(exc).__name__}; "
            "check that the host is up and serves http(s) with a valid certificate",
            "URL_UNREACHABLE",
        ) from exc


def check_address(host: str, port: int, allow_private: bool, timeout_s: float | None = None) -> str:
    """Resolve `host` and return the address to connect to, refusing unsafe targets.

    Refuses when ANY resolved address is loopback, private, link-local,
    multicast, reserved, unspecified or otherwise not globally routable (unless
    allow_private), and always when it is a cloud metadata address: one bad
    answer among good ones is how round-robin rebinding gets in.
    """
    deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
    return str(ipaddress.ip_address(_resolve_checked(host, port, allow_private, deadline)[0][1][0]))


def _fetch(url: str, limits: FetchLimits, deadline: float) -> bytes:
    """The redirect loop: one pinned connection per hop, each hop checked afresh."""
    for _ in range(limits.max_redirects + 1):
        scheme, host, port, target = _parse(url)
        addrs = _resolve_checked(host, port, limits.allow_private, deadline)
        conn = _PinnedConnection(host, port, addrs, deadline, _tls_context() if scheme == "https" else None)
        response: http.client.HTTPResponse | None = None
        try:
            conn.request("GET", target, headers=_HEADERS)
            response = conn.getresponse()
            if response.status in _REDIRECTS:
                location = response.getheader("Location", "").strip()
                if not location:
                    raise InvalidArgument(
                        f"{_short(url)} answered HTTP {response.status} without a Location header; "
                        "give the final image URL",
                        "URL_HTTP_STATUS",
                    )
                url = urljoin(url, location)
                continue
            if not 200 <= response.status < 300:
                raise InvalidArgument(
                    f"{_short(url)} answered HTTP {response.status} {response.reason}; "
                    "the URL must serve the image with a 2xx status",
                    "URL_HTTP_STATUS",
                )
            return _read_body(response, url, limits.max_bytes)
        finally:
            if response is not None:
                response.close()
            conn.close()
    raise InvalidArgument(
        f"URL redirected more than {limits.max_redirects} times; give the final image URL",
        "URL_TOO_MANY_REDIRECTS",
    )


def _parse(url: str) -> tuple[str, str, int, str]:
    """Split an absolute http(s) URL into (scheme, ASCII host, port, request target)."""
    if not url or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidArgument(
            f"URL {_short(url)!r} is empty or contains spaces or control characters; percent-encode them",
            "URL_INVALID",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise InvalidArgument(f"URL {_short(url)!r} has a malformed host or port", "URL_INVALID") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidArgument(f"URL {_short(url)!r} is not absolute; use http://host/path", "URL_INVALID")
    if scheme not in ("http", "https"):
        raise InvalidArgument(
            f"URL scheme {scheme!r} is not supported; only http and https URLs can be fetched", "URL_SCHEME"
        )
    if not host:
        raise InvalidArgument(f"URL {_short(url)!r} has no host; use {scheme}://host/path", "URL_INVALID")
    target = quote(parts.path or "/", safe=_SAFE) + (f"?{quote(parts.query, safe=_SAFE)}" if parts.query else "")
    return scheme, host, port or (443 if scheme == "https" else 80), target


def _resolve_checked(host: str, port: int, allow_private: bool, deadline: float) -> list[Addr]:
    """getaddrinfo within the deadline, then refuse unless every answer is acceptable."""
    future = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=None if deadline == math.inf else _remaining(deadline))
    except TimeoutError:
        future.cancel()
        raise
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidArgument(
            f"URL host {host} could not be resolved ({exc}); check the host name", "URL_UNREACHABLE"
        ) from None
    addrs: list[Addr] = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    if not addrs:
        raise InvalidArgument(f"URL host {host} resolved to no address; check the host name", "URL_UNREACHABLE")
    for _, sockaddr in addrs:
        ip = ipaddress.ip_address(sockaddr[0])
        what = _refusal(ip, allow_private)
        if what is not None:
            shown = "" if str(ip) == host else f" ({ip})"
            hint = "it is always refused" if what == _METADATA_WHAT else _PRIVATE_HINT
            raise InvalidArgument(f"URL host {host} resolves to {what}{shown}; {hint}", "URL_ADDRESS_REFUSED")
    return addrs


def _refusal(ip: IPAddress, allow_private: bool) -> str | None:
    """What makes `ip` unfit to fetch from ("a loopback address", ...), or None if it is fine."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).partition("%")[0])
        if ip in _METADATA:
            return _METADATA_WHAT
        # An IPv4 address wrapped in IPv6 reaches the IPv4 host: judge that host.
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _METADATA:
        return _METADATA_WHAT
    if allow_private:
        return None
    for attr, what in (
        ("is_loopback", "a loopback address"),
        ("is_unspecified", "an unspecified address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, attr):
            return what
    return None if ip.is_global else "a non-public address"


def _remaining(deadline: float) -> float:
    """Seconds left before `deadline`; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("fetch deadline passed")
    return left


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every read waits only until the fetch deadline.

    A per-operation timeout alone would let a server trickle one byte per
    timeout forever (headers included, which http.client reads internally).
    """

    deadline: float = math.inf

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(_remaining(self.deadline))
        return super().recv_into(buffer, nbytes, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS counterpart of `_DeadlineSocket`, installed as the context's socket class."""

    deadline: float = math.inf

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        self.settimeout(_remaining(self.deadline))
        return super().recv_into(buffer, nbytes, flags)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Default verification (system CAs, hostname check); built once, since loading CAs is slow."""
    context = ssl.create_default_context()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to `host` (Host header, SNI, certificate name) over a socket to checked addresses."""

    def __init__(self, host: str, port: int, addrs: list[Addr], deadline: float, tls: ssl.SSLContext | None) -> None:
        super().__init__(host, port)
        self.default_port = 443 if tls is not None else 80  # keeps ":443" out of the Host header
        self._addrs = addrs
        self._deadline = deadline
        self._tls = tls

    def connect(self) -> None:
        """Try each checked address in order; never resolve `host` again."""
        error: OSError = OSError(f"no address to connect to for {self.host}")
        for family, sockaddr in self._addrs:
            sock = _DeadlineSocket(family, socket.SOCK_STREAM)
            sock.deadline = self._deadline
            try:
                sock.settimeout(_remaining(self._deadline))
                sock.connect(sockaddr)
                if self._tls is None:
                    self.sock = sock
                    return
                tls = self._tls.wrap_socket(sock, server_hostname=self.host)
            except OSError as exc:
                sock.close()
                if isinstance(exc, TimeoutError):
                    raise
                error = exc
                continue
            if isinstance(tls, _DeadlineSSLSocket):
                tls.deadline = self._deadline
            self.sock = tls
            return
        raise error


def _read_body(response: http.client.HTTPResponse, url: str, max_bytes: int) -> bytes:
    """Read at most max_bytes + 1 bytes: refuse an oversized body before or while reading it."""
    expected = response.length  # None when chunked or close-delimited
    if expected is not None and expected > max_bytes:
        raise ResourceExhausted(
            f"{_short(url)} declares {expected} bytes, over the {max_bytes}-byte limit; send a smaller image",
            "URL_TOO_LARGE",
        )
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        chunk = response.read1(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise ResourceExhausted(
            f"{_short(url)} sent more than the {max_bytes}-byte limit; send a smaller image", "URL_TOO_LARGE"
        )
    if expected is not None and total < expected:
        raise InvalidArgument(
            f"{_short(url)} closed the connection after {total} of {expected} bytes; retry or check the server",
            "URL_UNREACHABLE",
        )
    return b"".join(chunks)


def _short(url: str, limit: int = 200) -> str:
    """A URL cut to a length fit for an error message."""
    return url if len(url) <= limit else url[: limit - 3] + "..."


# Sending: webhooks go out under the same address rules -------------------------------


def check_url(url: str, allow_private: bool, timeout_s: float) -> None:
    """Refuse a URL we may not reach (bad form, scheme, or a refused address) before promising to use it."""
    _, host, port, _ = _parse(url)
    try:
        _resolve_checked(host, port, allow_private, time.monotonic() + timeout_s)
    except TimeoutError:
        raise DeadlineExceeded(f"resolving {host} took longer than {timeout_s:g} s", "URL_TIMEOUT") from None


def post(url: str, body: bytes, headers: dict[str, str], limits: FetchLimits) -> int:
    """POST `body` to `url` over a pinned, checked connection; returns the HTTP status. Redirects are not
    followed (a webhook receiver answers where it was told to be). Raises like `fetch_url`."""
    deadline = time.monotonic() + limits.timeout_s
    try:
        scheme, host, port, target = _parse(url)
        addrs = _resolve_checked(host, port, limits.allow_private, deadline)
        conn = _PinnedConnection(host, port, addrs, deadline, _tls_context() if scheme == "https" else None)
        try:
            conn.request(
                "POST", target, body=body, headers={"User-Agent": USER_AGENT, "Connection": "close", **headers}
            )
            response = conn.getresponse()
            try:
                response.read1(_CHUNK)  # a receiver's reply is not read beyond a bounded chunk
            finally:
                response.close()
            return int(response.status)
        finally:
            conn.close()
    except TimeoutError:
        raise DeadlineExceeded(
            f"posting to {_short(url)} took longer than {limits.timeout_s:g} s", "URL_TIMEOUT"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise InvalidArgument(
            f"could not post to {_short(url)}: {exc or type(exc).__name__}", "URL_UNREACHABLE"
        ) from exc
