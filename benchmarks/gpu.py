"""Checks per second and p99 latency with the model batched on a GPU (`--device cuda`), at batch
sizes 1, 8, 32 and 128, against the CPU path, in one run.

Each row is a real `lookalike serve` process on loopback over the same list of `--entries`
synthetic entries, checked with corpus photos by concurrent clients for `--seconds`: first the
CPU path (`--device cpu`: each fingerprint worker runs the model), then one server per batch
size (`--device cuda --embed-batch N`, with 2N clients, at least 16, and enough threads for all
of them). The server's own closing line gives the batches it actually ran. Then, in this
process, the model alone through the batcher (pictures per second and per-picture p99 with 2N
callers, pictures of one size) and the lowest cosine between a corpus photo's GPU embedding,
batched, and its CPU embedding (the two paths must agree: at least 0.999).

Where no GPU is usable it says so, first and in the JSON (`gpu_found`, `no_gpu_reason`), and
runs the batched rows on the CPU provider instead (`--device cpu --embed-batch N`): that checks
the script and the batching; those are not GPU figures.

    .venv/bin/python -m benchmarks.gpu [--entries 100000] [--seconds 20] [--batches 1,8,32,128]

Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.accuracy import DEFAULT_CORPUS, hardware
from benchmarks.metrics import format_table
from benchmarks.throughput import ServerProcess, populate, run_load
from lookalike.server.config import usable_cores
from lookalike.server.embedder import (
    DEVICE_CPU,
    DEVICE_CUDA,
    EmbedderPool,
    EmbeddingBatcher,
    embedding_input,
    why_no_gpu,
)
from lookalike.server.scoring import DEFAULT_MODEL

WINDOW = 0.005
"""Seconds a picture waits for others (`--embed-window`): a few milliseconds, not yet tuned on a GPU."""


def clients_for(batch: int) -> int:
    """Enough concurrent checks to fill a batch while the workers prepare the next one."""
    return max(16, 2 * batch)


def serve_and_load(
    data: Path, flags: Sequence[str], datas: list[bytes], clients: int, seconds: float
) -> dict[str, Any]:
    """One server with `flags`, checked by `clients` for `seconds`; its load figures and the batches it ran."""
    threads = str(clients + 8)
    server = ServerProcess(data, *flags, "--threads", threads, "--max-concurrent-requests", threads)
    try:
        load = run_load(server.address, datas, clients, seconds, server.process.pid)
    finally:
        server.stop()
    batches = re.search(r"model batches: (\d+) inferences, ([\d.]+) pictures each on average", server.log.read_text())
    load["mean_batch"] = float(batches.group(2)) if batches else 1.0
    return load


def one_size(datas: list[bytes], count: int) -> list[np.ndarray]:
    """Model inputs of up to `count` corpus photos of the most common size (only those share an inference)."""
    by_size: dict[tuple[int, int], list[np.ndarray]] = {}
    for data in datas:
        picture = embedding_input(Image.open(io.BytesIO(data)).convert("RGB"))
        by_size.setdefault(picture.size, []).append(np.asarray(picture, dtype=np.uint8))
    return max(by_size.values(), key=len)[:count]


def model_alone(
    pool: EmbedderPool, model: str, pictures: list[np.ndarray], batch: int, seconds: float
) -> dict[str, Any]:
    """Pictures per second through the batcher with 2 × `batch` callers, and each picture's latency."""
    batcher = EmbeddingBatcher(pool, batch, WINDOW)
    batcher.embed(model, pictures[0])  # the first inference of a size sets up its kernels
    batcher.batch_sizes.clear()
    callers = 2 * batch
    latencies: list[list[float]] = [[] for _ in range(callers)]
    deadline = time.monotonic() + seconds

    def call(number: int) -> None:
        position = number
        while time.monotonic() < deadline:
            started = time.perf_counter()
            batcher.embed(model, pictures[position % len(pictures)])
            latencies[number].append(time.perf_counter() - started)
            position += callers

    threads = [threading.Thread(target=call, args=(n,)) for n in range(callers)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    batcher.shutdown()
    flat = np.array([x for per_caller in latencies for x in per_caller]) * 1000
    inferences = sum(batcher.batch_sizes.values())
    return {
        "batch": batch,
        "pictures_per_s": len(flat) / elapsed,
        "p50_ms": float(np.percentile(flat, 50)),
        "p99_ms": float(np.percentile(flat, 99)),
        "mean_batch": len(flat) / inferences if inferences else 0.0,
    }


def lowest_cosine(batched: EmbedderPool, cpu: EmbedderPool, model: str, pictures: list[np.ndarray]) -> float:
    """Lowest cosine between each picture's embedding from `batched` (all in one inference) and from `cpu` alone."""
    batcher = EmbeddingBatcher(batched, len(pictures), window=1.0)
    futures = [batcher.submit(model, picture) for picture in pictures]
    batcher.shutdown()
    return min(
        float(future.result() @ cpu.get(model).embed(picture))
        for future, picture in zip(futures, pictures, strict=True)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="per row")
    parser.add_argument("--batches", default="1,8,32,128", help="--embed-batch of each batched row")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args(argv)
    photos = sorted(args.corpus.glob("*.jpg"))
    if not photos:
        print(f"no photos in {args.corpus}; pass --corpus or set LOOKALIKE_CORPUS", file=sys.stderr)
        return 2
    datas = [p.read_bytes() for p in photos]
    batches = [int(n) for n in args.batches.split(",")]

    gpu = EmbedderPool(device=DEVICE_CUDA)
    no_gpu = why_no_gpu(gpu, [args.model])
    device = DEVICE_CPU if no_gpu else DEVICE_CUDA
    if no_gpu:
        print(f"NO GPU FOUND ({no_gpu}): the batched rows ran on the CPU provider; they are not GPU figures.\n")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lookalike-gpu-") as folder:
        data = Path(folder) / "data"
        populate(data, args.entries, args.model)
        cpu_path = serve_and_load(data, ["--device", "cpu"], datas, 16, args.seconds)
        rows.append({"path": "cpu (workers run the model)", "batch": 1, **cpu_path})
        for batch in batches:
            flags = ["--device", device, "--embed-batch", str(batch), "--embed-window", str(WINDOW)]
            load = serve_and_load(data, flags, datas, clients_for(batch), args.seconds)
            rows.append({"path": f"{device}, batched", "batch": batch, **load})
    for row in rows:
        row["ratio_to_cpu_path"] = row["checks_per_s"] / cpu_path["checks_per_s"]

    models_alone = gpu if device == DEVICE_CUDA else EmbedderPool(threads=usable_cores())
    pictures = one_size(datas, 256)
    alone = [model_alone(models_alone, args.model, pictures, batch, min(args.seconds, 10.0)) for batch in batches]
    agreement = lowest_cosine(models_alone, EmbedderPool(threads=1), args.model, pictures[:32])
    result = {
        "hardware": hardware(),
        "gpu_found": no_gpu is None,
        "no_gpu_reason": no_gpu,
        "device": device,
        "model": args.model,
        "entries": args.entries,
        "window_s": WINDOW,
        "checks": rows,
        "model_alone": alone,
        "lowest_cosine_batched_to_cpu": agreement,
    }
    where = "a GPU" if no_gpu is None else f"NO GPU ({no_gpu}); batched rows on the CPU provider"
    print(f"Checks against a list of {args.entries:,} entries ({args.model}) on {where}\n")
    columns = ["path", "batch", "clients", "checks_per_s", "p50_ms", "p99_ms", "mean_batch", "ratio_to_cpu_path"]
    print(format_table(rows, [*columns, "errors"]))
    print(f"\nThe model alone ({len(pictures)} pictures of one size, 2 × batch callers):\n")
    print(format_table(alone, ["batch", "pictures_per_s", "p50_ms", "p99_ms", "mean_batch"]))
    print(f"\nlowest cosine, batched embedding against the CPU's: {agreement:.6f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
