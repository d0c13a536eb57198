"""Per-image CPU cost of each stage of a check, on one core, over the dev corpus.

Stages, as a fingerprint worker runs them: decoding to the sizes the work needs (a JPEG
draft, then the model's input; a full decode beside it for comparison), SHA-256 and MD5,
PDQ (all eight dihedral variants, one pass, from the draft), pHash, region detection (on the
draft; what it finds is cut from the picture decoded finer, which plain photos never need),
each embedding model; beside them the model's own work (the JPEG draft-decoded to the
model's input, resized, embedded: what `benchmarks/throughput.py` calls the model's own
rate); then index search (PDQ range search and embedding top-k over a list of `--entries`
synthetic entries), and the RPC round trip of a check against an empty list minus the
in-process cost of the same check. The sum of the worker's stages is the floor of a
check: what one core must spend per image whatever the server around it does. Stages
are timed by the thread's CPU clock, the round trip by the wall clock.

    .venv/bin/python -m benchmarks.stages [--images 60] [--entries 100000] [--long-side 1600]

Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.accuracy import DEFAULT_CORPUS, hardware
from benchmarks.metrics import format_table
from benchmarks.throughput import at_long_side, model_input
from lookalike.client import LookalikeClient
from lookalike.index import ListIndex, configure_threads
from lookalike.index.list_index import Layout
from lookalike.server.app import create_server
from lookalike.server.config import ServerConfig
from lookalike.server.embedder import MODELS, EmbedderPool, embedding_input
from lookalike.server.fingerprint import hashes_of_view, phash_variants
from lookalike.server.imaging import decode_image
from lookalike.server.keypoints import agreeing_keypoints, entry_keypoints, query_keypoints
from lookalike.server.pdq import pdq_hashes
from lookalike.server.regions import content_box, find_regions, finder_picture, screen_quad

MAX_PIXELS = 100_000_000


def timed(
    function: Callable[..., object], *args: Any, repeat: int = 1, clock: Callable[[], float] = time.thread_time
) -> float:
    """Seconds one call takes, best of `repeat` (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeat):
        started = clock()
        function(*args)
        best = min(best, clock() - started)
    return best


def digests(data: bytes) -> tuple[bytes, bytes]:
    return hashlib.sha256(data).digest(), hashlib.md5(data, usedforsecurity=False).digest()


def full_decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def stage_costs(datas: Sequence[bytes]) -> dict[str, list[float]]:
    """Milliseconds per image of each stage."""
    embedders = EmbedderPool(threads=1)
    costs: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        costs.setdefault(name, []).append(seconds * 1000)

    warm = decode_image(datas[0], MAX_PIXELS)  # load and warm up (imports, models) outside the timings
    pdq_hashes(warm.pdq_rgb, warm.original_size)
    phash_variants(warm.rgb)
    find_regions(finder_picture(warm.upright), warm.upright.size)
    for model in MODELS:
        embedders.get(model).embed(model_input(datas[0]))
    for data in datas:
        record("decode, full (for comparison)", timed(full_decode, data))
        record("decode to the draft and the model's input", timed(decode_image, data, MAX_PIXELS))
        decoded = decode_image(data, MAX_PIXELS)
        record("sha256 + md5", timed(digests, data))
        record("pdq (8 variants)", timed(pdq_hashes, decoded.pdq_rgb, decoded.original_size))
        small = embedding_input(decoded.rgb)  # the picture itself unless smaller than the model's input
        record("phash", timed(phash_variants, small))
        record("a view's pdq + phash (each picture found inside, each other frame)", timed(hashes_of_view, small))
        upright = decoded.upright
        record("region detection", timed(lambda: find_regions(finder_picture(upright), upright.size)))  # noqa: B023
        finder_input = finder_picture(upright)
        record(
            "region detection, on its small grey copy (made elsewhere)", timed(find_regions, finder_input, upright.size)
        )
        record("region detection, flat canvas alone (as before frames, grids, tilts)", timed(content_box, upright))
        record(
            "region detection, screen finder alone (part of the above)", timed(screen_quad, finder_input, upright.size)
        )
        record("keypoints an entry keeps (each add)", timed(entry_keypoints, decoded.rgb))
        record(
            "keypoints of a check's picture, decode included (unsure checks only)",
            timed(lambda: query_keypoints(decode_image(data, MAX_PIXELS).rgb)),  # noqa: B023
        )
        kept, found = entry_keypoints(decoded.rgb), query_keypoints(decoded.rgb)
        record("keypoints compared with one candidate's (unsure checks only)", timed(agreeing_keypoints, found, kept))
        for model in MODELS:
            embedder = embedders.get(model)
            record(f"embed {model}", timed(embedder.embed, small))
            record(f"model only: draft + resize + embed {model}", timed(lambda: embedder.embed(model_input(data))))  # noqa: B023
    return costs


def batch_costs(datas: Sequence[bytes], batch: int = 8) -> dict[str, list[float]]:
    """Milliseconds per image embedded alone vs in one batch (inputs made one size, 384×288)."""
    pictures = [decode_image(data, MAX_PIXELS).rgb.resize((384, 288)) for data in datas[:batch]]
    pixels = np.stack([np.asarray(picture, dtype=np.uint8) for picture in pictures])
    costs: dict[str, list[float]] = {}
    for model in MODELS:
        embedder = EmbedderPool(threads=1).get(model)
        embedder.embed_batch(pixels)
        alone = timed(lambda: [embedder.embed_batch(one[np.newaxis]) for one in pixels])  # noqa: B023
        together = timed(embedder.embed_batch, pixels)
        costs[f"embed {model}, alone (per image)"] = [alone * 1000 / len(pixels)]
        costs[f"embed {model}, batch of {len(pixels)} (per image)"] = [together * 1000 / len(pixels)]
    return costs


def search_costs(entries: int, queries: int, seed: int = 0) -> dict[str, list[float]]:
    """Milliseconds per query of each index search over a synthetic list: exact, and in the
    layout a server picks for a list of this size (IVF past the exact limits)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(entries, 32), dtype=np.uint8)
    vectors = rng.normal(size=(entries, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(entries, dtype=np.int64)
    chosen = Layout.for_size(entries, entries)
    indexes = {"exact": ListIndex.build(ids, codes, vectors, change=1, layout=Layout())}
    if chosen != Layout(trained_for=chosen.trained_for):
        pdq_side = f"PDQ in {chosen.pdq_cells} cells" if chosen.pdq_cells else "PDQ exact"
        name = f"server layout (embeddings in {chosen.vector_cells} cells, {pdq_side})"
        indexes[name] = ListIndex.build(ids, codes, vectors, change=1, layout=chosen)
    costs: dict[str, list[float]] = {}
    for position in rng.integers(0, entries, size=queries):
        code = codes[position].tobytes()
        for name, index in indexes.items():
            costs.setdefault(f"pdq range search (8 variants, r=63), {name}", []).append(
                timed(index.search_pdq, [code] * 8, 63) * 1000
            )
            # A picture check of a list whose entries all have embeddings looks up its own code only.
            costs.setdefault(f"pdq range search (own code, r=63), {name}", []).append(
                timed(index.search_pdq, [code], 63) * 1000
            )
            costs.setdefault(f"embedding top-10 (2 views), {name}", []).append(
                timed(index.search_vectors, vectors[[position, position]], 10) * 1000
            )
    return costs


def rpc_overhead(datas: Sequence[bytes]) -> dict[str, list[float]]:
    """A check's round trip through gRPC minus the same check called in process."""
    costs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        config = ServerConfig(listen="127.0.0.1:0", http_listen="off", data=Path(folder), map_size=1 << 28)
        running = create_server(config)
        try:
            running.service.create_list("empty")
            with LookalikeClient(f"127.0.0.1:{running.port}") as client:
                client.check(datas[0], ["empty"])
                for data in datas:
                    remote = timed(client.check, data, ["empty"], repeat=2, clock=time.perf_counter)
                    local = timed(running.service.check, data, ["empty"], repeat=2, clock=time.perf_counter)
                    costs.setdefault("rpc overhead (check)", []).append((remote - local) * 1000)
        finally:
            running.stop(grace=1)
    return costs


def summarise(costs: dict[str, list[float]]) -> list[dict[str, object]]:
    return [
        {
            "stage": name,
            "mean ms": statistics.fmean(values),
            "p50 ms": statistics.median(values),
            "p99 ms": float(np.percentile(values, 99)),
            "n": len(values),
        }
        for name, values in costs.items()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--images", type=int, default=60, help="photos timed (spread over the corpus)")
    parser.add_argument("--entries", type=int, default=100_000, help="synthetic list size for index search")
    parser.add_argument("--long-side", type=int, default=0, help="re-encode the photos this long (0: as they are)")
    args = parser.parse_args(argv)
    photos = sorted(args.corpus.glob("*.jpg"))
    if not photos:
        print(f"no photos in {args.corpus}; pass --corpus or set LOOKALIKE_CORPUS", file=sys.stderr)
        return 2
    step = max(1, len(photos) // args.images)
    datas = [p.read_bytes() for p in photos[::step][: args.images]]
    if args.long_side:
        datas = at_long_side(datas, args.long_side)
    configure_threads(1)
    costs = stage_costs(datas)
    costs.update(batch_costs(datas))
    costs.update(search_costs(args.entries, len(datas)))
    costs.update(rpc_overhead(datas))
    rows = summarise(costs)
    mean = {str(row["stage"]): float(row["mean ms"]) for row in rows}  # type: ignore[arg-type]
    worker = (
        "decode to the draft and the model's input",
        "sha256 + md5",
        "pdq (8 variants)",
        "phash",
        "region detection",
    )
    floors = {model: sum(mean[stage] for stage in worker) + mean[f"embed {model}"] for model in MODELS}
    models = {model: mean[f"model only: draft + resize + embed {model}"] for model in MODELS}
    print(f"Per-image CPU on one core, {len(datas)} photos from {args.corpus}; {args.entries:,} entries searched\n")
    print(format_table(rows, ["stage", "mean ms", "p50 ms", "p99 ms", "n"]))
    for model, floor in floors.items():
        print(
            f"\nfloor of a check with {model}: {floor:.1f} ms (decode + hashes + region + embedding); "
            f"the model's own work {models[model]:.1f} ms, {models[model] / floor:.2f} of the floor"
        )
    print(json.dumps({"hardware": hardware(), "stages": rows, "floor_ms": floors, "model_only_ms": models}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
