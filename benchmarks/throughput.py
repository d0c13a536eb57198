"""Checks per second and latency under concurrent clients, against the hardware floor.

In one run: (1) the floor — one single-threaded worker process per core doing nothing but
decode + hashes + embedding on corpus photos, for a fixed time (on small machines two busy
cores often deliver well under twice one core, so the floor is measured, not computed);
(2) the model's own rate — one single-threaded worker process per core doing only what the
model needs: a JPEG draft-decoded to the model's input size (short side ≥ 288) and the list's
model run on it; (3) a real `lookalike serve` process on loopback whose list holds `--entries`
synthetic entries (random PDQ codes and unit embeddings, written to LMDB before start-up);
checks from 1, 4 and 16 concurrent clients, each for `--seconds`; (4) bulk-add throughput of
corpus photos over the add stream. The floor and the model's rate are measured before and
after the load (in opposite order), so that both see the box as the server did. Reports
checks/s, p50/p99 latency and the ratio of achieved checks/s to the floor and to the model's
own rate (issue #20's goal: 0.8 of the model's rate); and, steadier when other jobs share the
box, the CPU a check cost the server process and its workers (from /proc), the server's own
part, and the model's CPU per image over a check's (`cpu_ratio_to_model`).

    .venv/bin/python -m benchmarks.throughput [--entries 100000] [--seconds 20]

Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.accuracy import DEFAULT_CORPUS, hardware
from benchmarks.metrics import format_table
from benchmarks.synthetic import new_entries, new_list, unit
from lookalike.client import LookalikeClient
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.server.config import usable_cores
from lookalike.server.embedder import SHORT_SIDE, Embedder, embedding_input
from lookalike.server.indexes import IndexRegistry
from lookalike.server.scoring import DEFAULT_MODEL
from lookalike.server.storage.store import Store

LIST = "bench"
MAP_SIZE = 1 << 34


def populate(data: Path, entries: int, model: str, seed: int = 0) -> None:
    """Write a list of synthetic entries and its index snapshot into LMDB, as a server would have stored them."""
    rng = np.random.default_rng(seed)
    store = Store(data, MAP_SIZE)
    try:
        store.commit(new_list(LIST, "throughput benchmark", model))
        for start in range(0, entries, 5000):
            count = min(5000, entries - start)
            codes = rng.integers(0, 256, size=(count, 32), dtype=np.uint8)
            store.commit(new_entries(LIST, start, unit(rng, count), codes, model))
        # As a server that has run before: the index is built once and snapshotted, so start-up loads it.
        registry = IndexRegistry(store, background=False)
        registry.load_all()
        registry.snapshot_all()
    finally:
        store.close()


def _floor_worker(args: tuple[list[bytes], float, str]) -> int:
    """Images one single-threaded process fingerprints and embeds in `seconds`."""
    datas, seconds, model = args
    from lookalike.index import configure_threads
    from lookalike.server.embedder import EmbedderPool
    from lookalike.server.fingerprint import Fingerprinter

    configure_threads(1)
    fingerprinter = Fingerprinter(100_000_000, EmbedderPool(threads=1))
    fingerprinter.views(fingerprinter.fingerprint(datas[0]), model)
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        fingerprinter.views(fingerprinter.fingerprint(datas[done % len(datas)]), model)
        done += 1
    return done


def measure_floor(datas: list[bytes], seconds: float, model: str) -> float:
    """Images per second from one worker process per core doing only the per-image work."""
    cores = usable_cores()
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        done = pool.map(_floor_worker, [(datas, seconds, model)] * cores)
    return sum(done) / seconds


def at_long_side(datas: Sequence[bytes], long_side: int) -> list[bytes]:
    """The photos as JPEGs `long_side` pixels long (bicubic, quality 90): camera-sized uploads, whose draft
    decoding and second decodes cost what the corpus's small photos hide (issue #20 measured at 1600)."""
    resized = []
    for data in datas:
        with Image.open(io.BytesIO(data)) as image:
            picture = image.convert("RGB")
        scale = long_side / max(picture.size)
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        resized.append(buffer.getvalue())
    return resized


def model_input(data: bytes) -> Image.Image:
    """The least a check must do before the model: a JPEG draft-decoded so that its short side
    stays at least the model's input size, then resized to that input."""
    with Image.open(io.BytesIO(data)) as image:
        scale = SHORT_SIDE / min(image.size)
        if scale < 1:
            image.draft("RGB", (int(image.width * scale + 0.999), int(image.height * scale + 0.999)))
        return embedding_input(image.convert("RGB"))


def _model_worker(args: tuple[list[bytes], float, str]) -> tuple[int, float]:
    """Images one single-threaded process draft-decodes and embeds in `seconds`: the model's own rate; and
    the CPU seconds it spent on them."""
    datas, seconds, model = args
    from lookalike.index import configure_threads

    configure_threads(1)
    embedder = Embedder(model, threads=1)
    embedder.embed(model_input(datas[0]))
    done, deadline, cpu = 0, time.monotonic() + seconds, time.process_time()
    while time.monotonic() < deadline:
        embedder.embed(model_input(datas[done % len(datas)]))
        done += 1
    return done, time.process_time() - cpu


def measure_model_rate(datas: list[bytes], seconds: float, model: str) -> tuple[float, float]:
    """Images per second from one worker process per core doing only what the model needs, and the CPU
    milliseconds an image took them."""
    cores = usable_cores()
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        done = pool.map(_model_worker, [(datas, seconds, model)] * cores)
    images = sum(count for count, _ in done)
    return images / seconds, 1000 * sum(cpu for _, cpu in done) / images


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) that process `pid` has used so far, and those of every process below it,
    from /proc: the server's own and its fingerprint workers'."""
    ticks = os.sysconf("SC_CLK_TCK")
    own, below, pending = 0.0, 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        if current == pid:
            own += seconds
        else:
            below += seconds
    return own, below


SERVE = (sys.executable, "-m", "lookalike.server.app")


class ServerProcess:
    """`lookalike serve` on a free loopback port, in its own process (`command`: how the server is started)."""

    def __init__(self, data: Path, *flags: str, command: Sequence[str] = SERVE) -> None:
        self.log = data.parent / "serve.log"
        self._log = self.log.open("w")
        self.process = subprocess.Popen(
            [
                *command,
                "--data",
                str(data),
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "off",  # 8080 may be anyone's on a shared box
                "--map-size",
                str(MAP_SIZE),
                *flags,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        started = time.monotonic()
        try:
            while not (found := re.search(r"\(port (\d+)\)", self.log.read_text())):
                if self.process.poll() is not None or time.monotonic() - started > 300:
                    raise SystemExit(f"server did not start:\n{self.log.read_text()}")
                time.sleep(0.1)
        except BaseException:  # a failed start or Ctrl-C: no server left behind
            self.process.kill()
            self.process.wait()
            self._log.close()
            raise
        self.startup_seconds = time.monotonic() - started
        self.address = f"127.0.0.1:{found.group(1)}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self._log.close()


def run_load(address: str, datas: list[bytes], clients: int, seconds: float, server_pid: int) -> dict[str, float]:
    """`clients` threads, each with its own channel, checking photos back to back; with the CPU the server
    and its workers spent a check (milliseconds; the clients' own not counted)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.monotonic() + seconds

    def client_loop(number: int) -> None:
        with LookalikeClient(address) as client:
            position = number
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    client.check(datas[position % len(datas)], [LIST])
                except Exception:  # noqa: BLE001 - counted, reported
                    errors[number] += 1
                latencies[number].append(time.perf_counter() - started)
                position += clients

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    server_before, workers_before = tree_cpu_seconds(server_pid)
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    server_after, workers_after = tree_cpu_seconds(server_pid)
    server_cpu, workers_cpu = server_after - server_before, workers_after - workers_before
    flat = np.array([x for per_client in latencies for x in per_client]) * 1000
    return {
        "clients": clients,
        "checks_per_s": len(flat) / elapsed,
        "p50_ms": float(np.percentile(flat, 50)),
        "p99_ms": float(np.percentile(flat, 99)),
        "errors": sum(errors),
        "cpu_ms_per_check": 1000 * (server_cpu + workers_cpu) / len(flat),
        "server_cpu_ms_per_check": 1000 * server_cpu / len(flat),
    }


def bulk_add(address: str, datas: list[bytes]) -> float:
    """Images per second added over one add stream (fresh list, so nothing is a duplicate)."""
    with LookalikeClient(address, timeout=600) as client:
        client.create_list("bulk")
        requests = (pb.AddEntryRequest(list="bulk", image=pb.Image(data=data)) for data in datas)
        started = time.monotonic()
        failures = sum(isinstance(result, Exception) for _, result in client.add_many(requests))
        elapsed = time.monotonic() - started
    if failures:
        print(f"bulk add: {failures} failures", file=sys.stderr)
    return len(datas) / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="per load level and for the floor")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--bulk-images", type=int, default=200, help="corpus photos added over the add stream")
    parser.add_argument("--long-side", type=int, default=0, help="re-encode the photos this long (0: as they are)")
    args = parser.parse_args(argv)
    photos = sorted(args.corpus.glob("*.jpg"))
    if not photos:
        print(f"no photos in {args.corpus}; pass --corpus or set LOOKALIKE_CORPUS", file=sys.stderr)
        return 2
    datas = [p.read_bytes() for p in photos]
    if args.long_side:
        datas = at_long_side(datas, args.long_side)

    floor_before = measure_floor(datas, args.seconds, args.model)
    model_before, model_cpu_before = measure_model_rate(datas, args.seconds, args.model)
    with tempfile.TemporaryDirectory(prefix="lookalike-throughput-") as folder:
        data = Path(folder) / "data"
        started = time.monotonic()
        populate(data, args.entries, args.model)
        populate_seconds = time.monotonic() - started
        server = ServerProcess(data)
        try:
            loads = [
                run_load(server.address, datas, int(n), args.seconds, server.process.pid)
                for n in args.clients.split(",")
            ]
            adds_per_s = bulk_add(server.address, datas[: args.bulk_images])
        finally:
            server.stop()
    model_after, model_cpu_after = measure_model_rate(datas, args.seconds, args.model)
    floor_after = measure_floor(datas, args.seconds, args.model)
    floor = (floor_before + floor_after) / 2
    model_rate = (model_before + model_after) / 2
    model_cpu_ms = (model_cpu_before + model_cpu_after) / 2
    for load in loads:
        load["ratio_to_floor"] = load["checks_per_s"] / floor
        load["ratio_to_model"] = load["checks_per_s"] / model_rate
        load["p99_over_p50"] = load["p99_ms"] / load["p50_ms"]
        load["cpu_ratio_to_model"] = model_cpu_ms / load["cpu_ms_per_check"]
    result = {
        "hardware": hardware(),
        "model": args.model,
        "entries": args.entries,
        "long_side": args.long_side or None,
        "floor_checks_per_s": {"before": floor_before, "after": floor_after, "mean": floor},
        "model_images_per_s": {"before": model_before, "after": model_after, "mean": model_rate},
        "model_cpu_ms_per_image": {"before": model_cpu_before, "after": model_cpu_after, "mean": model_cpu_ms},
        "populate_seconds": populate_seconds,
        "server_startup_seconds": server.startup_seconds,
        "loads": loads,
        "bulk_add_images_per_s": adds_per_s,
    }
    print(
        f"Checks against a list of {args.entries:,} entries ({args.model}); floor {floor:.1f} images/s "
        f"(before {floor_before:.1f}, after {floor_after:.1f}); the model's own rate {model_rate:.1f} images/s "
        f"(before {model_before:.1f}, after {model_after:.1f}), {model_cpu_ms:.1f} ms of CPU an image\n"
    )
    columns = ["clients", "checks_per_s", "p50_ms", "p99_ms", "p99_over_p50", "ratio_to_floor", "ratio_to_model"]
    print(
        format_table(loads, [*columns, "cpu_ms_per_check", "server_cpu_ms_per_check", "cpu_ratio_to_model", "errors"])
    )
    print(f"\nbulk add: {adds_per_s:.1f} images/s; server start-up {server.startup_seconds:.1f} s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
