"""Schemathesis against the OpenAPI document, over real HTTP to a real server: for inputs generated from the
document, no 5xx, and every reply matches the schema, status and media type the document gives it.

Bounded for CI: a few derandomized examples per operation (the document has about 25), on one server.
Generated inputs create lists and keys as they please, so the server is this module's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lookalike.server.http.openapi import document
from tests.conftest import start_server

EXAMPLES_PER_OPERATION = 8

schema = schemathesis.openapi.from_dict(document())


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data: Path = tmp_path_factory.mktemp("schema") / "data"
    # generated image URLs and callbacks must fail fast: no network, and private addresses refused
    handle = start_server(data, http_listen="127.0.0.1:0", allow_private_urls=False, url_timeout=1.0)
    yield f"http://127.0.0.1:{handle.running.http_port}"
    handle.stop()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_reply_matches_the_document_and_none_is_a_server_error(case: schemathesis.Case, base_url: str) -> None:
    case.call_and_validate(
        base_url=base_url,
        checks=[not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance],
    )
