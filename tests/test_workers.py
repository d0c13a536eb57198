"""Fingerprinting in worker processes: the same fingerprints as in the server process, errors
that keep their status and reason, and a dead worker that costs one request, not the server."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lookalike.client import InvalidArgument, LookalikeError
from lookalike.server.embedder import MODEL_SSCD_DISTILLED
from lookalike.server.workers import FingerprintWorkers
from tests.conftest import ServerHandle, distinct_photos, start_server


@pytest.fixture(scope="module")
def workers() -> Iterator[FingerprintWorkers]:
    pool = FingerprintWorkers(64_000_000, processes=2, models=[MODEL_SSCD_DISTILLED])
    yield pool
    pool.shutdown()


def worker_pids() -> list[int]:
    """Process ids of the pool's workers (multiprocessing children; not its resource tracker)."""
    return [child.pid for child in multiprocessing.active_children() if child.pid is not None]


def test_workers_compute_what_the_server_process_computes(workers: FingerprintWorkers) -> None:
    local = FingerprintWorkers(64_000_000, processes=0)
    for photo in distinct_photos(3, seed=4):
        data = photo.read_bytes()
        remote = workers.compute(data, embed=[MODEL_SSCD_DISTILLED], views=[MODEL_SSCD_DISTILLED])
        here = local.compute(data, embed=[MODEL_SSCD_DISTILLED], views=[MODEL_SSCD_DISTILLED])
        assert remote.hashes == here.hashes and remote.pdq_variants == here.pdq_variants
        np.testing.assert_allclose(remote.embeddings[MODEL_SSCD_DISTILLED], here.embeddings[MODEL_SSCD_DISTILLED])
        np.testing.assert_allclose(remote.views[MODEL_SSCD_DISTILLED], here.views[MODEL_SSCD_DISTILLED])


def test_only_the_models_asked_for_are_run(workers: FingerprintWorkers) -> None:
    data = distinct_photos(1, seed=5)[0].read_bytes()
    assert workers.compute(data).embeddings == {}
    assert set(workers.compute(data, embed=[MODEL_SSCD_DISTILLED]).embeddings) == {MODEL_SSCD_DISTILLED}


def test_an_undecodable_image_fails_with_its_own_status_and_reason_across_the_process_boundary(
    workers: FingerprintWorkers,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        workers.compute(b"definitely not an image")
    local = FingerprintWorkers(64_000_000, processes=0)
    with pytest.raises(InvalidArgument) as expected:
        local.compute(b"definitely not an image")
    assert (caught.value.reason, caught.value.message) == (expected.value.reason, expected.value.message)


def test_a_killed_worker_fails_at_most_the_requests_in_flight_and_the_pool_recovers(tmp_path: Path) -> None:
    handle: ServerHandle = start_server(tmp_path / "data", workers=2)
    try:
        photos = distinct_photos(2, seed=6)
        handle.client.create_list("banned")
        handle.client.add("banned", photos[0].read_bytes())
        pids = worker_pids()
        assert len(pids) >= 2, "one process per worker"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        outcomes: list[str] = []
        for _ in range(3):
            try:
                outcomes.append(handle.client.check(photos[0].read_bytes(), ["banned"]).decision)
            except LookalikeError as error:
                outcomes.append(error.code)
        assert outcomes[-1] == "reject", outcomes
        assert set(outcomes) <= {"reject", "INTERNAL"}
        assert handle.client.check(photos[1].read_bytes(), ["banned"]).decision == "accept"
    finally:
        handle.stop()


def test_concurrent_callers_each_get_their_own_images_fingerprint(workers: FingerprintWorkers) -> None:
    """More callers than workers: requests queue at the workers, replies come back in order, none crossed."""
    datas = [photo.read_bytes() for photo in distinct_photos(8, seed=7)]
    local = FingerprintWorkers(64_000_000, processes=0)
    expected = [local.compute(data).hashes for data in datas]
    with ThreadPoolExecutor(max_workers=len(datas)) as pool:
        for _ in range(3):
            assert list(pool.map(lambda data: workers.compute(data).hashes, datas)) == expected


def test_a_worker_that_died_while_idle_fails_no_request(workers: FingerprintWorkers) -> None:
    data = distinct_photos(1, seed=8)[0].read_bytes()
    expected = workers.compute(data).hashes
    for pid in worker_pids():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda _: workers.compute(data).hashes, range(4))) == [expected] * 4
