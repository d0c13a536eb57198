"""How a failure reaches a caller, whatever the transport.

Domain errors (`lookalike.client.errors`) carry their status name and reason and go out
as they are, their message cut short (`bounded`); anything else is a bug, logged here under an
incident id and reported as INTERNAL without its details. Each transport then maps the
error's class to its own status in one table (gRPC: `api.GRPC_CODES`), so reasons are
written once, where the error is raised.
"""

from __future__ import annotations

import logging
import uuid

from lookalike.client.errors import Internal, LookalikeError

log = logging.getLogger(__name__)

MESSAGE_MAX_BYTES = 1000
"""Messages may quote what the caller sent; gRPC drops a call whose trailers pass 16 KiB (the
message travels twice, percent-encoded and in the status details), so longer ones are cut."""


def bounded(message: str) -> str:
    encoded = message.encode()
    if len(encoded) <= MESSAGE_MAX_BYTES:
        return message
    return encoded[: MESSAGE_MAX_BYTES - 3].decode(errors="ignore") + "..."


def reported(error: Exception, what: str) -> LookalikeError:
    """The error as the caller may see it (render its message through `bounded`); an unexpected one
    is logged first, saying what failed."""
    if isinstance(error, LookalikeError):
        return error
    incident = uuid.uuid4().hex[:12]
    log.error("%s failed (incident %s)", what, incident, exc_info=error)
    return Internal(f"internal error (incident {incident}); see the server log", "INTERNAL")
