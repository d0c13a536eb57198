"""Fingerprinting in worker processes, one per core, each single-threaded.

Decoding, PDQ and pHash hold Python's interpreter lock for much of their time, so
threads of one process contend for it; processes do not. The server process keeps
what needs shared state (LMDB, indexes, gRPC) and sends each image's bytes to a
worker, which returns plain arrays. A worker that dies (a decoder crash, the kernel's
OOM killer) fails only the request it held: the pool is replaced and later requests
go on. With `processes=0` the work runs in the calling thread instead (tools, tests).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from client.errors import LookalikeError
from server.embedder import EmbedderPool
from server.fingerprint import Fingerprinted, Fingerprinter

log = logging.getLogger(__name__)

_worker: Fingerprinter | None = None


class WorkerCrashed(LookalikeError):
    code = "INTERNAL"


def _exit_with_parent() -> None:
    """End this worker when the server process dies. A SIGKILLed or OOM-killed server runs no
    shutdown code, and a worker blocked on its task queue would then idle forever, holding its
    models' memory: each crash and restart would leave more of them behind."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # readable once the parent is gone
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start_worker(max_pixels: int, models: Sequence[str]) -> None:
    global _worker
    from index import configure_threads

    _exit_with_parent()

    configure_threads(1)
    _worker = Fingerprinter(max_pixels, EmbedderPool(threads=1))
    for model in models:  # load models before the first request, not during it
        _worker.embedders.get(model)


def _compute(data: bytes, embed: tuple[str, ...], views: tuple[str, ...]) -> Fingerprinted:
    assert _worker is not None, "worker not initialised"
    return _worker.compute(data, embed, views)


class FingerprintWorkers:
    """`compute()` in a pool of worker processes, or in the caller's thread when `processes` is 0."""

    def __init__(self, max_pixels: int, processes: int, models: Sequence[str] = ()) -> None:
        self.max_pixels = max_pixels
        self.processes = processes
        self.models = tuple(models)
        self.local = Fingerprinter(max_pixels, EmbedderPool(threads=1)) if processes == 0 else None
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        if processes:
            self._pool = self._new_pool()
            # Start every worker now (spawning takes a second or two), so the first requests do not wait.
            for future in [self._pool.submit(_start_worker_probe) for _ in range(processes)]:
                future.result()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a process that runs gRPC threads
            initializer=_start_worker,
            initargs=(self.max_pixels, self.models),
        )

    def compute(self, data: bytes, embed: Sequence[str] = (), views: Sequence[str] = ()) -> Fingerprinted:
        if self.local is not None:
            return self.local.compute(data, embed, views)
        pool = self._pool
        assert pool is not None, "workers are shut down"
        try:
            return pool.submit(_compute, data, tuple(embed), tuple(views)).result()
        except BrokenProcessPool:
            self._replace(pool)
            raise WorkerCrashed(
                "fingerprinting this image crashed a worker process; the image was not processed", "WORKER_CRASHED"
            ) from None

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                log.error("a fingerprint worker died; starting a new pool")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()

    def shutdown(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


def _start_worker_probe() -> bool:
    return _worker is not None
