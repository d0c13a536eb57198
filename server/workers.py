"""Fingerprinting in worker processes, one per core, each single-threaded.

Decoding, PDQ and pHash hold Python's interpreter lock for much of their time, so
threads of one process contend for it; processes do not. The server process keeps
what needs shared state (LMDB, indexes, gRPC) and sends each image's bytes to a
worker over its own pipe, which returns plain arrays.

The calling thread writes the request and reads the reply itself: no pool manager or
feeder thread stands between (each hop costs the server process CPU and, on a busy box,
a wait for the interpreter lock while the worker idles). Each worker may hold one image
more than it works on (`QUEUED_PER_WORKER`), waiting in its pipe, so it starts the next
image the moment it finishes one, however long the server process takes to read the reply
and hand out the next slot. Replies come back in the order requests went in, and each
caller reads its own in turn.

A worker that dies (a decoder crash, the kernel's OOM killer) fails only the requests it
held: it is replaced and later requests go on. With `processes=0` the work runs in the
calling thread instead (tools, tests).

With a batcher (`--device cuda`), the workers load no model: they return the pictures at the
model's input size, and the calling thread hands them to the batcher, which runs the model in
the server process for the pictures of many checks at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import traceback
from collections import deque
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from lookalike.client.errors import LookalikeError
from lookalike.server.embedder import EmbedderPool, EmbeddingBatcher
from lookalike.server.fingerprint import Fingerprinted, Fingerprinter, ModelInputs

log = logging.getLogger(__name__)

QUEUED_PER_WORKER = 1
"""Images a worker holds beyond the one it works on, so it never waits for the server process between two."""
_STARTED = "started"
"""A worker's reply to the start-up probe (a request of None), once its models are loaded."""
_COMPUTE, _MODEL_INPUTS, _QUERY_KEYPOINTS = "compute", "model_inputs", "query_keypoints"
"""What a request asks of a worker: `Fingerprinter.compute`, `.model_inputs` or `.query_keypoints`."""
STOP_SECONDS = 10.0


class WorkerCrashed(LookalikeError):
    code = "INTERNAL"


def _exit_with_parent() -> None:
    """End this worker when the server process dies. A SIGKILLed or OOM-killed server runs no
    shutdown code, and a worker blocked on its pipe would then idle forever, holding its
    models' memory: each crash and restart would leave more of them behind."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # readable once the parent is gone
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve(connection: multiprocessing.connection.Connection, max_pixels: int, models: Sequence[str]) -> None:
    """A worker's life: load the models, then answer requests in order until the pipe closes."""
    from lookalike.index import configure_threads
    from lookalike.server.memory import map_large_blocks_apart

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it closes our pipe
    _exit_with_parent()
    configure_threads(1)
    map_large_blocks_apart()  # an image's bytes and pixels go back once it is done (server/memory.py)
    fingerprinter = Fingerprinter(max_pixels, EmbedderPool(threads=1))
    for model in models:  # load models before the first request, not during it
        fingerprinter.embedders.get(model)
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return  # the server closed the pipe (shutdown) or is gone
        if request is None:
            connection.send(_STARTED)
            continue
        kind, data, embed, views, thumbnail, keypoints, view_hashes = request
        reply: tuple[bool, Any]
        try:
            if kind == _QUERY_KEYPOINTS:
                reply = (True, fingerprinter.query_keypoints(data))
            else:
                work = fingerprinter.model_inputs if kind == _MODEL_INPUTS else fingerprinter.compute
                reply = (True, work(data, embed, views, thumbnail, keypoints, view_hashes))
        except LookalikeError as error:  # the image's fault (undecodable, too large): status and reason travel
            reply = (False, error)
        except Exception as error:  # noqa: BLE001 - a bug: raised in the caller, with where it happened here
            error.add_note(f"in a fingerprint worker process:\n{traceback.format_exc()}")
            reply = (False, error)
        try:
            connection.send(reply)
        except Exception as error:  # noqa: BLE001 - an exception that does not pickle: send what it says
            connection.send((False, RuntimeError(f"{type(error).__name__}: {error}")))


class _Worker:
    """One worker process, its pipe, and the callers waiting for its replies, in the order they asked."""

    def __init__(self, context: Any, max_pixels: int, models: Sequence[str]) -> None:
        self.connection, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child_end, max_pixels, tuple(models)), name="fingerprint-worker", daemon=True
        )
        self.process.start()
        child_end.close()
        self.in_hand = 0
        """Requests sent and not yet answered (guarded by the pool's lock)."""
        self._sending = threading.Lock()
        self._turns: deque[threading.Event] = deque()

    def ask(self, request: object) -> Any:
        """Send a request, then read its reply once those before it are read; EOFError/OSError: the worker died."""
        turn = threading.Event()
        with self._sending:  # the order of `_turns` is the order of the requests in the pipe
            self._turns.append(turn)
            if self._turns[0] is turn:
                turn.set()
            try:
                self.connection.send(request)
            except BaseException:
                first = self._turns[0] is turn
                self._turns.remove(turn)
                if first and self._turns:
                    self._turns[0].set()
                raise
        turn.wait()
        try:
            return self.connection.recv()
        finally:
            self._next_turn()

    def _next_turn(self) -> None:
        with self._sending:
            self._turns.popleft()
            if self._turns:
                self._turns[0].set()

    def stop(self) -> None:
        self.connection.close()  # the worker reads EOF and returns
        self.process.join(STOP_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class FingerprintWorkers:
    """`compute()` in worker processes, or in the caller's thread when `processes` is 0; the models run
    there too, or in `batcher` when one is given (which the workers then own and shut down)."""

    def __init__(
        self, max_pixels: int, processes: int, models: Sequence[str] = (), batcher: EmbeddingBatcher | None = None
    ) -> None:
        self.max_pixels = max_pixels
        self.processes = processes
        self.batcher = batcher
        self.models = () if batcher is not None else tuple(models)
        """Models each worker loads at start (none when the batcher runs them)."""
        self.local = Fingerprinter(max_pixels, EmbedderPool(threads=1)) if processes == 0 else None
        self.queued = QUEUED_PER_WORKER * processes + (0 if batcher is None else batcher.max_batch)
        """Images that may wait at the workers (or for a batch) beyond those being worked on: callers may hold
        as many more slots, so the workers stay busy while a batch fills."""
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs gRPC threads
        self._lock = threading.Condition()
        self._workers = [self._start() for _ in range(processes)]
        self._stopped = False
        # Wait until every worker has loaded its models (seconds), so the first requests do not wait.
        for worker in self._workers:
            worker.connection.send(None)
        for worker in self._workers:
            if worker.connection.recv() != _STARTED:
                raise RuntimeError("a fingerprint worker did not start")

    def _start(self) -> _Worker:
        return _Worker(self._context, self.max_pixels, self.models)

    def compute(
        self,
        data: bytes,
        embed: Sequence[str] = (),
        views: Sequence[str] = (),
        thumbnail: bool = False,
        keypoints: bool = False,
        view_hashes: bool = False,
    ) -> Fingerprinted:
        asked = (data, embed, views, thumbnail, keypoints, view_hashes)
        if self.local is not None:
            if self.batcher is None:
                return self.local.compute(*asked)
            return self.local.model_inputs(*asked).embedded(self.batcher)
        kind = _COMPUTE if self.batcher is None else _MODEL_INPUTS
        reply = self._ask((kind, data, tuple(embed), tuple(views), thumbnail, keypoints, view_hashes))
        if isinstance(reply, ModelInputs) and self.batcher is not None:
            return reply.embedded(self.batcher)
        assert isinstance(reply, Fingerprinted)
        return reply

    def query_keypoints(self, data: bytes) -> bytes:
        """A checked picture's keypoints (`Fingerprinter.query_keypoints`), from a worker like its fingerprint."""
        if self.local is not None:
            return self.local.query_keypoints(data)
        reply = self._ask((_QUERY_KEYPOINTS, data, (), (), False, False, False))
        assert isinstance(reply, bytes)
        return reply

    def _ask(self, request: tuple[str, bytes, tuple[str, ...], tuple[str, ...], bool, bool, bool]) -> object:
        """One request to the least busy worker; its reply, or its error raised here."""
        worker = self._take()
        try:
            ok, value = worker.ask(request)
        except (EOFError, OSError):
            self._replace(worker)
            raise WorkerCrashed(
                "fingerprinting this image crashed a worker process; the image was not processed", "WORKER_CRASHED"
            ) from None
        finally:
            self._give_back(worker)
        if not ok:
            raise value
        return value

    def _take(self) -> _Worker:
        """The live worker holding the fewest images, waiting while every one holds all it may."""
        limit = 1 + QUEUED_PER_WORKER
        with self._lock:
            while True:
                if self._stopped:
                    raise RuntimeError("workers are shut down")
                worker = min(self._workers, key=lambda w: w.in_hand)
                if worker.in_hand < limit:
                    break
                self._lock.wait()
            if not worker.process.is_alive():  # died while idle (else its callers fail): this request need not
                log.error("a fingerprint worker died (exit code %s); starting another", worker.process.exitcode)
                worker = self._swap(worker)
            worker.in_hand += 1
            return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            worker.in_hand -= 1
            self._lock.notify()

    def _replace(self, dead: _Worker) -> None:
        with self._lock:
            if dead in self._workers:
                log.error("a fingerprint worker died (exit code %s); starting another", dead.process.exitcode)
                self._swap(dead)

    def _swap(self, dead: _Worker) -> _Worker:
        """Put a new worker in the dead one's place (lock held); it loads its models while requests queue for it."""
        fresh = self._start()
        self._workers[self._workers.index(dead)] = fresh
        dead.process.join(0)  # its pipe closes once the callers still reading from it are done
        self._lock.notify_all()
        return fresh

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            workers, self._workers = self._workers, []
            self._lock.notify_all()
        for worker in workers:
            worker.stop()
        if self.batcher is not None:
            self.batcher.shutdown()  # runs the pictures already queued: their callers get their answers
