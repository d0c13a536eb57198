"""The distilled model's own costs, and two ways to cut them tried for issue #20 (neither kept).

1. ONNX Runtime's graph optimisations saved once: session start-up and per-picture time of
   today's session (the graph optimised at every start, ORT_ENABLE_ALL) against a session on the
   optimised graph saved to a file (ORT_ENABLE_ALL or EXTENDED, loaded with optimisations off).
2. The distilled SSCD quantised to int8 (onnxruntime.quantization, static, QDQ, int8 weights per
   channel, uint8 activations) after its float16 weights are made float32, calibrated on every
   fourth corpus photo; each variant judged by the cosine of every corpus photo's int8 embedding
   to its float one (a list model needs at least 0.99 for every photo) and by its time.

3. Why a batch (`--device cuda`) holds pictures of one size only: the cosine between a picture's
   embedding and that of the same picture padded on the right (black, or its edge repeated), as
   a batch of mixed sizes would need.

Sessions are single-threaded, as in the fingerprint workers; arms alternate in rounds within one
process, so a busy box slows them alike. Quantisation needs the `onnx` package, which Lookalike
does not depend on: `.venv/bin/pip install onnx`.

    .venv/bin/python -m benchmarks.model [--rounds 5]

Prints tables and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from PIL import Image

from benchmarks.accuracy import DEFAULT_CORPUS, hardware
from benchmarks.metrics import format_table
from lookalike.server.embedder import MODEL_SSCD_DISTILLED, embedding_input, model_path

LEVELS = ort.GraphOptimizationLevel
INT8_VARIANTS: dict[str, dict[str, Any]] = {
    "convolutions, min–max": {},
    "convolutions, moving-average min–max": {"extra_options": {"CalibMovingAverage": True}},
    "convolutions, ReLUs and sums; first 2 and last 4 convolutions left float; moving average": {
        "op_types_to_quantize": ["Conv", "Relu", "Add"],
        "skip_convolutions": (2, 4),
        "extra_options": {"CalibMovingAverage": True},
    },
}


def session(path: Path, level: ort.GraphOptimizationLevel, saved: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = level
    if saved is not None:
        options.optimized_model_filepath = str(saved)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def started_in(path: Path, level: ort.GraphOptimizationLevel) -> tuple[ort.InferenceSession, float]:
    began = time.perf_counter()
    made = session(path, level)
    return made, time.perf_counter() - began


def per_picture_ms(made: ort.InferenceSession, pictures: list[np.ndarray]) -> float:
    """Median milliseconds of one picture, the first run (set-up) left out."""
    name = made.get_inputs()[0].name
    made.run(None, {name: pictures[0]})
    times = []
    for picture in pictures:
        began = time.perf_counter()
        made.run(None, {name: picture})
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def embeddings(made: ort.InferenceSession, pictures: list[np.ndarray]) -> np.ndarray:
    name = made.get_inputs()[0].name
    rows = np.stack([made.run(None, {name: picture})[0][0] for picture in pictures])
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


def saved_graph(pictures: list[np.ndarray], folder: Path, rounds: int) -> list[dict[str, Any]]:
    """Start-up and per-picture time of today's session and of sessions on a saved optimised graph."""
    source = model_path(MODEL_SSCD_DISTILLED)
    arms = {"today: optimised at every start (ALL)": (source, LEVELS.ORT_ENABLE_ALL)}
    for label, level in (("ALL", LEVELS.ORT_ENABLE_ALL), ("EXTENDED", LEVELS.ORT_ENABLE_EXTENDED)):
        saved = folder / f"optimised-{label}.onnx"
        session(source, level, saved)
        arms[f"saved once ({label}), loaded with optimisations off"] = (saved, LEVELS.ORT_DISABLE_ALL)
    reference = embeddings(session(source, LEVELS.ORT_ENABLE_ALL), pictures)
    starts: dict[str, list[float]] = {arm: [] for arm in arms}
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    agree: dict[str, float] = {}
    for _ in range(rounds):
        for arm, (path, level) in arms.items():
            made, seconds = started_in(path, level)
            starts[arm].append(seconds * 1000)
            times[arm].append(per_picture_ms(made, pictures))
            agree.setdefault(arm, float((embeddings(made, pictures) * reference).sum(axis=1).min()))
    return [
        {
            "arm": arm,
            "startup_ms_median": statistics.median(starts[arm]),
            "per_picture_ms_median": statistics.median(times[arm]),
            "lowest_cosine_to_today": agree[arm],
        }
        for arm in arms
    ]


def padding(pictures: list[np.ndarray]) -> list[dict[str, Any]]:
    """Lowest and mean cosine between each picture's embedding and its embedding once padded on the right."""
    made = session(model_path(MODEL_SSCD_DISTILLED), LEVELS.ORT_ENABLE_ALL)
    plain = embeddings(made, pictures)
    rows = []
    modes: tuple[tuple[Literal["constant", "edge"], str], ...] = (("constant", "black"), ("edge", "edge repeated"))
    for mode, label in modes:
        for share in (0.05, 0.25):
            padded = [
                np.pad(p, ((0, 0), (0, 0), (0, max(1, round(int(p.shape[2]) * share))), (0, 0)), mode=mode)
                for p in pictures
            ]
            cosines = (embeddings(made, padded) * plain).sum(axis=1)
            rows.append(
                {
                    "padding": f"{label}, {share:.0%} of the width",
                    "cosine_lowest": float(cosines.min()),
                    "cosine_mean": float(cosines.mean()),
                }
            )
    return rows


def float32_graph(source: Path, target: Path) -> None:
    """The model with its float16 weights (each behind a Cast) stored as float32: what the quantiser reads."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(source))
    weights = {weight.name: weight for weight in graph.graph.initializer}
    kept = []
    for node in graph.graph.node:
        weight = weights.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if weight is not None and weight.data_type == onnx.TensorProto.FLOAT16:
            as_float = numpy_helper.to_array(weight).astype(np.float32)
            graph.graph.initializer.append(numpy_helper.from_array(as_float, node.output[0]))
        else:
            kept.append(node)
    del graph.graph.node[:]
    graph.graph.node.extend(kept)
    used = {name for node in graph.graph.node for name in node.input}
    needed = [weight for weight in graph.graph.initializer if weight.name in used]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(needed)
    onnx.save(graph, str(target))


def quantised(
    float_model: Path, target: Path, calibration: list[np.ndarray], settings: dict[str, Any]
) -> tuple[Path, float]:
    """One int8 variant of `float_model`, and the seconds quantising it took."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Pictures(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._left: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            picture = next(self._left, None)
            return None if picture is None else {"image": picture}

    convolutions = [node.name for node in onnx.load(str(float_model)).graph.node if node.op_type == "Conv"]
    first, last = settings.get("skip_convolutions", (0, 0))
    began = time.perf_counter()
    quantize_static(
        str(float_model),
        str(target),
        Pictures(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=settings.get("op_types_to_quantize", ["Conv"]),
        nodes_to_exclude=convolutions[:first] + convolutions[len(convolutions) - last :],
        extra_options=settings.get("extra_options", {}),
    )
    return target, time.perf_counter() - began


def int8(pictures: list[np.ndarray], folder: Path, rounds: int) -> list[dict[str, Any]]:
    """Each int8 variant's agreement with the float model over every picture, and both models' time."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_model = folder / "float32.onnx"
    float32_graph(model_path(MODEL_SSCD_DISTILLED), float_model)
    prepared = folder / "float32-prepared.onnx"
    quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
    today = session(model_path(MODEL_SSCD_DISTILLED), LEVELS.ORT_ENABLE_ALL)
    reference = embeddings(today, pictures)
    timed = pictures[:: max(1, len(pictures) // 40)]
    rows = []
    for number, (label, settings) in enumerate(INT8_VARIANTS.items()):
        path, seconds = quantised(prepared, folder / f"int8-{number}.onnx", pictures[::4], settings)
        made = session(path, LEVELS.ORT_ENABLE_ALL)
        cosines = (embeddings(made, pictures) * reference).sum(axis=1)
        float_ms, int8_ms = [], []
        for _ in range(rounds):
            float_ms.append(per_picture_ms(today, timed))
            int8_ms.append(per_picture_ms(made, timed))
        rows.append(
            {
                "variant": label,
                "quantise_s": seconds,
                "cosine_lowest": float(cosines.min()),
                "cosine_1st_percentile": float(np.percentile(cosines, 1)),
                "cosine_mean": float(cosines.mean()),
                "float_ms_median": statistics.median(float_ms),
                "int8_ms_median": statistics.median(int8_ms),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the timed arms")
    args = parser.parse_args(argv)
    photos = sorted(args.corpus.glob("*.jpg"))
    if not photos:
        print(f"no photos in {args.corpus}; pass --corpus or set LOOKALIKE_CORPUS", file=sys.stderr)
        return 2
    pictures = [np.asarray(embedding_input(Image.open(p).convert("RGB")), dtype=np.uint8)[np.newaxis] for p in photos]
    with tempfile.TemporaryDirectory(prefix="lookalike-model-") as folder:
        graph = saved_graph(pictures[::10], Path(folder), args.rounds)
        print(f"Session start-up and time per picture ({MODEL_SSCD_DISTILLED}, one thread, {args.rounds} rounds)\n")
        print(format_table(graph, ["arm", "startup_ms_median", "per_picture_ms_median", "lowest_cosine_to_today"]))
        padded = padding(pictures[::8])
        print(f"\nPadded pictures against the same pictures unpadded ({len(pictures[::8])} corpus photos)\n")
        print(format_table(padded, ["padding", "cosine_lowest", "cosine_mean"]))
        try:
            quantised_rows = int8(pictures, Path(folder), args.rounds)
        except ModuleNotFoundError as missing:
            print(f"\nint8: skipped, {missing.name} is not installed (.venv/bin/pip install onnx)")
            quantised_rows = []
    if quantised_rows:
        print(f"\nint8 against float over {len(pictures)} corpus photos (a list model needs cosine ≥ 0.99 for each)\n")
        columns = ["variant", "cosine_lowest", "cosine_1st_percentile", "cosine_mean", "float_ms_median"]
        print(format_table(quantised_rows, [*columns, "int8_ms_median"]))
    result = {"hardware": hardware(), "photos": len(pictures), "saved_graph": graph, "padding": padded}
    print(json.dumps({**result, "int8": quantised_rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
