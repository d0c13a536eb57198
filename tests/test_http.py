"""The HTTP/JSON API over real HTTP: a real server on a loopback port (gRPC beside it), real photos, the
real model; every route, its errors in the one JSON shape, and the same keys and limits as gRPC."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2
from PIL import Image, ImageOps
from starlette.routing import Route

from lookalike.client import LookalikeClient
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.server.app import create_server
from lookalike.server.config import ServerConfig
from lookalike.server.http.api import ENDPOINTS
from tests.conftest import ServerHandle, corpus_photos, distinct_photos, jpeg_bytes, start_server
from tests.test_access import Pki, pki  # noqa: F401 - the test CA and certificates, a fixture
from tests.test_listen import IN_USE, failed_serve


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
    assert created.json()["keypoints"] is True  # unset: kept
    assert [info["name"] for info in api.http.get("/v1/lists").json()["lists"]] == ["banned"]
    changed = api.http.patch("/v1/lists/banned", json={"rejectThreshold": 0.9, "keypoints": False})
    assert changed.json()["rejectThreshold"] == 0.9 and changed.json()["keypoints"] is False
    assert api.grpc.get_list("banned").reject_threshold == 0.9  # the same list gRPC sees
    assert api.http.get("/v1/lists/banned").json()["description"] == "removed"
    assert changed.json()["consistencyToken"] == str(int(created.json()["consistencyToken"]) + 1)
    after = {"pdq": "f" * 64, "after": changed.json()["consistencyToken"]}
    assert api.http.post("/v1/check:hashes", json=after).json()["decision"] == "ACCEPT"
    behind = error_of(api.http.post("/v1/check:hashes", json={**after, "after": "999"}))
    assert (behind["status"], behind["reason"]) == ("UNAVAILABLE", "REPLICA_BEHIND")
    deleted = api.http.delete("/v1/lists/banned")
    token = str(int(changed.json()["consistencyToken"]) + 1)
    assert deleted.json() == {"name": "banned", "entriesDeleted": "0", "consistencyToken": token}
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
    with Image.open(photo) as image:
        width, height = ImageOps.exif_transpose(image).size
    whole = {"kind": "whole", "box": {"x": 0, "y": 0, "width": width, "height": height}, "frame": 0}
    assert result["matches"][0]["evidence"]["embeddingView"] == result["matches"][0]["evidence"]["pdqView"] == whole
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


# Every path -------------------------------------------------------------------------------------


class _Pictures(BaseHTTPRequestHandler):
    """Serves the photo named in the path, for checks by URL."""

    folder: Path

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:
        data = (self.folder / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def picture_server() -> Iterator[str]:
    handler = type("Handler", (_Pictures,), {"folder": corpus_photos()[0].parent})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_entries_by_picture_url_base64_and_hashes_are_read_removed_and_confirmed(
    api: HttpServer, picture_server: str
) -> None:
    first, second, third = distinct_photos(3, seed=11)
    api.http.post("/v1/lists", json={"name": "banned"}).raise_for_status()
    by_url = api.http.post("/v1/lists/banned/entries", json={"image": {"url": f"{picture_server}/{first.name}"}})
    assert by_url.status_code == 200, by_url.text
    by_base64 = api.http.post(
        "/v1/lists/banned/entries", json={"image": {"base64": b64(second)}, "meta": {"case": "7"}, "id": "b64"}
    )
    assert by_base64.json()["id"] == "b64"
    again = api.http.post("/v1/lists/banned/entries", json={"image": {"base64": b64(second)}})
    assert again.json()["duplicate"] is True and again.json()["id"] == "b64"
    pdq = "a" * 64
    by_hash = api.http.post("/v1/lists/banned/entries", json={"pdq": pdq, "pdq_quality": 90, "meta": {"src": "x"}})
    assert by_hash.status_code == 200, by_hash.text
    assert by_hash.json()["hashes"]["pdq"] == pdq and by_hash.json()["hashes"]["pdqQuality"] == 90
    by_add_hash = api.http.post("/v1/lists/banned/entries:addHash", json={"md5": "0" * 32, "id": "digest"})
    assert by_add_hash.json()["id"] == "digest"

    entry = api.http.get("/v1/lists/banned/entries/b64").json()
    assert entry["meta"] == {"case": "7"} and entry["hashes"]["sha256"] == by_base64.json()["sha256"]
    assert api.grpc.get_entry("banned", "b64").meta == {"case": "7"}
    assert api.http.get("/v1/lists/banned").json()["entryCount"] == "4"
    confirmed = api.http.post("/v1/lists/banned/entries/b64:confirm")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["id"] == "b64"
    removed = api.http.delete("/v1/lists/banned/entries/b64")
    assert removed.json() == {"list": "banned", "id": "b64", "consistencyToken": removed.json()["consistencyToken"]}
    assert error_of(api.http.get("/v1/lists/banned/entries/b64"))["reason"] == "ENTRY_NOT_FOUND"
    bad = error_of(
        api.http.post("/v1/lists/banned/entries", files={"image": ("t.jpg", third.read_bytes())}, data={"colour": "x"})
    )
    assert bad["reason"] == "FORM_FIELD_UNKNOWN" and "meta.KEY" in bad["message"]


def test_checks_are_stored_read_judged_and_calibrated(api: HttpServer) -> None:
    photo, other = distinct_photos(2, seed=13)
    api.http.post("/v1/lists", json={"name": "banned"}).raise_for_status()
    api.http.post("/v1/lists/banned/entries", files={"image": ("p.jpg", photo.read_bytes())}, data={"id": "p"})
    checked = api.http.post(
        "/v1/check",
        files={"image": ("p.jpg", photo.read_bytes())},
        data={"lists": "banned", "request_id": "c1", "top_k": "2", "meta.user": "42"},
    )
    assert checked.status_code == 200, checked.text
    assert checked.json()["id"] == "c1" and checked.json()["request"]["requestId"] == "c1"
    assert checked.json()["meta"] == {"user": "42"}
    stored = api.http.get("/v1/checks/c1").json()
    assert stored["status"] == "CHECK_DONE" and stored["result"]["decision"] == "REJECT"
    assert api.http.get("/v1/checks/c1", params={"owner": ""}).json()["id"] == "c1"
    judged = api.http.post("/v1/checks/c1/feedback", json={"verdict": "FALSE_POSITIVE", "note": "a lookalike"})
    assert judged.status_code == 200, judged.text
    assert judged.json()["entryId"] == "p" and judged.json()["verdict"] == "FALSE_POSITIVE"
    assert [f["checkId"] for f in api.http.get("/v1/feedback", params={"list": "banned"}).json()["feedback"]] == ["c1"]
    advice = api.http.post("/v1/lists/banned:calibrate", json={"apply": True})
    assert advice.status_code == 200, advice.text
    assert advice.json()["feedbackSeen"] == "1" and advice.json()["info"]["name"] == "banned"
    assert api.grpc.get_list("banned").reject_threshold == advice.json()["reject"]["recommended"]
    deferred = api.http.post("/v1/check", json={"image": {"base64": b64(other)}, "defer": True, "request_id": "d1"})
    assert deferred.json()["status"] in ("CHECK_PENDING", "CHECK_DONE")
    by_hash = api.http.post("/v1/check:hashes", json={"pdq": api.grpc.get_entry("banned", "p").hashes.pdq})
    assert by_hash.json()["matches"][0]["id"] == "p"
    missing = error_of(api.http.get("/v1/checks/nope"))
    assert (missing["code"], missing["status"]) == (404, "NOT_FOUND")
    no_verdict = error_of(api.http.post("/v1/checks/c1/feedback", json={}))
    assert no_verdict["reason"] == "VERDICT_MISSING"


def test_keys_audit_and_the_webhook_secret(api: HttpServer) -> None:
    created = api.http.post("/v1/keys", json={"role": "admin", "name": "ops"}).json()
    secret = created["secret"]
    assert secret.startswith("lk_") and created["key"]["role"] == "admin"
    admin = {"Authorization": f"Bearer {secret}"}
    writer = api.http.post("/v1/keys", json={"role": "writer", "lists": ["banned"], "name": "w"}, headers=admin)
    assert writer.status_code == 200, writer.text
    keys = api.http.get("/v1/keys", headers=admin).json()["keys"]
    assert [k["id"] for k in keys] == ["k1", "k2"]
    revoked = api.http.post("/v1/keys/k2:revoke", headers=admin)
    assert revoked.status_code == 200 and "revoked" in revoked.json()
    audit = api.http.get("/v1/audit", params={"limit": 1}, headers=admin).json()
    assert [r["action"] for r in audit["records"]] == ["key.create"] and audit["nextPageToken"]
    rest = api.http.get("/v1/audit", params={"page_token": audit["nextPageToken"]}, headers=admin).json()
    assert [r["action"] for r in rest["records"]] == ["key.create", "key.revoke"]
    since = api.http.get("/v1/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=admin).json()
    assert since["records"] == []
    assert len(api.http.get("/v1/webhooks/secret", headers=admin).json()["secret"]) > 20
    wrong = error_of(api.http.get("/v1/audit", params={"since": "yesterday"}, headers=admin))
    assert wrong["code"] == 400 and "since" in wrong["message"]
    unknown = error_of(api.http.get("/v1/audit", params={"colour": "red"}, headers=admin))
    assert unknown["reason"] == "QUERY_PARAMETER_UNKNOWN" and "page_token" in unknown["message"]


def test_hash_files_are_imported_and_exported_in_each_format(api: HttpServer) -> None:
    api.http.post("/v1/lists", json={"name": "shared"}).raise_for_status()
    csv_file = "hash,quality,id,case\n" + f"{'1' * 64},90,one,a\nzz,80,bad,b\n{'2' * 64},70,two,\n"
    imported = api.http.post(
        "/v1/lists/shared/entries:import", files={"file": ("list.csv", csv_file.encode(), "text/csv")}
    )
    assert imported.status_code == 200, imported.text
    summary = imported.json()
    assert (summary["format"], summary["added"], summary["duplicates"], summary["failed"]) == ("pdq-csv", 2, 0, 1)
    assert summary["errors"] == [
        {"line": 3, "error": summary["errors"][0]["error"], "code": "INVALID_ARGUMENT", "reason": "PDQ_INVALID"}
    ]
    raw = api.http.post(
        "/v1/lists/shared/entries:import",
        content=f"{'3' * 64}\n{'1' * 64}\n".encode(),
        headers={"content-type": "text/plain"},
    )
    assert (raw.json()["format"], raw.json()["added"], raw.json()["duplicates"]) == ("pdq-hashes", 1, 1)
    jsonl = api.http.get("/v1/lists/shared/entries:export")
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [r["id"] for r in records[:2]] == ["one", "two"] and records[0]["meta"] == {"case": "a"}
    csv_export = api.http.get("/v1/lists/shared/entries:export", params={"format": "pdq-csv"}).text.splitlines()
    assert csv_export[0] == "hash,quality,id,case" and csv_export[1] == f"{'1' * 64},90,one,a"
    bare = api.http.get("/v1/lists/shared/entries:export", params={"format": "pdq-csv", "header": "false"}).text
    assert bare.splitlines()[0] == f"{'1' * 64},90"
    hashes = api.http.get("/v1/lists/shared/entries:export", params={"format": "pdq-hashes"}).text.split()
    assert hashes == ["1" * 64, "2" * 64, "3" * 64]
    again = api.http.post("/v1/lists/shared/entries:import", files={"file": ("x.jsonl", jsonl.content)})
    assert (again.json()["format"], again.json()["duplicates"]) == ("jsonl", 3)
    missing = error_of(api.http.get("/v1/lists/nothing/entries:export"))
    assert missing["code"] == 404  # refused before the stream starts
    unknown = error_of(api.http.get("/v1/lists/shared/entries:export", params={"format": "xml"}))
    assert unknown["reason"] == "FORMAT_UNKNOWN"


def test_an_export_streams_with_embeddings(api: HttpServer) -> None:
    photo = distinct_photos(1, seed=17)[0]
    api.http.post("/v1/lists", json={"name": "banned"}).raise_for_status()
    api.http.post("/v1/lists/banned/entries", files={"image": ("p.jpg", photo.read_bytes())}).raise_for_status()
    with api.http.stream("GET", "/v1/lists/banned/entries:export", params={"with_embeddings": "true"}) as streamed:
        assert streamed.headers.get("transfer-encoding") == "chunked"  # streamed, not sized up front
        (record,) = [json.loads(line) for line in streamed.iter_lines()]
    assert record["model"] and len(base64.b64decode(record["embedding"])) > 0


# The contract: proto annotations, the OpenAPI document, the routes served ------------------------------


def _http_rules() -> dict[str, tuple[str, str, str]]:
    """Each annotated gRPC method's (verb, path, body) from its google.api.http option."""
    rules = {}
    for method in pb.DESCRIPTOR.services_by_name["Lookalike"].methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        assert verb is not None
        rules[method.name] = (verb.upper(), getattr(rule, verb), rule.body)
    return rules


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_unary_method_is_annotated_with_the_path_and_verb_the_server_serves(api: HttpServer) -> None:
    rules = _http_rules()
    service = pb.DESCRIPTOR.services_by_name["Lookalike"]
    unary = {m.name for m in service.methods if not m.client_streaming and not m.server_streaming}
    assert set(rules) == unary  # streams are served as file uploads and downloads instead
    endpoints = {endpoint.rpc: endpoint for endpoint in ENDPOINTS}
    for name, (verb, path, body) in rules.items():
        endpoint = endpoints[name]
        assert (endpoint.verb, _shape(endpoint.path), endpoint.body or "") == (verb, _shape(path), body), name
        concrete = re.sub(r"\{[^}]*\}", "x", path)
        answered = api.http.request(verb, concrete, json={} if body else None)
        if answered.status_code >= 400:  # refused by the operation (no list x), never by the router
            assert error_of(answered)["reason"] not in ("PATH_NOT_FOUND", "METHOD_NOT_ALLOWED"), (name, answered.text)


def test_the_openapi_document_names_exactly_the_routes_served(api: HttpServer) -> None:
    served = api.http.get("/v1/openapi.json")
    assert served.status_code == 200
    spec = served.json()
    assert spec["openapi"].startswith("3.1")
    documented = {(path, verb.upper()) for path, operations in spec["paths"].items() for verb in operations}
    http = api.handle.running.http
    assert http is not None
    routes = {
        (route.path, method)
        for route in http.app.routes
        if isinstance(route, Route) and route.path.startswith("/v1/")  # the dashboard's pages are outside /v1
        for method in (route.methods or ()) - {"HEAD"}
    }
    assert documented == routes
    ids = [op["operationId"] for operations in spec["paths"].values() for op in operations.values()]
    assert len(ids) == len(set(ids))
    check = spec["paths"]["/v1/check"]["post"]
    assert set(check["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    reply = spec["components"]["schemas"]["CheckResponse"]["properties"]
    assert "suggestedActions" in reply and reply["decision"]["enum"] == [
        "DECISION_UNSPECIFIED",
        "ACCEPT",
        "REVIEW",
        "REJECT",
    ]
    assert spec["components"]["schemas"]["ListInfo"]["properties"]["entryCount"] == {
        "type": "string",
        "format": "int64",
    }
    assert spec["components"]["schemas"]["ListInfo"]["properties"]["created"]["format"] == "date-time"
    docs = api.http.get("/v1/docs")
    assert docs.headers["content-type"].startswith("text/html")
    assert "/v1/lists/{list}/entries:import" in docs.text and "<script" not in docs.text


# Access, limits, readiness, accounts -------------------------------------------------------------


def test_keys_and_roles_are_those_of_grpc(api: HttpServer) -> None:
    assert api.http.get("/v1/lists").status_code == 200  # no key exists: loopback needs none, as over gRPC
    admin = {"Authorization": "Bearer " + api.grpc.create_key("admin", name="ops").secret}
    api.http.post("/v1/lists", json={"name": "banned"}, headers=admin).raise_for_status()
    api.http.post("/v1/lists", json={"name": "other"}, headers=admin).raise_for_status()

    def key(**spec: Any) -> dict[str, str]:
        created = api.http.post("/v1/keys", json=spec, headers=admin)
        return {"Authorization": "Bearer " + created.json()["secret"]}

    checker = key(role="checker", name="uploads")
    writer = key(role="writer", lists=["banned"], name="w")

    missing = api.http.get("/v1/lists")
    assert error_of(missing)["reason"] == "API_KEY_MISSING" and missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert error_of(api.http.get("/v1/lists", headers={"Authorization": "Bearer lk_k1_wrong"}))["reason"] == (
        "API_KEY_INVALID"
    )
    assert error_of(api.http.get("/v1/lists", headers={"Authorization": "Basic abc"}))["reason"] == "API_KEY_MALFORMED"
    denied = api.http.post("/v1/lists", json={"name": "mine"}, headers=checker)
    assert (denied.status_code, error_of(denied)["reason"]) == (403, "ROLE_NOT_ALLOWED")
    assert error_of(api.http.get("/v1/keys", headers=writer))["reason"] == "ROLE_NOT_ALLOWED"
    elsewhere = api.http.post("/v1/lists/other/entries", json={"pdq": "a" * 64}, headers=writer)
    assert error_of(elsewhere)["reason"] == "LIST_NOT_ALLOWED"
    assert api.http.post("/v1/lists/banned/entries", json={"pdq": "a" * 64}, headers=writer).status_code == 200
    assert [info["name"] for info in api.http.get("/v1/lists", headers=writer).json()["lists"]] == ["banned"]
    api.http.post("/v1/keys/k3:revoke", headers=admin).raise_for_status()
    assert error_of(api.http.get("/v1/lists", headers=writer))["reason"] == "API_KEY_REVOKED"


def test_https_with_client_certificates(tmp_path: Path, pki: Pki) -> None:  # noqa: F811 - the fixture
    handle = start_server(
        tmp_path / "data",
        http_listen="127.0.0.1:0",
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    url = f"https://127.0.0.1:{handle.running.http_port}/v1/lists"
    try:
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        trusted.load_cert_chain(pki.client_cert, pki.client_key)
        assert httpx.get(url, verify=trusted).json() == {"lists": []}
        anonymous = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises(httpx.TransportError):
            httpx.get(url, verify=anonymous)
        rogue = ssl.create_default_context(cafile=str(pki.ca))
        rogue.load_cert_chain(pki.rogue_cert, pki.rogue_key)
        with pytest.raises(httpx.TransportError):
            httpx.get(url, verify=rogue)
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https:", "http:"))  # plain HTTP to the TLS port
    finally:
        handle.stop()


def test_a_body_past_the_request_limit_is_refused_with_413_before_it_is_read(tmp_path: Path) -> None:
    photo = max(corpus_photos()[:20], key=lambda p: p.stat().st_size)
    limit = photo.stat().st_size // 2
    handle, base = http_server(tmp_path / "data", max_request_bytes=limit)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            client.post("/v1/lists", json={"name": "banned"}).raise_for_status()
            upload = client.post("/v1/lists/banned/entries", files={"image": ("p.jpg", photo.read_bytes())})
            error = error_of(upload)
            assert (upload.status_code, error["status"], error["reason"]) == (
                413,
                "RESOURCE_EXHAUSTED",
                "REQUEST_TOO_LARGE",
            )
            as_json = client.post("/v1/check", json={"image": {"base64": b64(photo)}})
            assert as_json.status_code == 413

            def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
                data = photo.read_bytes()
                for start in range(0, len(data), 4096):
                    yield data[start : start + 4096]

            chunked = client.post("/v1/lists/banned/entries:import", content=chunks())
            assert chunked.status_code == 413
            assert client.get("/v1/lists/banned").json()["entryCount"] == "0"
    finally:
        handle.stop()


def test_http_and_grpc_calls_share_the_concurrency_limit(tmp_path: Path) -> None:
    handle, base = http_server(
        tmp_path / "data", max_concurrent_requests=2, threads=4, max_streams_per_key=2, metrics_listen="127.0.0.1:0"
    )
    secret = handle.client.create_key("admin", name="ops").secret
    release = threading.Event()

    def calls_in_flight() -> float:
        scrape = httpx.get(f"http://127.0.0.1:{handle.running.metrics_port}/metrics", timeout=10).text
        return float(re.search(r"^lookalike_requests_in_flight (\S+)$", scrape, re.MULTILINE)[1])

    def idle() -> Iterator[pb.CheckRequest]:
        release.wait(60)
        yield from ()

    # a channel of its own: a shared one may be backing off from an earlier test's server on the same port
    channel = grpc.insecure_channel(handle.address, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = pb_grpc.LookalikeStub(channel)
    metadata = [("authorization", f"Bearer {secret}")]
    try:
        with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {secret}"}) as client:
            assert client.get("/v1/lists").status_code == 200
            # in flight and idle; wait_for_ready: a stream started while the channel still connects waits for it
            streams = [
                stub.CheckStream(idle(), metadata=metadata, timeout=60, wait_for_ready=True) for _ in range(2)
            ]
            # both streams admitted before the HTTP call: one sent while a stream still arrives takes its slot
            deadline = time.monotonic() + 30
            while calls_in_flight() < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            while (refused := client.get("/v1/lists")).status_code != 429 and time.monotonic() < deadline:
                ended = [stream for stream in streams if stream.done()]
                assert not ended, f"an idle stream ended before it was released: {ended[0].code()} {ended[0].details()}"
                time.sleep(0.05)
            error = error_of(refused)
            assert (refused.status_code, error["reason"]) == (429, "TOO_MANY_REQUESTS")
            assert refused.headers["retry-after"] == "1"
            release.set()
            for stream in streams:
                assert list(stream) == []
            assert client.get("/v1/lists").status_code == 200
    finally:
        release.set()
        channel.close()
        handle.stop()


def test_calls_before_the_indexes_are_loaded_get_503_not_ready(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seen: list[httpx.Response] = []
    config = ServerConfig(
        listen="127.0.0.1:0", data=tmp_path / "data", map_size=1 << 30, workers=0, http_listen=f"127.0.0.1:{port}"
    )
    running = create_server(config, on_listening=lambda _: seen.append(httpx.get(f"http://127.0.0.1:{port}/v1/lists")))
    try:
        (early,) = seen
        assert (early.status_code, error_of(early)["reason"]) == (503, "NOT_READY")
        assert httpx.get(f"http://127.0.0.1:{port}/v1/lists").status_code == 200
    finally:
        running.stop(grace=1)


def test_http_calls_are_logged_and_counted_like_grpc_calls(api: HttpServer, caplog: pytest.LogCaptureFixture) -> None:
    photo = distinct_photos(1, seed=19)[0]
    api.http.post("/v1/lists", json={"name": "banned"}).raise_for_status()
    api.http.post("/v1/lists/banned/entries", files={"image": ("p.jpg", photo.read_bytes())}).raise_for_status()
    with caplog.at_level(logging.INFO, logger="lookalike.requests"):
        api.http.post(
            "/v1/check", json={"image": {"base64": b64(photo)}, "lists": ["banned"]}, headers={"X-Request-Id": "abc"}
        )
        api.http.get("/v1/lists/missing")
    lines = [record.getMessage() for record in caplog.records if record.name == "lookalike.requests"]
    assert re.fullmatch(r"request id=abc method=Check lists=banned items=1 decision=reject code=OK ms=[\d.]+", lines[0])
    assert re.fullmatch(
        r"request id=\w+ method=GetList lists=missing items=1 decision=- code=NOT_FOUND ms=[\d.]+", lines[1]
    )
    registry = api.handle.running.service.metrics.registry
    assert registry.get_sample_value("lookalike_requests_total", {"method": "Check", "code": "OK"}) == 1
    assert registry.get_sample_value("lookalike_requests_total", {"method": "GetList", "code": "NOT_FOUND"}) == 1
    assert registry.get_sample_value("lookalike_check_decisions_total", {"decision": "reject"}) == 1
    assert registry.get_sample_value("lookalike_requests_in_flight") == 0


def test_a_taken_http_port_ends_serve_with_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        output = failed_serve(tmp_path / "data", "--listen", "127.0.0.1:0", "--http-listen", address)
    (error,) = [line for line in output.splitlines() if " ERROR " in line]  # one line (beside the keyless warning)
    assert error.endswith(f"cannot start: cannot listen on {address}: {IN_USE.format(flag='--http-listen')}")


# gRPC and HTTP agree --------------------------------------------------------------------------------


def test_grpc_and_http_give_the_same_decision_and_scores_for_the_same_picture(api: HttpServer) -> None:
    listed = distinct_photos(3, seed=29)
    unrelated = distinct_photos(1, seed=31, exclude={p.name for p in listed})[0]
    api.grpc.create_list("banned")
    for photo in listed:
        api.grpc.add("banned", photo.read_bytes())
    with Image.open(listed[0]) as original:
        smaller = jpeg_bytes(original.resize((original.width // 2, original.height // 2)), quality=70)
        cropped = jpeg_bytes(original.crop((0, 0, original.width * 9 // 10, original.height * 9 // 10)))
    pictures = [listed[0].read_bytes(), listed[1].read_bytes(), smaller, cropped, unrelated.read_bytes()]
    decisions = []
    for data in pictures:
        over_grpc = api.grpc.check(data, ["banned"], top_k=3)
        over_http = api.http.post(
            "/v1/check", files={"image": ("p.jpg", data)}, data={"lists": "banned", "top_k": "3"}
        ).json()
        assert over_http["decision"] == over_grpc.decision.upper()
        assert over_http["sha256"] == over_grpc.sha256
        assert [(m["id"], m["score"]) for m in over_http["matches"]] == [
            (m.id, pytest.approx(m.score, abs=1e-6)) for m in over_grpc.matches
        ]
        as_json = api.http.post(
            "/v1/check", json={"image": {"base64": base64.b64encode(data).decode()}, "lists": ["banned"], "top_k": 3}
        )
        assert [m["score"] for m in as_json.json()["matches"]] == pytest.approx(
            [m.score for m in over_grpc.matches], abs=1e-6
        )
        decisions.append(over_grpc.decision)
    assert decisions[0] == "reject" and decisions[-1] == "accept"  # the comparison spans both outcomes


def test_while_no_key_exists_pages_of_other_sites_cannot_call_in_a_local_programs_place(api: HttpServer) -> None:
    """Keyless loopback calls are for this machine's programs: a web page from elsewhere, open in a local
    browser, is refused (by the Origin and Sec-Fetch-Site its browser sends, and by a host name that is not
    loopback, as a DNS-rebinding page would use); the same request from a script goes through."""
    base = str(api.http.base_url).rstrip("/")
    port = base.rsplit(":", 1)[1]
    form = {"name": "from-a-page"}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
    ):
        refused = api.http.post("/v1/lists", json=form, headers=headers)
        assert refused.status_code == 403, headers
        assert error_of(refused)["reason"] == "CROSS_SITE_REQUEST"
        page = api.http.get("/lists", headers={"Host": headers["Host"]} if "Host" in headers else {})
        assert page.status_code == (403 if "Host" in headers else 200), headers
    assert api.http.get("/v1/lists").json() == {"lists": []}
    same_page = {"Origin": base, "Sec-Fetch-Site": "same-origin"}  # the dashboard's own scripts
    assert api.http.post("/v1/lists", json=form, headers=same_page).status_code == 200
    assert api.http.get("/lists", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link followed
