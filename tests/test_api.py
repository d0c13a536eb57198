"""The gRPC API end to end: lists, entries, inputs, and a clear status code for every bad input."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from lookalike.client import AlreadyExists, Base64, InvalidArgument, LookalikeError, NotFound, ResourceExhausted, Url
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from tests.conftest import ServerHandle, corpus_photos, jpeg_bytes


@pytest.fixture
def photo() -> bytes:
    return corpus_photos()[0].read_bytes()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server serving files from tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_health_reports_serving_and_reflection_lists_the_service(lookalike: ServerHandle) -> None:
    channel = grpc.insecure_channel(lookalike.address)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="lookalike.v1.Lookalike")).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {service.name for reply in replies for service in reply.list_services_response.service}
    assert "lookalike.v1.Lookalike" in names
    channel.close()


def test_list_lifecycle(lookalike: ServerHandle) -> None:
    client = lookalike.client
    created = client.create_list("copyright", description="takedowns", review_threshold=0.4, reject_threshold=0.9)
    assert (created.name, created.description, created.entry_count) == ("copyright", "takedowns", 0)
    assert (created.review_threshold, created.reject_threshold) == (0.4, 0.9)
    assert created.model == "sscd-distilled"
    client.create_list("other", model="sscd")
    assert [info.name for info in client.lists()] == ["copyright", "other"]
    assert client.get_list("other").model == "sscd"
    updated = client.update_list("copyright", review_threshold=0.5, description="new")
    assert (updated.review_threshold, updated.reject_threshold, updated.description) == (0.5, 0.9, "new")
    assert client.delete_list("copyright") == 0
    with pytest.raises(NotFound):
        client.get_list("copyright")
    assert [info.name for info in client.lists()] == ["other"]


@pytest.mark.parametrize("name", ["Upper", "has space", "x" * 65, "", "../etc", "é"])
def test_invalid_list_names_are_refused(lookalike: ServerHandle, name: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        lookalike.client.create_list(name)
    assert error.value.reason == "LIST_NAME_INVALID"
    assert "lowercase" in error.value.message


def test_list_errors_have_their_status_codes(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("taken")
    with pytest.raises(AlreadyExists):
        client.create_list("taken")
    with pytest.raises(NotFound):
        client.get_list("missing")
    with pytest.raises(NotFound):
        client.delete_list("missing")
    with pytest.raises(InvalidArgument) as error:
        client.create_list("bad-thresholds", review_threshold=0.9, reject_threshold=0.5)
    assert error.value.reason == "THRESHOLD_ORDER"
    with pytest.raises(InvalidArgument):
        client.update_list("taken", reject_threshold=1.5)
    with pytest.raises(InvalidArgument) as error:
        client.create_list("bad-model", model="resnet")
    assert error.value.reason == "MODEL_UNKNOWN"


def test_entries_add_get_remove_and_idempotent_adds(lookalike: ServerHandle, photo: bytes) -> None:
    client = lookalike.client
    client.create_list("banned")
    added = client.add("banned", photo, meta={"case": "42"}, id="case-42")
    assert (added.id, added.duplicate) == ("case-42", False)
    assert len(added.sha256) == 64 and len(added.hashes.pdq) == 64 and len(added.hashes.phash) == 16
    again = client.add("banned", photo, meta={"case": "43"})
    assert (again.id, again.duplicate, again.sha256) == ("case-42", True, added.sha256)
    assert client.get_list("banned").entry_count == 1
    entry = client.get_entry("banned", "case-42")
    assert entry.meta == {"case": "42"} and entry.hashes.sha256 == added.sha256 and entry.model == "sscd-distilled"
    client.remove("banned", "case-42")
    with pytest.raises(NotFound):
        client.get_entry("banned", "case-42")
    with pytest.raises(NotFound):
        client.remove("banned", "case-42")
    assert client.get_list("banned").entry_count == 0
    assert client.check(photo, ["banned"]).decision == "accept"


def test_entry_errors_have_their_status_codes(lookalike: ServerHandle, photo: bytes) -> None:
    client = lookalike.client
    with pytest.raises(NotFound):
        client.add("nolist", photo)
    client.create_list("banned")
    client.add("banned", photo, id="one")
    other = jpeg_bytes(Image.new("RGB", (64, 64), (200, 10, 10)))
    with pytest.raises(AlreadyExists) as error:
        client.add("banned", other, id="one")
    assert error.value.reason == "ENTRY_ID_EXISTS"
    with pytest.raises(InvalidArgument):
        client.add("banned", other, id=" padded ")
    with pytest.raises(InvalidArgument):
        client.add("banned", other, meta={f"k{i}": "v" for i in range(100)})
    with pytest.raises(NotFound):
        client.get_entry("banned", "nope")
    with pytest.raises(NotFound):
        client.check(photo, ["nolist"])


def test_images_arrive_as_bytes_base64_path_pil_or_url(
    lookalike: ServerHandle, photo: bytes, tmp_path: Path, web: str
) -> None:
    client = lookalike.client
    client.create_list("banned")
    added = client.add("banned", photo)
    (tmp_path / "www" / "photo.jpg").write_bytes(photo)
    (tmp_path / "photo.jpg").write_bytes(photo)
    encoded = base64.b64encode(photo).decode()
    inputs = [
        Base64(encoded),
        Base64("data:image/jpeg;base64," + encoded),
        tmp_path / "photo.jpg",
        Url(f"{web}/photo.jpg"),
        f"{web}/photo.jpg",
    ]
    for image in inputs:
        result = client.check(image, ["banned"])
        assert result.sha256 == added.sha256, image
        assert result.decision == "reject"
        assert result.matches[0].evidence.exact_sha256
    pil_result = client.check(Image.open(tmp_path / "photo.jpg"), ["banned"])
    assert pil_result.decision == "reject" and pil_result.matches[0].id == added.id


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (pb.Image(data=b""), "IMAGE_EMPTY"),
        (pb.Image(data=b"this is not an image"), "IMAGE_UNDECODABLE"),
        (pb.Image(base64="not base64 at all!!"), "BASE64_INVALID"),
        (pb.Image(), "IMAGE_MISSING"),
        (pb.Image(url="ftp://example.com/x.jpg"), "URL_SCHEME"),
    ],
)
def test_bad_images_are_invalid_argument(lookalike: ServerHandle, image: pb.Image, reason: str) -> None:
    lookalike.client.create_list("banned")
    with pytest.raises(InvalidArgument) as error:
        lookalike.client.check(image, ["banned"])
    assert error.value.reason == reason
    assert error.value.message


def test_truncated_jpeg_is_invalid_argument(lookalike: ServerHandle, photo: bytes) -> None:
    lookalike.client.create_list("banned")
    with pytest.raises(InvalidArgument) as error:
        lookalike.client.check(photo[: len(photo) // 3], ["banned"])
    assert error.value.reason == "IMAGE_UNDECODABLE"


def test_url_on_loopback_is_refused_unless_allowed(tmp_path: Path, photo: bytes, web: str) -> None:
    from tests.conftest import start_server

    (tmp_path / "www" / "photo.jpg").write_bytes(photo)
    handle = start_server(tmp_path / "strict", allow_private_urls=False)
    try:
        with pytest.raises(InvalidArgument) as error:
            handle.client.check(Url(f"{web}/photo.jpg"))
        assert error.value.reason == "URL_ADDRESS_REFUSED"
        assert "--allow-private-urls" in error.value.message
    finally:
        handle.stop()


def test_too_many_pixels_and_too_large_messages_are_resource_exhausted(tmp_path: Path) -> None:
    from tests.conftest import start_server

    handle = start_server(tmp_path / "small", max_pixels=100 * 100, max_request_bytes=200_000)
    try:
        big = jpeg_bytes(Image.new("RGB", (300, 300), (10, 120, 200)))
        with pytest.raises(ResourceExhausted) as error:
            handle.client.check(big)
        assert error.value.reason == "IMAGE_TOO_MANY_PIXELS"
        with pytest.raises(ResourceExhausted):
            handle.client.check(b"\xff" * 300_000)
        assert handle.client.lists() == []  # still serving
    finally:
        handle.stop()


def test_check_reply_follows_the_moderation_shape(lookalike: ServerHandle, photo: bytes) -> None:
    client = lookalike.client
    client.create_list("banned")
    added = client.add("banned", photo, meta={"source": "takedown-7"})
    result = client.check(photo, ["banned"], meta={"userId": "1234"}, request_id="req-1")
    assert result.id == "req-1"
    assert result.meta == {"userId": "1234"}
    assert (result.decision, result.reject, result.review) == ("reject", True, False)
    (match,) = result.matches
    assert (match.list, match.id, match.meta, match.score) == ("banned", added.id, {"source": "takedown-7"}, 1.0)
    assert match.evidence.exact_sha256 and match.evidence.pdq_distance == 0
    assert match.evidence.embedding_similarity == pytest.approx(1.0, abs=1e-4)
    assert set(match.evidence.signals) == {"sha256", "pdq", "embedding"}
    raw = result.raw
    assert raw.request.request_id == "req-1" and raw.request.timestamp.seconds > 0


def test_check_with_no_list_named_checks_every_list(lookalike: ServerHandle, photo: bytes) -> None:
    client = lookalike.client
    client.create_list("a")
    client.create_list("b", review_threshold=0.1, reject_threshold=1.0)
    client.add("b", photo)
    result = client.check(photo)
    assert [m.list for m in result.matches] == ["b"]
    assert result.decision == "reject"  # score 1.0 reaches reject threshold 1.0


def test_streams_report_per_item_errors_and_carry_on(lookalike: ServerHandle, photo: bytes) -> None:
    client = lookalike.client
    client.create_list("banned")
    requests = [
        pb.AddEntryRequest(list="banned", image=pb.Image(data=photo)),
        pb.AddEntryRequest(list="banned", image=pb.Image(data=b"junk")),
        pb.AddEntryRequest(list="missing", image=pb.Image(data=photo)),
        pb.AddEntryRequest(list="banned", image=pb.Image(data=photo)),
    ]
    results = list(client.add_many(requests))
    assert [index for index, _ in results] == [0, 1, 2, 3]
    first, junk, missing, repeat = (result for _, result in results)
    assert isinstance(junk, InvalidArgument) and isinstance(missing, NotFound)
    assert not isinstance(first, LookalikeError) and not isinstance(repeat, LookalikeError)
    assert repeat.duplicate and repeat.id == first.id
    checks = [client.check_request(photo, ["banned"]), client.check_request(b"", ["banned"])]
    (i0, r0), (i1, r1) = client.check_many(checks)
    assert (i0, i1) == (0, 1)
    assert not isinstance(r0, LookalikeError) and r0.decision == "reject"
    assert isinstance(r1, InvalidArgument)


def test_top_k_and_min_score_show_entries_below_review(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("banned")
    photos = corpus_photos()[:4]
    for path in photos[:3]:
        client.add("banned", path)
    query = photos[3].read_bytes()
    assert client.check(query, ["banned"]).matches == []
    nearest = client.check(query, ["banned"], top_k=3)
    assert 1 <= len(nearest.matches) <= 3
    assert [m.score for m in nearest.matches] == sorted((m.score for m in nearest.matches), reverse=True)
    assert all(m.evidence.embedding_similarity is not None for m in nearest.matches)
    everything = client.check(query, ["banned"], min_score=0.0)
    assert len(everything.matches) == 3
    with pytest.raises(InvalidArgument):
        client.check(query, ["banned"], min_score=2.0)
    with pytest.raises(InvalidArgument):
        client.check(query, ["banned"], top_k=-1)


def test_a_second_server_on_the_same_data_folder_is_refused(lookalike: ServerHandle) -> None:
    from lookalike.client.errors import FailedPrecondition
    from tests.conftest import start_server

    with pytest.raises(FailedPrecondition) as error:
        start_server(lookalike.config.data)
    assert error.value.reason == "DATA_FOLDER_IN_USE"
    assert lookalike.client.lists() == []
