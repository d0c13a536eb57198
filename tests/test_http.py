"""The HTTP/JSON API over real HTTP: a real server on a loopback port (gRPC beside it), real photos, the
real model; every route, its errors in the one JSON shape, and the same keys and limits as gRPC."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lookalike.client import LookalikeClient
from tests.conftest import ServerHandle, corpus_photos, distinct_photos, start_server


@dataclass
class HttpServer:
    """A server with its HTTP API on a free loopback port, and an HTTP client for it."""

    handle: ServerHandle
    http: httpx.Client

    @property
    def grpc(self) -> LookalikeClient:
        return self.handle.client


def http_server(data: Path, **overrides: object) -> tuple[ServerHandle, str]:
    handle = start_server(data, **({"http_listen": "127.0.0.1:0"} | overrides))
    return handle, f"http://127.0.0.1:{handle.running.http_port}"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[HttpServer]:
    handle, base = http_server(tmp_path / "data")
    with httpx.Client(base_url=base, timeout=120) as client:
        yield HttpServer(handle, client)
    handle.stop()


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error body, checked to be Google's JSON error shape with the status it came with."""
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "status", "message", "reason", "details"}
    assert error["code"] == response.status_code
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": error["reason"], "domain": "lookalike.v1"}
    ]
    return dict(error)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_lists_are_created_read_changed_and_deleted(api: HttpServer) -> None:
    created = api.http.post("/v1/lists", json={"name": "banned", "description": "removed", "review_threshold": 0.6})
    assert created.status_code == 200, created.text
    assert created.json()["name"] == "banned" and created.json()["reviewThreshold"] == 0.6
    assert created.json()["entryCount"] == "0"  # int64 as text, protobuf's JSON mapping
    assert [info["name"] for info in api.http.get("/v1/lists").json()["lists"]] == ["banned"]
    changed = api.http.patch("/v1/lists/banned", json={"rejectThreshold": 0.9})
    assert changed.json()["rejectThreshold"] == 0.9
    assert api.grpc.get_list("banned").reject_threshold == 0.9  # the same list gRPC sees
    assert api.http.get("/v1/lists/banned").json()["description"] == "removed"
    deleted = api.http.delete("/v1/lists/banned")
    assert deleted.json() == {"name": "banned", "entriesDeleted": "0"}
    missing = error_of(api.http.get("/v1/lists/banned"))
    assert (missing["code"], missing["status"], missing["reason"]) == (404, "NOT_FOUND", "LIST_NOT_FOUND")


def test_a_picture_added_by_multipart_is_found_by_a_json_check(api: HttpServer) -> None:
    photo, other = distinct_photos(2, seed=7)
    api.http.post("/v1/lists", json={"name": "banned"}).raise_for_status()
    added = api.http.post(
        "/v1/lists/banned/entries",
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"meta.case": "1234", "id": "first"},
    )
    assert added.status_code == 200, added.text
    assert added.json()["id"] == "first" and added.json()["duplicate"] is False
    checked = api.http.post("/v1/check", json={"image": {"base64": b64(photo)}, "lists": ["banned"]})
    assert checked.status_code == 200, checked.text
    result = checked.json()
    assert result["decision"] == "REJECT"
    assert result["suggestedActions"] == {"reject": True, "review": False}
    assert result["matches"][0]["id"] == "first" and result["matches"][0]["meta"] == {"case": "1234"}
    clean = api.http.post("/v1/check", files={"image": ("o.jpg", other.read_bytes())}, data={"lists": "banned"})
    assert clean.json()["decision"] == "ACCEPT" and clean.json()["matches"] == []


def test_bad_input_is_a_400_saying_what_to_fix(api: HttpServer) -> None:
    broken = error_of(api.http.post("/v1/lists", content=b"{bad", headers={"content-type": "application/json"}))
    assert (broken["code"], broken["reason"]) == (400, "JSON_MALFORMED")
    wrong_type = error_of(api.http.post("/v1/lists", content=b"name=x", headers={"content-type": "text/plain"}))
    assert wrong_type["reason"] == "CONTENT_TYPE_UNSUPPORTED" and "application/json" in wrong_type["message"]
    unknown = error_of(api.http.post("/v1/lists", json={"name": "x", "colour": "red"}))
    assert unknown["reason"] == "REQUEST_INVALID" and "colour" in unknown["message"]
    typed = error_of(api.http.post("/v1/lists", json={"name": 5}))
    assert typed["code"] == 400 and "name" in typed["message"]
    not_object = error_of(api.http.post("/v1/lists", json=[1, 2]))
    assert not_object["reason"] == "JSON_NOT_OBJECT"
    no_path = error_of(api.http.get("/v1/nothing-here"))
    assert (no_path["code"], no_path["reason"]) == (404, "PATH_NOT_FOUND")
    wrong_verb = api.http.put("/v1/lists")
    assert error_of(wrong_verb)["reason"] == "METHOD_NOT_ALLOWED" and wrong_verb.status_code == 405
