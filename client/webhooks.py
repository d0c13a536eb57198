"""Webhook signatures: how Lookalike signs the results it POSTs, and how a receiver checks them.

Each POST carries `X-Lookalike-Timestamp` (unix seconds) and `X-Lookalike-Signature:
sha256=HEX`, the HMAC-SHA256 of `timestamp + "." + body` under the server's webhook
secret (`lookalike webhooks secret`). A receiver recomputes it over the raw body
bytes, compares in constant time, and refuses timestamps outside a tolerance so a
captured request cannot be replayed later; a retried delivery is signed afresh.
The body is a `CheckRecord` as protobuf JSON (`parse_body` turns it back into one).

    from lookalike.client.webhooks import verify, SignatureError

    try:
        verify(secret, headers["X-Lookalike-Timestamp"], body, headers["X-Lookalike-Signature"])
    except SignatureError:
        return 401

`verify` returns None and raises on a bad signature, so forgetting to look at its result
can never let a forged request through; `is_valid` is the same test answering True or False.

Standard library and protobuf only, like the rest of the thin client.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from google.protobuf import json_format

from lookalike.client.lookalike_pb import lookalike_pb2 as pb

TIMESTAMP_HEADER = "X-Lookalike-Timestamp"
SIGNATURE_HEADER = "X-Lookalike-Signature"
CHECK_ID_HEADER = "X-Lookalike-Check-Id"
SCHEME = "sha256"
DEFAULT_TOLERANCE = 300.0
"""Seconds a signed request stays acceptable, either side of the receiver's clock."""


class SignatureError(ValueError):
    """The request was not signed with this secret, or was signed too long ago (a replay)."""


def sign(secret: str | bytes, timestamp: str | int, body: bytes) -> str:
    """The `X-Lookalike-Signature` value for `body` sent at `timestamp`."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def verify(
    secret: str | bytes,
    timestamp: str | int,
    body: bytes,
    signature: str,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise `SignatureError` unless `signature` signs `body` at `timestamp`, within `tolerance` seconds of now."""
    try:
        sent = int(str(timestamp).strip())
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not unix seconds: {str(timestamp)[:40]!r}") from None
    now = time.time() if now is None else now
    if abs(now - sent) > tolerance:
        raise SignatureError(
            f"signed {now - sent:+.0f} s from now, outside the {tolerance:g} s tolerance: a replay, or a clock off"
        )
    expected = sign(secret, str(timestamp).strip(), body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise SignatureError("signature does not match: another secret, or the body was changed")


def is_valid(
    secret: str | bytes,
    timestamp: str | int,
    body: bytes,
    signature: str,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """`verify` as a yes or no: True when `signature` signs `body` at `timestamp`, within `tolerance` of now."""
    try:
        verify(secret, timestamp, body, signature, tolerance, now)
    except SignatureError:
        return False
    return True


def parse_body(body: bytes) -> pb.CheckRecord:
    """A webhook body as the `CheckRecord` it encodes (unknown fields from newer servers are ignored)."""
    return json_format.Parse(body, pb.CheckRecord(), ignore_unknown_fields=True)
