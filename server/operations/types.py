"""Domain inputs several operations share: where an image comes from, and which page of a log to read."""

from __future__ import annotations

from dataclasses import dataclass

from lookalike.client.errors import InvalidArgument
from lookalike.server.config import ServerConfig
from lookalike.server.sources import image_bytes

PAGE_DEFAULT = 1000
PAGE_MAX = 10_000


@dataclass(frozen=True)
class ImageSource:
    """An image as a request carries it: `kind` "data" (bytes), "base64" or "url" (text); None when missing.

    The bytes are the transport's own object, passed on as they are (an image is never copied here)."""

    kind: str | None
    value: bytes | str = b""

    @property
    def url(self) -> str:
        return self.value if self.kind == "url" and isinstance(self.value, str) else ""

    def read(self, config: ServerConfig) -> bytes:
        """The image's bytes: as sent, decoded from base64, or fetched from the URL."""
        return image_bytes(self.kind, self.value, config)


@dataclass(frozen=True)
class PageRequest:
    """A page of a log kept oldest first (audit, feedback): on one list or all ("")."""

    list: str = ""
    since: float = 0.0
    """Unix seconds; 0: from the beginning."""
    limit: int = 0
    """Records per page; 0: PAGE_DEFAULT."""
    page_token: str = ""

    def size(self) -> int:
        if not 0 <= self.limit <= PAGE_MAX:
            raise InvalidArgument(f"limit must lie in [0, {PAGE_MAX}], got {self.limit}", "LIMIT_OUT_OF_RANGE")
        return self.limit or PAGE_DEFAULT
