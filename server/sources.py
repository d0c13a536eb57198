"""Image bytes from what a request carries: raw bytes, base64 text, or a URL to fetch."""

from __future__ import annotations

import base64
import binascii
import re

from lookalike.client.errors import InvalidArgument, ResourceExhausted
from lookalike.server.config import ServerConfig
from lookalike.server.fetch import FetchLimits, fetch_url

_URL_SAFE = str.maketrans("-_", "+/")
_DATA_URI = re.compile(r"^data:[\w/+.-]*(;[\w=-]+)*;base64,", re.I)


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Standard or URL-safe base64, whitespace and a `data:` prefix tolerated."""
    body = _DATA_URI.sub("", text.strip(), count=1)
    body = "".join(body.split())
    if len(body) * 3 // 4 > max_bytes:
        raise ResourceExhausted(f"base64 image decodes to more than {max_bytes:,} bytes", "IMAGE_TOO_LARGE")
    body = body.translate(_URL_SAFE) + "=" * (-len(body) % 4)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidArgument(f"image.base64 is not valid base64 ({error})", "BASE64_INVALID") from None


def image_bytes(kind: str | None, value: bytes | str, config: ServerConfig) -> bytes:
    """The bytes of an image source; `kind` is "data", "base64" or "url"."""
    if kind == "data":
        assert isinstance(value, bytes)
        return value
    if kind == "base64":
        assert isinstance(value, str)
        return decode_base64(value, config.max_request_bytes)
    if kind == "url":
        assert isinstance(value, str)
        limits = FetchLimits(
            timeout_s=config.url_timeout,
            max_bytes=config.url_max_bytes,
            max_redirects=config.url_max_redirects,
            allow_private=config.allow_private_urls,
        )
        return fetch_url(value, limits)
    raise InvalidArgument("image is missing: set image.data, image.base64 or image.url", "IMAGE_MISSING")
