"""The web dashboard's pages, at / on the HTTP server (issue #17's dashboard is built here).

`routes(context)` gives the pages; they call the same operations as the API through `context`,
authenticate with `lookalike.server.http.auth.caller` (a session's key passed as `authorization`), and
leave /v1 to the API.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from lookalike.server.http.context import HttpContext


def routes(context: HttpContext) -> list[BaseRoute]:
    """No pages yet: everything outside /v1 answers 404."""
    return []
