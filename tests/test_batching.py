"""The model batched across concurrent checks (what `--device cuda` runs), tested on the CPU provider,
and the fallback to the CPU path when a GPU is asked for but none is usable (this machine has none)."""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from benchmarks.edits import screenshot
from lookalike.server.config import parse_config
from lookalike.server.embedder import (
    MODEL_SSCD,
    MODEL_SSCD_DISTILLED,
    BatcherStopped,
    EmbedderPool,
    EmbeddingBatcher,
    embedding_input,
)
from lookalike.server.workers import QUEUED_PER_WORKER, FingerprintWorkers
from tests.conftest import ServerHandle, corpus_photos, distinct_photos, jpeg_bytes, start_server

SAME_SIZE = 8


@pytest.fixture(scope="module")
def embedders() -> EmbedderPool:
    return EmbedderPool(threads=1)


@pytest.fixture(scope="module")
def same_sized_photos() -> list[Path]:
    """SAME_SIZE distinct corpus photos whose model inputs have one size (only those can share an inference)."""
    by_size: dict[tuple[int, int], list[Path]] = {}
    for photo in distinct_photos(len(corpus_photos())):
        by_size.setdefault(embedding_input(Image.open(photo).convert("RGB")).size, []).append(photo)
    largest = max(by_size.values(), key=len)
    assert len(largest) >= SAME_SIZE, "the corpus has enough photos of one size"
    return largest[:SAME_SIZE]


@pytest.fixture(scope="module")
def same_sized(same_sized_photos: list[Path]) -> list[np.ndarray]:
    return [np.asarray(embedding_input(Image.open(photo).convert("RGB"))) for photo in same_sized_photos]


@pytest.fixture
def batcher(embedders: EmbedderPool) -> Iterator[EmbeddingBatcher]:
    started = EmbeddingBatcher(embedders, max_batch=SAME_SIZE, window=1.0)
    yield started
    started.shutdown()


def alone(embedders: EmbedderPool, picture: np.ndarray, model: str = MODEL_SSCD_DISTILLED) -> np.ndarray:
    return embedders.get(model).embed(picture)


def test_concurrent_callers_share_inferences_and_each_gets_its_own_embedding(
    batcher: EmbeddingBatcher, embedders: EmbedderPool, same_sized: list[np.ndarray]
) -> None:
    start = threading.Barrier(len(same_sized))

    def call(picture: np.ndarray) -> np.ndarray:
        start.wait()
        return batcher.embed(MODEL_SSCD_DISTILLED, picture)

    with ThreadPoolExecutor(max_workers=len(same_sized)) as pool:
        got = list(pool.map(call, same_sized))
    for picture, vector in zip(same_sized, got, strict=True):
        np.testing.assert_allclose(vector, alone(embedders, picture), atol=1e-5)
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-6
    assert sum(size * count for size, count in batcher.batch_sizes.items()) == len(same_sized)
    assert max(batcher.batch_sizes) > 1, f"concurrent pictures shared an inference: {batcher.batch_sizes}"


def test_pictures_share_an_inference_only_with_pictures_of_their_model_and_size(
    batcher: EmbeddingBatcher, embedders: EmbedderPool, same_sized: list[np.ndarray]
) -> None:
    other_size = np.ascontiguousarray(same_sized[0][:, : same_sized[0].shape[1] // 2])
    asked = [
        *((MODEL_SSCD_DISTILLED, picture) for picture in same_sized[:3]),
        (MODEL_SSCD_DISTILLED, other_size),
        (MODEL_SSCD, same_sized[0]),
        (MODEL_SSCD_DISTILLED, other_size[::-1].copy()),
    ]
    futures = [batcher.submit(model, picture) for model, picture in asked]  # all within one window
    for (model, picture), future in zip(asked, futures, strict=True):
        np.testing.assert_allclose(future.result(), alone(embedders, picture, model), atol=1e-5)
    assert batcher.batch_sizes == Counter({3: 1, 2: 1, 1: 1}), "three same-sized, two of another size, one model alone"


def test_an_error_reaches_only_the_caller_whose_picture_caused_it(
    batcher: EmbeddingBatcher, embedders: EmbedderPool, same_sized: list[np.ndarray]
) -> None:
    four_channels = np.zeros((*same_sized[0].shape[:2], 4), dtype=np.uint8)
    good = [batcher.submit(MODEL_SSCD_DISTILLED, picture) for picture in same_sized[:3]]
    unknown_model = batcher.submit("sscd-unknown", same_sized[0])
    bad_picture = batcher.submit(MODEL_SSCD_DISTILLED, four_channels)
    with pytest.raises(ValueError, match="unknown model"):
        unknown_model.result()
    with pytest.raises(Exception, match="(?i)dimension|shape|channel"):
        bad_picture.result()
    for picture, future in zip(same_sized, good, strict=False):
        np.testing.assert_allclose(future.result(), alone(embedders, picture), atol=1e-5)
    assert batcher.embed(MODEL_SSCD_DISTILLED, same_sized[3]).shape == (512,), "the batcher goes on after errors"


def test_shutdown_answers_every_picture_already_queued_then_refuses_more(
    embedders: EmbedderPool, same_sized: list[np.ndarray]
) -> None:
    batcher = EmbeddingBatcher(embedders, max_batch=64, window=30.0)  # nothing would run for 30 s but shutdown
    narrower = [np.ascontiguousarray(picture[:, :200]) for picture in same_sized[:2]]
    pictures = [*same_sized[:3], *narrower]  # two sizes: two inferences left to run at shutdown
    futures = [batcher.submit(MODEL_SSCD_DISTILLED, picture) for picture in pictures]
    batcher.shutdown()
    assert all(future.done() for future in futures)
    for picture, future in zip(pictures, futures, strict=True):
        np.testing.assert_allclose(future.result(), alone(embedders, picture), atol=1e-5)
    assert batcher.batch_sizes == Counter({3: 1, 2: 1})
    with pytest.raises(BatcherStopped):
        batcher.submit(MODEL_SSCD_DISTILLED, same_sized[0])


def screenshot_jpeg() -> bytes:
    """A photo inside a phone screenshot: a check embeds the whole picture and the region found in it."""
    photo = Image.open(distinct_photos(1, seed=11)[0]).convert("RGB")
    return jpeg_bytes(screenshot(photo, random.Random(0)))


@pytest.mark.parametrize("processes", [0, 2])
def test_workers_with_a_batcher_compute_what_workers_running_the_model_compute(
    processes: int, embedders: EmbedderPool
) -> None:
    """With a batcher the workers load no model and send back model inputs (through their pipes when they
    are processes); the fingerprints are those of the CPU path."""
    batched = FingerprintWorkers(
        64_000_000, processes, [MODEL_SSCD_DISTILLED], EmbeddingBatcher(embedders, max_batch=4, window=0.01)
    )
    try:
        assert batched.models == () and batched.queued == QUEUED_PER_WORKER * processes + 4
        plain = FingerprintWorkers(64_000_000, processes=0)
        images = [screenshot_jpeg(), distinct_photos(1, seed=12)[0].read_bytes()]
        for data in images:
            for embed, views in [((), ()), ((MODEL_SSCD_DISTILLED,), ()), ((), (MODEL_SSCD_DISTILLED,))]:
                got = batched.compute(data, embed, views)
                expected = plain.compute(data, embed, views)
                assert got.hashes == expected.hashes and got.pdq_variants == expected.pdq_variants
                assert got.embeddings.keys() == expected.embeddings.keys()
                assert got.views.keys() == expected.views.keys()
                for model in expected.embeddings:
                    np.testing.assert_allclose(got.embeddings[model], expected.embeddings[model], atol=1e-5)
                for model in expected.views:
                    assert got.views[model].shape == expected.views[model].shape
                    np.testing.assert_allclose(got.views[model], expected.views[model], atol=1e-5)
        rows, width = batched.compute(images[0], views=[MODEL_SSCD_DISTILLED]).views[MODEL_SSCD_DISTILLED].shape
        assert rows >= 2 and width == 512  # the whole screenshot, then at least the picture inside it
    finally:
        batched.shutdown()


def test_a_server_batching_concurrent_checks_answers_each_with_its_own_picture(
    tmp_path: Path, same_sized_photos: list[Path]
) -> None:
    handle: ServerHandle = start_server(tmp_path / "data", embed_batch=SAME_SIZE, embed_window=0.2, cpu_slots=SAME_SIZE)
    try:
        batcher = handle.running.service.workers.batcher
        assert batcher is not None
        photos = same_sized_photos
        handle.client.create_list("banned")
        ids = [handle.client.add("banned", photo.read_bytes()).id for photo in photos]
        with ThreadPoolExecutor(max_workers=len(photos)) as pool:
            results = list(pool.map(lambda photo: handle.client.check(photo.read_bytes(), ["banned"]), photos))
        for entry_id, result in zip(ids, results, strict=True):
            assert result.decision == "reject" and result.matches[0].id == entry_id
            similarity = result.matches[0].evidence.embedding_similarity
            assert similarity is not None and similarity > 0.9999
        assert max(batcher.batch_sizes) > 1, f"concurrent checks shared inferences: {batcher.batch_sizes}"
    finally:
        handle.stop()


def test_device_cuda_without_a_gpu_starts_on_the_cpu_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: the fallback cannot be seen here")
    caplog.set_level(logging.INFO)
    handle = start_server(tmp_path / "data", device="cuda")
    try:
        said = [record for record in caplog.records if "--device cuda" in record.getMessage()]
        assert len(said) == 1, [record.getMessage() for record in said]
        assert said[0].levelno == logging.WARNING
        assert "CUDA" in said[0].getMessage() and "the models run on the CPU" in said[0].getMessage()
        assert handle.running.service.workers.batcher is None, "the CPU path: each worker runs the model"
        photo, other = distinct_photos(2, seed=14)
        handle.client.create_list("banned")
        added = handle.client.add("banned", photo.read_bytes())
        result = handle.client.check(photo.read_bytes(), ["banned"])
        assert result.decision == "reject" and result.matches[0].id == added.id
        assert handle.client.check(other.read_bytes(), ["banned"]).decision == "accept"
    finally:
        handle.stop()


def test_device_and_batching_settings_come_from_flags_or_the_environment() -> None:
    assert parse_config([]).device == "cpu"
    assert parse_config(["--device", "cuda", "--embed-batch", "64"]).embed_batch == 64
    assert parse_config([], {"LOOKALIKE_DEVICE": "cuda"}).device == "cuda"
    for wrong in (["--device", "tpu"], ["--embed-batch", "-1"], ["--embed-window", "5"]):
        with pytest.raises(SystemExit):
            parse_config(wrong)
