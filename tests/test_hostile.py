"""Hostile input: the decoder and every request field, fuzzed with Hypothesis, and a corpus of bad
files sent through a real server. Every outcome is a picture or one of our typed errors with a proper
status code and a clear message (never UNKNOWN or INTERNAL, never a hang), and the server keeps serving.

Hypothesis runs derandomized with no example database, so CI sees the same examples every run.
"""

from __future__ import annotations

import base64
import io
import math
import random
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from lookalike.client import LookalikeError
from lookalike.client.errors import InvalidArgument, ResourceExhausted
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.stub import translate
from lookalike.server.imaging import DecodedImage, decode_image
from tests.conftest import ServerHandle, jpeg_bytes, start_server

MAX_PIXELS = 64_000_000  # the server's default
HANG_S = 60.0
"""A decode still running after this long is a hang, not slowness (typical decodes take milliseconds)."""
CLEAN_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "DEADLINE_EXCEEDED",
    }
)
"""What bad input may be answered with; UNKNOWN, INTERNAL or UNAVAILABLE mean we broke."""


def fuzz(examples: int) -> Callable[[Any], Any]:
    """Reproducible Hypothesis settings: a fixed example count, no deadline (a shared CI box is slow)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def picture(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A seeded picture with structure (a gradient and shapes), so near-duplicates of it are found."""
    rng = random.Random(seed)
    width, height = size
    x = np.linspace(0, 255, width)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, axis=1)
    tint = [rng.uniform(0.3, 1.0) for _ in range(3)]
    base = np.dstack([x * tint[0], y * tint[1], (255 - x) * tint[2]]).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(width * 3 // 4), rng.randrange(height * 3 // 4)
        box = (x0, y0, x0 + rng.randrange(width // 12, width // 3), y0 + rng.randrange(height // 12, height // 3))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(
    width: int, height: int, depth: int, colour_type: int, channels: int, extra: bytes = b"", rows: int | None = None
) -> bytes:
    """A PNG of one flat grey level, built by hand so it can claim any size and bit depth; `extra`
    chunks go before the pixels, `rows` cuts the pixel data short. Flat rows compress about 1000:1,
    which is what a decompression bomb relies on."""
    row = b"\x00" + b"\x80" * (width * channels * depth // 8)
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")
    )


# Decoder: arbitrary and mutated bytes ------------------------------------------------------------

_watchdog = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-watchdog")


def decoded_with_frames(data: bytes) -> DecodedImage:
    """`decode_image`, then the other frames a check would read (never an error of their own)."""
    decoded = decode_image(data, MAX_PIXELS)
    assert all(frame.mode == "RGB" for frame in decoded.other_frames)
    return decoded


def assert_decodes_or_refuses(data: bytes) -> None:
    """A decoded 8-bit RGB picture (its other frames read too), or InvalidArgument/ResourceExhausted with a
    message; anything else (another exception type, a hang) fails the test."""
    future = _watchdog.submit(decoded_with_frames, data)
    try:
        decoded = future.result(timeout=HANG_S)
    except (InvalidArgument, ResourceExhausted) as error:
        assert error.message and error.reason.isupper(), error
        return
    except FutureTimeout:
        pytest.fail(f"decode of {len(data)} bytes starting {data[:16]!r} still running after {HANG_S:g} s")
    assert decoded.rgb.mode == "RGB" and min(decoded.rgb.size) >= 1


SIGNATURES = [
    b"\xff\xd8\xff\xe0",  # JPEG
    b"\xff\xd8\xff\xc0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"GIF87a",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"RIFF\x00\x01\x00\x00WEBPVP8L",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"\x00\x00\x00\x1cftypavif",
    b"\x00\x00\x00\x18ftypheic",
]


@fuzz(400)
@given(st.one_of(st.binary(max_size=4096), st.builds(bytes.__add__, st.sampled_from(SIGNATURES), st.binary())))
def test_arbitrary_bytes_decode_or_give_a_typed_error(data: bytes) -> None:
    assert_decodes_or_refuses(data)


def _originals() -> list[bytes]:
    """Valid files in every accepted format and the awkward modes, small so mutations reach every part."""
    image = picture(1, (48, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        encode(image, "JPEG", quality=90),
        encode(image, "JPEG", quality=90, progressive=True),
        encode(image, "JPEG", exif=exif.tobytes()),
        encode(image.convert("CMYK"), "JPEG"),
        encode(image, "PNG"),
        encode(image.convert("RGBA"), "PNG"),
        encode(image.convert("P"), "PNG", transparency=0),
        encode(Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257), "PNG"),
        encode(image, "GIF"),
        encode(image, "GIF", save_all=True, append_images=[picture(2, (48, 40))], duration=50),
        encode(image, "WEBP", save_all=True, append_images=[picture(2, (48, 40))], duration=50, lossless=True),
        encode(image, "PNG", save_all=True, append_images=[picture(2, (48, 40))], duration=50),
        encode(image, "WEBP", quality=80),
        encode(image, "WEBP", lossless=True),
        encode(image, "TIFF"),
        encode(image, "TIFF", compression="tiff_lzw"),
        encode(image.convert("CMYK"), "TIFF"),
        encode(image, "BMP"),
        encode(image, "AVIF", quality=80),
        encode(image, "AVIF", exif=exif.tobytes()),
        encode(image, "HEIF", quality=80),
        encode(image, "HEIF", exif=exif.tobytes()),
    ]


ORIGINALS = _originals()


@st.composite
def mutated_pictures(draw: st.DrawFn) -> bytes:
    """A real file with a few bytes flipped, inserted, deleted, or its tail cut off."""
    data = bytearray(draw(st.sampled_from(ORIGINALS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 32))]
        else:
            del data[at:]
    return bytes(data)


@fuzz(600)
@given(mutated_pictures())
def test_mutated_real_pictures_decode_or_give_a_typed_error(data: bytes) -> None:
    assert_decodes_or_refuses(data)


PEAK_MEMORY_SCRIPT = """
import resource, struct, sys, zlib
from lookalike.server.imaging import decode_image

side = 4000
depth, colour_type, channels = (int(arg) for arg in sys.argv[1:])
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
packer = zlib.compressobj(9)
row = b"\\x00" + b"\\x80" * (side * channels * depth // 8)
pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
header = struct.pack(">IIBBBBB", side, side, depth, colour_type, 0, 0, 0)
data = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decode_image(data, 64_000_000)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / side**2)
"""


@pytest.mark.parametrize(
    ("depth", "colour_type", "channels"), [(16, 0, 1), (8, 6, 4), (16, 6, 4)], ids=["grey-16", "rgba", "rgba-16"]
)
def test_a_small_png_declaring_many_pixels_costs_a_bounded_multiple_of_them(
    depth: int, colour_type: int, channels: int
) -> None:
    """A flat 16 Mpx PNG is a few dozen kB; decoding it once took 23-27 bytes per pixel (float64
    copies of 16-bit grey, whole-picture RGBA composites, a copy for EXIF that wasn't there), so
    a handful of 60 Mpx uploads at once could exhaust a server's memory."""
    completed = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(depth), str(colour_type), str(channels)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
    )
    bytes_per_pixel = float(completed.stdout)
    assert bytes_per_pixel < 12, f"decoding took {bytes_per_pixel:.1f} bytes per pixel at its peak"


# A real server for the rest -------------------------------------------------------------------------

GOOD = jpeg_bytes(picture(0))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One server for the module, as deployed: private URLs refused, a short URL timeout."""
    handle = start_server(tmp_path_factory.mktemp("hostile") / "data", allow_private_urls=False, url_timeout=2.0)
    handle.client.create_list("fuzz")
    handle.client.add("fuzz", GOOD, id="good")
    yield handle
    handle.stop()


def assert_serving(handle: ServerHandle) -> None:
    """Health says SERVING and a check of a listed picture still finds it."""
    with grpc.insecure_channel(handle.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    result = handle.client.check(GOOD, ["fuzz"])
    assert result.decision == "reject" and result.matches[0].id == "good"


def assert_clean(error: LookalikeError) -> None:
    """Our own refusal: a clean code, a message, and the server's ErrorInfo reason (gRPC's own
    failures, such as a status too large to send, carry none and read as the bare code)."""
    assert error.code in CLEAN_CODES, f"{error.code}: {error.message[:300]}"
    assert error.message.strip(), error
    assert error.reason != error.code and re.fullmatch(r"[A-Z][A-Z0-9_]+", error.reason), error


def clean(call: Callable[[], object]) -> LookalikeError | None:
    """Run one call; a failure must carry a clean status code, a message and a reason."""
    try:
        call()
    except LookalikeError as error:
        assert_clean(error)
        return error
    return None


def clean_item(result: object) -> None:
    """A stream item: a result, or a per-item error with a clean status code."""
    if isinstance(result, LookalikeError):
        assert_clean(result)


# Request fields ------------------------------------------------------------------------------------

LONG = ["x" * 20_000, "é" * 9_000, "\U0001f600" * 5_000, "%" * 12_000]
"""Strings far past every field's limit: an error message that quotes one whole must still fit in a status."""
names = st.one_of(
    st.sampled_from(LONG),
    st.text(max_size=80),
    st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True),
    st.sampled_from(["fuzz", "", "FUZZ", "fuzz\n", "../fuzz", "fuzz\x00", "x" * 65, "é", " fuzz"]),
)
entry_ids = st.one_of(
    st.sampled_from(LONG),
    st.text(max_size=300),
    st.sampled_from(["", "good", " good", "good\n", "a\x00b", "x" * 257, "é" * 129, "x" * 600, "\u2028"]),
)
meta = st.one_of(
    st.dictionaries(st.text(max_size=40), st.text(max_size=300), max_size=80),
    st.dictionaries(st.sampled_from(LONG), st.sampled_from(LONG), max_size=2),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, 1.0000001, -1e-300, 5e-324]),
)
top_ks = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 1002))
REFUSED_HOSTS = [
    "127.0.0.1",
    "10.1.2.3",
    "169.254.169.254",
    "[::1]",
    "localhost",
    "0",
    "[::ffff:127.0.0.1]",
    "[fe80::1]",
]
urls = st.one_of(
    st.text(max_size=120),
    st.sampled_from(LONG).map(lambda long: f"http://{long}/"),
    st.sampled_from(LONG).map(lambda long: f"http://10.0.0.1/{long}"),
    st.builds(
        "{}://{}{}/{}".format,
        st.sampled_from(["http", "https", "HTTP", "ftp", "file", "gopher", "javascript", ""]),
        st.sampled_from([*REFUSED_HOSTS, "", "@", "user:pass@127.0.0.1", "[", "host.invalid"]),
        st.sampled_from(["", ":0", ":80", ":99999", ":-1", ":x"]),
        st.text(max_size=40),
    ),
)
base64_texts = st.one_of(
    st.text(max_size=200),
    st.sampled_from(LONG),
    st.binary(max_size=300).map(lambda raw: base64.b64encode(raw).decode()),
    st.binary(max_size=300).map(lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")),
    st.just(base64.b64encode(GOOD).decode()),
    st.builds(str.__add__, st.sampled_from(["data:image/png;base64,", "data:,", " \n"]), st.text()),
)
images = st.one_of(
    st.builds(pb.Image, data=st.one_of(st.binary(max_size=512), st.just(GOOD))),
    st.builds(pb.Image, base64=base64_texts),
    st.builds(pb.Image, url=urls),
    st.just(pb.Image()),
)


@fuzz(60)
@given(name=names, description=st.text(max_size=200), review=st.none() | numbers, reject=st.none() | numbers)
def test_create_and_update_list_with_random_fields(
    hostile: ServerHandle, name: str, description: str, review: float | None, reject: float | None
) -> None:
    clean(lambda: hostile.client.create_list(name, description=description, review_threshold=review))
    clean(lambda: hostile.client.update_list(name, description=description, reject_threshold=reject))
    clean(lambda: hostile.client.get_list(name))
    clean(lambda: hostile.client.delete_list(name) if name != "fuzz" else None)


@fuzz(30)
@given(
    name=names,
    model=st.one_of(
        st.text(min_size=1, max_size=40), st.sampled_from(["SSCD", "sscd\x00", " sscd", "resnet", *LONG])
    ).filter(lambda model: model not in ("sscd", "sscd-distilled")),
)
def test_create_list_with_random_models(hostile: ServerHandle, name: str, model: str) -> None:
    error = clean(lambda: hostile.client.create_list(name, model=model))
    assert error is not None  # never a model's name, so never created


@fuzz(80)
@given(name=names, image=images, metadata=meta, entry_id=entry_ids)
def test_add_get_remove_with_random_fields(
    hostile: ServerHandle, name: str, image: pb.Image, metadata: dict[str, str], entry_id: str
) -> None:
    clean(lambda: hostile.client.add(name, image, meta=metadata, id=entry_id))
    clean(lambda: hostile.client.get_entry(name, entry_id))
    if entry_id != "good":
        clean(lambda: hostile.client.remove(name, entry_id))


@fuzz(80)
@given(
    lists=st.lists(names, max_size=4),
    image=images,
    metadata=meta,
    top_k=top_ks,
    min_score=st.none() | numbers,
    request_id=st.text(max_size=100),
)
def test_check_with_random_fields(
    hostile: ServerHandle,
    lists: list[str],
    image: pb.Image,
    metadata: dict[str, str],
    top_k: int,
    min_score: float | None,
    request_id: str,
) -> None:
    clean(
        lambda: hostile.client.check(
            image, lists, meta=metadata, top_k=top_k, min_score=min_score, request_id=request_id
        )
    )


@fuzz(25)
@given(
    adds=st.lists(st.tuples(names, images, meta, entry_ids), max_size=5),
    checks=st.lists(st.tuples(st.lists(names, max_size=2), images, top_ks, st.none() | numbers), max_size=5),
)
def test_streams_with_random_items_answer_each_item_cleanly(
    hostile: ServerHandle,
    adds: list[tuple[str, pb.Image, dict[str, str], str]],
    checks: list[tuple[list[str], pb.Image, int, float | None]],
) -> None:
    client = hostile.client
    requests = [pb.AddEntryRequest(list=n, image=i, meta=m, id=e) for n, i, m, e in adds]
    results = list(client.add_many(requests))
    assert [index for index, _ in results] == list(range(len(requests)))
    for _, result in results:
        clean_item(result)
    check_requests = [client.check_request(i, n, top_k=k, min_score=s) for n, i, k, s in checks]
    outcomes = list(client.check_many(check_requests))
    assert [index for index, _ in outcomes] == list(range(len(check_requests)))
    for _, outcome in outcomes:
        clean_item(outcome)


@pytest.mark.parametrize("long", LONG, ids=["ascii", "two-byte", "four-byte", "percent"])
def test_a_huge_input_is_quoted_short_and_the_hint_survives(hostile: ServerHandle, long: str) -> None:
    """An echoed 20 kB name once overflowed gRPC's trailer limit: the caller got a bare
    RESOURCE_EXHAUSTED from the transport instead of our reason and hint."""
    for call, reason, hint in (
        (lambda: hostile.client.create_list(long), "LIST_NAME_INVALID", "lowercase"),
        (lambda: hostile.client.create_list("long-model", model=long), "MODEL_UNKNOWN", "sscd"),
        (lambda: hostile.client.get_entry("fuzz", long), "ENTRY_NOT_FOUND", "not on list 'fuzz'"),
        (lambda: hostile.client.add("fuzz", GOOD, id=long), "ENTRY_ID_INVALID", "printable"),
    ):
        error = clean(call)
        assert error is not None and error.reason == reason, error
        assert hint in error.message and len(error.message) < 400, error.message[:500]


def test_oversized_descriptions_and_check_meta_are_refused(hostile: ServerHandle) -> None:
    """Both are stored or echoed whole, so both are bounded like an entry's meta."""
    error = clean(lambda: hostile.client.create_list("described", description="x" * 5_000_000))
    assert error is not None and error.reason == "DESCRIPTION_TOO_LONG"
    assert "4096" in error.message
    hostile.client.create_list("described", description="d" * 4096)
    error = clean(lambda: hostile.client.update_list("described", description="y" * 4097))
    assert error is not None and error.reason == "DESCRIPTION_TOO_LONG"
    assert hostile.client.get_list("described").description == "d" * 4096
    error = clean(lambda: hostile.client.check(GOOD, ["fuzz"], meta={"note": "z" * 100_000}))
    assert error is not None and error.reason == "META_TOO_LARGE"
    assert hostile.client.check(GOOD, ["fuzz"], meta={"note": "z" * 4000}).meta == {"note": "z" * 4000}


RAW_METHODS = ["CreateList", "GetList", "UpdateList", "DeleteList", "AddEntry", "GetEntry", "RemoveEntry", "Check"]


@fuzz(60)
@given(
    method=st.sampled_from(RAW_METHODS),
    raw=st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"\x0a\x02\xff\xfe", b"\x0a\x05fuzz", b"\xff\xff\xff", b"\x12\x80\x80\x80\x80\x10"]),
    ),
)
def test_request_bytes_that_are_no_message_get_invalid_argument(hostile: ServerHandle, method: str, raw: bytes) -> None:
    """A client that is not ours may send anything: bytes that do not parse (invalid UTF-8 in a
    string, a field cut short) are INVALID_ARGUMENT REQUEST_MALFORMED, where gRPC alone says INTERNAL."""
    with grpc.insecure_channel(hostile.address) as channel:
        call = channel.unary_unary(
            f"/lookalike.v1.Lookalike/{method}",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        try:
            call(raw, timeout=30)
        except grpc.RpcError as failure:
            error = translate(failure)
            assert_clean(error)
            if error.reason == "REQUEST_MALFORMED":
                assert "valid lookalike.v1 message" in error.message


def test_malformed_stream_items_get_a_per_item_error(hostile: ServerHandle) -> None:
    with grpc.insecure_channel(hostile.address) as channel:
        for method in ("AddEntries", "CheckStream"):
            call = channel.stream_stream(
                f"/lookalike.v1.Lookalike/{method}",
                request_serializer=lambda data: data,
                response_deserializer=lambda data: data,
            )
            good = (
                pb.AddEntryRequest(list="fuzz", image=pb.Image(data=GOOD))
                if method == "AddEntries"
                else pb.CheckRequest(image=pb.Image(data=GOOD), lists=["fuzz"])
            ).SerializeToString()
            replies = list(call(iter([b"\x0a\x02\xff\xfe", good]), timeout=60))
            message = pb.AddEntriesResult if method == "AddEntries" else pb.CheckStreamResult
            first, second = (message.FromString(reply) for reply in replies)
            assert (first.index, first.error.code, first.error.reason) == (0, "INVALID_ARGUMENT", "REQUEST_MALFORMED")
            assert second.index == 1 and not second.HasField("error")
    assert_serving(hostile)


def test_the_server_still_serves_after_the_fuzzing(hostile: ServerHandle) -> None:
    assert_serving(hostile)
    assert hostile.client.get_entry("fuzz", "good").id == "good"


# Bad files ---------------------------------------------------------------------------------------


def _patched(data: bytes, at: int, packed: bytes) -> bytes:
    return data[:at] + packed + data[at + len(packed) :]


def jpeg_claiming(width: int, height: int) -> bytes:
    data = encode(picture(3, (64, 48)), "JPEG")
    sof = data.index(b"\xff\xc0")
    return _patched(data, sof + 5, struct.pack(">HH", height, width))


def gif_claiming(width: int, height: int, where: str) -> bytes:
    data = encode(Image.new("P", (4, 4), 1), "GIF")
    at = 6 if where == "screen" else data.index(b"\x2c") + 5  # logical screen, or the frame's descriptor
    return _patched(data, at, struct.pack("<HH", width, height))


def bmp_claiming(width: int, height: int) -> bytes:
    return _patched(encode(Image.new("RGB", (4, 4)), "BMP"), 18, struct.pack("<ii", width, height))


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian TIFF whose first IFD says width × height, 8-bit grey, one tiny strip."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (279, 4, 4)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in entries)
    return b"II*\x00" + struct.pack("<I", 12) + b"\x00" * 4 + ifd + b"\x00\x00\x00\x00"


def animated_gif(frames: int) -> bytes:
    """`frames` distinct 16×16 frames (distinct, or Pillow would merge them)."""
    sequence = []
    for number in range(frames):
        frame = Image.new("P", (16, 16), number % 200)
        frame.putpixel((number % 16, (number // 16) % 16), 255)
        sequence.append(frame)
    return encode(sequence[0], "GIF", save_all=True, append_images=sequence[1:], duration=20, loop=0)


TOO_MANY_PIXELS: dict[str, Callable[[], bytes]] = {
    "jpeg-50000x50000": lambda: jpeg_claiming(50_000, 50_000),
    "png-50000x50000": lambda: png(50_000, 50_000, 8, 2, 3, rows=1),
    "png-bomb-9000x9000": lambda: png(9000, 9000, 8, 0, 1),  # 81 Mpx of one grey in 80 kB
    "gif-screen-65535": lambda: gif_claiming(65535, 65535, "screen"),
    "gif-frame-65535": lambda: gif_claiming(65535, 65535, "frame"),
    "bmp-50000x50000": lambda: bmp_claiming(50_000, 50_000),
    "tiff-50000x50000": lambda: tiff_claiming(50_000, 50_000),
}
UNDECODABLE: dict[str, tuple[Callable[[], bytes], str]] = {
    # case: (the file, a word the message must hold)
    "zero-bytes": (lambda: b"\x00" * 4096, "format"),
    "html": (lambda: b"<!doctype html><html><body>hi</body></html>", "JPEG"),
    "png-text-bomb": (  # 200 MB of zTXt in a 200 kB file
        lambda: png(64, 64, 8, 0, 1, png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (200 << 20)))),
        "too large",
    ),
    "png-icc-bomb": (
        lambda: png(64, 64, 8, 0, 1, png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * (200 << 20)))),
        "too large",
    ),
    "truncated-png": (lambda: encode(picture(4), "PNG")[:300], "decoded"),
    "truncated-gif": (lambda: encode(picture(4), "GIF")[:1000], "image"),
}
REFUSED_FILES = [
    pytest.param(make, "RESOURCE_EXHAUSTED", "IMAGE_TOO_MANY_PIXELS", "pixels", id=case)
    for case, make in TOO_MANY_PIXELS.items()
] + [
    pytest.param(make, "INVALID_ARGUMENT", "IMAGE_UNDECODABLE", word, id=case)
    for case, (make, word) in UNDECODABLE.items()
]


@pytest.mark.parametrize(("data", "code", "reason", "word"), REFUSED_FILES)
def test_bad_files_get_a_clean_status_and_the_server_keeps_serving(
    hostile: ServerHandle, data: Callable[[], bytes], code: str, reason: str, word: str
) -> None:
    payload = data()
    for call in (lambda: hostile.client.check(payload, ["fuzz"]), lambda: hostile.client.add("fuzz", payload)):
        error = clean(call)
        assert error is not None
        assert (error.code, error.reason) == (code, reason), error
        assert word in error.message, error.message
    assert_serving(hostile)


def _corrupt_exif_jpeg(payload: bytes, seed: int) -> bytes:
    data = encode(picture(seed), "JPEG", quality=90)
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def _sixteen_bit_grey(seed: int) -> bytes:
    grey = np.asarray(picture(seed).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def _sixteen_bit_rgb(seed: int) -> bytes:
    """Pillow writes RGB PNGs as 8-bit: build the 16-bit-per-channel file by hand."""
    rgb = np.asarray(picture(seed), dtype=">u2") * 257
    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def _thousands_of_frames(seed: int) -> bytes:
    first = picture(seed).convert("P", palette=Image.Palette.ADAPTIVE)
    rest = [Image.new("P", first.size, number % 256) for number in range(2999)]
    for number, frame in enumerate(rest):
        frame.putpixel((number % 256, (number // 256) % 192), 255)
    return encode(first, "GIF", save_all=True, append_images=rest, duration=20, loop=0)


WORKING_FILES: list[tuple[str, Callable[[int], bytes], bool]] = [
    # (case, the file made from picture(seed), whether a clean refusal is also acceptable)
    ("cmyk-jpeg", lambda seed: encode(picture(seed).convert("CMYK"), "JPEG", quality=92), False),
    ("cmyk-tiff", lambda seed: encode(picture(seed).convert("CMYK"), "TIFF"), False),
    ("16-bit-grey-png", _sixteen_bit_grey, False),
    ("16-bit-rgb-png", _sixteen_bit_rgb, False),
    ("gif-3000-frames", _thousands_of_frames, False),
    ("exif-offset-past-end", lambda seed: _corrupt_exif_jpeg(b"Exif\x00\x00II*\x00\xff\xff\xff\x7f", seed), True),
    ("exif-65535-entries", lambda seed: _corrupt_exif_jpeg(b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff", seed), True),
    (
        "exif-orientation-9",
        lambda seed: _corrupt_exif_jpeg(
            b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x09\x00\x00", seed
        ),
        True,
    ),
    ("exif-random", lambda seed: _corrupt_exif_jpeg(b"Exif\x00\x00" + random.Random(seed).randbytes(3000), seed), True),
]


@pytest.mark.parametrize(
    ("seed", "make", "may_refuse"),
    [pytest.param(10 + n, make, refuse, id=case) for n, (case, make, refuse) in enumerate(WORKING_FILES)],
)
def test_awkward_but_valid_files_are_listed_and_matched(
    hostile: ServerHandle, seed: int, make: Callable[[int], bytes], may_refuse: bool
) -> None:
    """Listed from the awkward file, the picture is found again from a plain JPEG of it."""
    list_name = f"works-{seed}"
    hostile.client.create_list(list_name)
    data = make(seed)
    error = clean(lambda: hostile.client.add(list_name, data, id="awkward"))
    if error is not None:
        assert may_refuse and error.code == "INVALID_ARGUMENT", error
        assert_serving(hostile)
        return
    exact = hostile.client.check(data, [list_name])
    assert exact.decision == "reject" and exact.matches[0].evidence.exact_sha256
    plain = hostile.client.check(jpeg_bytes(picture(seed), quality=80), [list_name])
    assert plain.decision in ("reject", "review"), plain.matches
    assert plain.matches[0].id == "awkward"
    assert_serving(hostile)


INVALID_BASE64 = [
    ("é" * 12, "BASE64_INVALID"),
    ("QUJD\x00RA==", "BASE64_INVALID"),
    ("a", "BASE64_INVALID"),
    ("data:image/png;base64,@@@@", "BASE64_INVALID"),
    ("////", "IMAGE_UNDECODABLE"),
    ("   \n\t ", "IMAGE_EMPTY"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID_BASE64)
def test_invalid_base64_is_invalid_argument(hostile: ServerHandle, text: str, reason: str) -> None:
    error = clean(lambda: hostile.client.check(pb.Image(base64=text), ["fuzz"]))
    assert error is not None and (error.code, error.reason) == ("INVALID_ARGUMENT", reason), error
    assert_serving(hostile)


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "169.254.169.254", "[::1]", "localhost", "192.168.1.10", "[::ffff:127.0.0.1]", "0.0.0.0"]
)
def test_urls_to_refused_addresses_are_refused_with_the_reason(hostile: ServerHandle, host: str) -> None:
    for call in (
        lambda: hostile.client.check(pb.Image(url=f"http://{host}/photo.jpg"), ["fuzz"]),
        lambda: hostile.client.add("fuzz", pb.Image(url=f"http://{host}:8080/photo.jpg")),
    ):
        error = clean(call)
        assert error is not None and (error.code, error.reason) == ("INVALID_ARGUMENT", "URL_ADDRESS_REFUSED"), error
        assert host.strip("[]") in error.message and "refuse" in error.message, error.message
    assert_serving(hostile)


def test_the_metadata_address_is_refused_even_when_private_urls_are_allowed(tmp_path: Path) -> None:
    handle = start_server(tmp_path / "data", allow_private_urls=True)
    try:
        error = clean(lambda: handle.client.check(pb.Image(url="http://169.254.169.254/latest/meta-data/")))
        assert error is not None and error.reason == "URL_ADDRESS_REFUSED"
        assert "always refused" in error.message
    finally:
        handle.stop()
