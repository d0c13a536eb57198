"""Cluster mode (issue #19): replication lag, changes applied per second, a new node's catch-up, and checks
on a node while it replicates.

One real nats-server (JetStream, its store in a temporary folder) and real `lookalike serve --cluster`
nodes in subprocesses, so each node's CPU is read from /proc. Entries are given by hashes with a 512-d
embedding each (ImportEntries / AddHash with `embedding`): what an added picture stores and replicates,
without fingerprinting, so the figures are replication's, not the model's. In one run:

1. a new node's catch-up: node A takes `--entries` entries (imports of 500); the node holding the
   snapshot lease stores a snapshot in JetStream and trims the log; A and B restart with snapshots off
   (so none is taken during what follows), and node B is paused (SIGSTOP) while A takes `--tail` single
   adds from 4 writers (A's acknowledged adds/s). Node C starts on an empty folder: the snapshot's
   download and restore, its index build, then the tail.
2. changes applied per second: B, resumed, catches up on the tail (one entry a change), timed, with its
   CPU; then the same for `--bulk-changes` imports of `--batch` entries.
3. replication lag: a sustained bulk import on A for `--seconds`; for every batch A acknowledges, a check
   on B with that batch's consistency token as `after` answers once B has applied it: lag is from A's
   acknowledgement to that answer (an upper bound by one call's round trip, reported as `lag_floor_ms`).
4. checks on B from `--clients` threads (corpus photos, as benchmarks/throughput.py) for `--seconds`,
   alone and while A takes a bulk import at `--write-rate` entries/s, alternated twice; checks/s, the
   ratio, and the CPU B spent a check.
5. the stream's own rate: appends of one single add's size to a separate stream, 1 and 4 writers.

    .venv/bin/python -m benchmarks.cluster [--entries 100000[,1000000]] [--quick]

Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import DEFAULT_CORPUS, hardware
from benchmarks.metrics import format_table
from benchmarks.nats_server import NatsServer
from benchmarks.synthetic import unit
from benchmarks.throughput import LIST, ServerProcess, run_load, tree_cpu_seconds
from lookalike.client import LookalikeClient
from lookalike.client.errors import LookalikeError, Unavailable
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.server.changes import EntriesAdded, encode_change
from lookalike.server.records import NewEntry, encode_embedding
from lookalike.server.replication import ChangeLog
from lookalike.server.scoring import DEFAULT_MODEL
from lookalike.server.storage.snapshot import is_empty

LOOKALIKE = Path(sys.executable).parent / "lookalike"

POPULATE_BATCH = 500
"""Entries an import request carries while filling the list: one log record each (about 0.6 MB)."""

STREAM = "LOOKALIKE"
SNAPSHOTS_STREAM = f"OBJ_{STREAM}_SNAPSHOTS"
NO_SNAPSHOTS = str(10**12)
"""`--cluster-snapshot-every` once the snapshot a new node needs is stored: none is taken while measuring."""

APPLIED_WAIT_S = 600.0
UNSEEN_SHA256 = "00" * 32
"""What the probe checks for: a hash no entry has, so a probe costs the wait and a lookup, not a search."""


class Entries:
    """Synthetic entries shaped as an added picture stores them: unique SHA-256 and MD5, random PDQ and
    pHash, a random unit embedding of the list's model (sent as float32, stored as float16)."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._next = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> list[pb.HashEntry]:
        with self._lock:
            start, self._next = self._next, self._next + count
            vectors = unit(self._rng, count)
            codes = self._rng.integers(0, 256, size=(count, 40), dtype=np.uint8)
        entries = []
        for row in range(count):
            number = (start + row).to_bytes(8, "big")
            entries.append(
                pb.HashEntry(
                    id=f"e{start + row}",
                    pdq=codes[row, :32].tobytes().hex(),
                    phash=codes[row, 32:].tobytes().hex(),
                    sha256=hashlib.sha256(number).hexdigest(),
                    md5=hashlib.md5(number).hexdigest(),
                    embedding=vectors[row].astype("<f4").tobytes(),
                    model=DEFAULT_MODEL,
                )
            )
        return entries

    def stream(
        self, batch: int, total: int | None = None, stop: threading.Event | None = None
    ) -> Iterator[pb.HashEntry]:
        """`total` entries (None: until `stop` is set), made `batch` at a time."""
        made = 0
        while (total is None or made < total) and not (stop is not None and stop.is_set()):
            count = batch if total is None else min(batch, total - made)
            yield from self.take(count)
            made += count


class Node:
    """`lookalike serve --cluster` in its own process, its log and data in a folder of its own."""

    def __init__(self, root: Path, name: str, nats_url: str) -> None:
        self.name = name
        self.folder = root / name
        self.folder.mkdir(exist_ok=True)
        self.flags = ("--cluster", nats_url, "--node", name, "--cluster-snapshot-interval", "1")
        self.server: ServerProcess | None = None
        self.client: LookalikeClient | None = None
        self.paused = False

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def start(self, *flags: str) -> None:
        self.server = ServerProcess(self.data, *self.flags, *flags, command=(str(LOOKALIKE), "serve"))
        self.client = LookalikeClient(self.server.address, timeout=60)

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.process.pid

    def cpu_seconds(self) -> float:
        """CPU (user + system) of the node's process and its workers so far."""
        own, below = tree_cpu_seconds(self.pid)
        return own + below

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def wait_applied(self, token: int, within: float = APPLIED_WAIT_S) -> float:
        """Block until this node has applied `token` (a check with it as `after` answers); when, in
        time.monotonic()."""
        assert self.client is not None
        deadline = time.monotonic() + within
        while True:
            try:
                self.client.check_hashes([LIST], sha256=UNSEEN_SHA256, after=str(token))
                return time.monotonic()
            except Unavailable:  # REPLICA_BEHIND after the server's own bounded wait: ask again
                if time.monotonic() > deadline:
                    raise

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.server is None:
            return
        process = self.server.process
        if self.paused:
            self.resume()
        try:
            self.server.stop()
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.server = None


def logged_at(log: Path, text: str) -> float | None:
    """When the first log line containing `text` was written (time.time(), from the line's own stamp)."""
    for line in log.read_text(errors="replace").splitlines():
        if text in line:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def import_batches(
    client: LookalikeClient, entries: Iterator[pb.HashEntry], batch: int, on_ack: Callable[[int, int], None]
) -> tuple[int, float]:
    """Import `entries` `batch` per request; `on_ack(token, entries)` as each request's answer arrives (its
    results come together, so at its last one). The entries imported and the seconds it took."""
    started = time.monotonic()
    count, token, in_batch = 0, "", 0
    for _, result in client.import_stream(LIST, entries, batch=batch):
        if isinstance(result, LookalikeError):
            raise result
        token = result.consistency_token
        in_batch += 1
        count += 1
        if in_batch == batch:
            on_ack(int(token), in_batch)
            in_batch = 0
    if in_batch:
        on_ack(int(token), in_batch)
    return count, time.monotonic() - started


def single_adds(client: LookalikeClient, entries: Entries, count: int, writers: int) -> tuple[int, float]:
    """`count` AddHash calls (one entry, one change each) from `writers` threads; the highest consistency
    token acknowledged, and the seconds they took."""
    pending = entries.take(count)
    tokens: list[int] = []

    def write(part: list[pb.HashEntry]) -> None:
        for entry in part:
            tokens.append(int(client.add_hash(LIST, entry).consistency_token))

    started = time.monotonic()
    with ThreadPoolExecutor(writers) as pool:
        for done in [pool.submit(write, pending[n::writers]) for n in range(writers)]:
            done.result()
    return max(tokens), time.monotonic() - started


def catch_up(node: Node, before: int, head: int) -> dict[str, float]:
    """Resume the paused `node` and time it applying `before`+1..`head`, with the CPU it spent."""
    cpu = node.cpu_seconds()
    started = time.monotonic()
    node.resume()
    done = node.wait_applied(head)
    seconds, changes = done - started, head - before
    spent = node.cpu_seconds() - cpu
    return {
        "changes": changes,
        "seconds": seconds,
        "changes_per_s": changes / seconds,
        "cpu_s": spent,
        "cpu_ms_per_change": 1000 * spent / changes,
    }


def percentiles(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "max": max(values),
    }


class BulkWriter:
    """Imports batches on a node from a thread of its own until the `with` block ends, at most `rate`
    entries a second (0: as fast as the node acknowledges them); `tokens` fills in as batches are acknowledged."""

    def __init__(self, client: LookalikeClient, entries: Entries, batch: int, rate: float) -> None:
        self._client = client
        self._entries = entries
        self._batch = batch
        self._rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bulk-writer", daemon=True)
        self._error: BaseException | None = None
        self.tokens: list[int] = []
        self.entries = 0

    def _paced(self) -> Iterator[pb.HashEntry]:
        started, sent = time.monotonic(), 0
        while not self._stop.is_set():
            ahead = sent / self._rate - (time.monotonic() - started) if self._rate else 0.0
            if ahead > 0:
                self._stop.wait(ahead)
                continue
            yield from self._entries.take(self._batch)
            sent += self._batch

    def _acknowledged(self, token: int, count: int) -> None:
        self.tokens.append(token)
        self.entries += count

    def _run(self) -> None:
        try:
            import_batches(self._client, self._paced(), self._batch, self._acknowledged)
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            self._error = error

    def __enter__(self) -> BulkWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error


def measure_lag(a: Node, b: Node, entries: Entries, batch: int, seconds: float, applied: int) -> dict[str, Any]:
    """A sustained bulk import on A for `seconds`; for every acknowledged batch, the time until B answers a
    check made `after` it. The floor: the same check on what B has applied already (`applied`)."""
    floor = []
    for _ in range(20):
        started = time.monotonic()
        floor.append(b.wait_applied(applied) - started)
    lags: list[Future[float]] = []
    with ThreadPoolExecutor(16, thread_name_prefix="lag") as waiters:

        def on_ack(token: int, _count: int) -> None:
            acknowledged = time.monotonic()
            lags.append(waiters.submit(lambda: b.wait_applied(token) - acknowledged))

        stop = threading.Event()
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        try:
            assert a.client is not None
            count, elapsed = import_batches(a.client, entries.stream(batch, stop=stop), batch, on_ack)
        finally:
            timer.cancel()
    values = [lag.result() for lag in lags]
    return {
        "batch": batch,
        "batches": len(values),
        "entries": count,
        "entries_per_s_acknowledged": count / elapsed,
        "lag_s": percentiles(values),
        "lag_floor_ms": 1000 * statistics.median(floor),
    }


def measure_checks(
    a: Node, b: Node, entries: Entries, datas: list[bytes], args: argparse.Namespace, written: int
) -> dict[str, Any]:
    """Checks on B alone and while A takes a bulk import, alternated twice, each arm `args.seconds`;
    `written`: a change B has applied (each arm alone waits for B to apply what the last one wrote)."""
    assert a.client is not None and b.server is not None
    arms: list[dict[str, Any]] = []
    last = written
    for replicating in (False, True, False, True):
        if replicating:
            with BulkWriter(a.client, entries, args.batch, args.write_rate) as writes:
                load = run_load(b.server.address, datas, args.clients, args.seconds, b.pid)
            last = max(writes.tokens, default=last)
            load["entries_written_per_s"] = writes.entries / args.seconds
        else:
            b.wait_applied(last)  # alone means alone: nothing left to apply
            load = run_load(b.server.address, datas, args.clients, args.seconds, b.pid)
        arms.append({"arm": "replicating" if replicating else "alone", **load})
    alone = [arm for arm in arms if arm["arm"] == "alone"]
    replicating_arms = [arm for arm in arms if arm["arm"] == "replicating"]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.fmean(row[key] for row in rows)

    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "write_rate": args.write_rate,
        "arms": arms,
        "alone_checks_per_s": mean(alone, "checks_per_s"),
        "replicating_checks_per_s": mean(replicating_arms, "checks_per_s"),
        "ratio": mean(replicating_arms, "checks_per_s") / mean(alone, "checks_per_s"),
        "alone_cpu_ms_per_check": mean(alone, "cpu_ms_per_check"),
        "replicating_cpu_ms_per_check": mean(replicating_arms, "cpu_ms_per_check"),
    }


def measure_appends(url: str, writers: int, seconds: float) -> float:
    """Appends a second the stream acknowledges, of one single add's record, from `writers` threads
    (a stream of its own, which no node follows)."""
    rng = np.random.default_rng(1)
    entry = NewEntry(
        id="e0",
        sha256=bytes(32),
        pdq=bytes(32),
        pdq_quality=100,
        phash=bytes(8),
        embedding=encode_embedding(unit(rng, 1)[0]),
    )
    record = encode_change(EntriesAdded(time=time.time(), list=LIST, model=DEFAULT_MODEL, entries=(entry,)))
    counts = [0] * writers
    with ChangeLog([url], stream=f"APPENDS{writers}", node="bench", connect_wait=10) as log:
        log.append(record, uuid.uuid4().hex)  # the stream exists before the clock starts
        deadline = time.monotonic() + seconds

        def append(number: int) -> None:
            while time.monotonic() < deadline:
                log.append(record, uuid.uuid4().hex)
                counts[number] += 1

        started = time.monotonic()
        with ThreadPoolExecutor(writers) as pool:
            for done in [pool.submit(append, n) for n in range(writers)]:
                done.result()
        return sum(counts) / (time.monotonic() - started)


def start_nats(root: Path) -> NatsServer:
    nats = NatsServer("n0", root / "nats" / "store")
    nats.start()
    deadline = time.monotonic() + 60
    while not nats.healthy():
        if time.monotonic() > deadline:
            nats.kill()
            raise SystemExit(f"nats-server not ready after 60 s:\n{nats.log_tail()}")
        time.sleep(0.1)
    return nats


def wait_snapshot(log: ChangeLog, nats: NatsServer, covering: int) -> int:
    """Wait until a snapshot covers `covering` and the log is trimmed to after it; its sequence."""
    deadline = time.monotonic() + APPLIED_WAIT_S
    while time.monotonic() < deadline:
        kept = log.snapshots()
        detail = nats.stream_detail(STREAM)
        if kept and kept[-1] >= covering and detail is not None and detail["state"]["first_seq"] > 1:
            return kept[-1]
        time.sleep(0.2)
    raise SystemExit(f"no snapshot covering change {covering} within {APPLIED_WAIT_S:.0f} s")


def run_cluster(
    root: Path, size: int, args: argparse.Namespace, datas: list[bytes], stack: contextlib.ExitStack
) -> dict[str, Any]:
    """One cluster (nats-server, nodes A and B) holding `size` entries: a new node's catch-up, and B's apply
    rate on the tail and on bulk imports; with `datas`, also lag and checks (on the first size only)."""
    entries = Entries(args.seed)
    nats = start_nats(root)
    stack.callback(nats.kill)
    a, b, c = (Node(root, name, nats.url) for name in ("a", "b", "c"))
    for node in (a, b, c):
        stack.callback(node.stop)
    # Exactly one snapshot, once the list is filled: the list's creation and one record per import request.
    filled = 1 + math.ceil(size / POPULATE_BATCH)
    for node in (a, b):
        node.start("--cluster-snapshot-every", str(filled))
    assert a.client is not None and b.client is not None
    a.client.create_list(LIST, model=DEFAULT_MODEL)
    head = 0

    def acknowledged(token: int, _count: int) -> None:
        nonlocal head
        head = max(head, token)

    imported, seconds = import_batches(a.client, entries.stream(POPULATE_BATCH, size), POPULATE_BATCH, acknowledged)
    result: dict[str, Any] = {"entries": size, "populate": {"seconds": seconds, "entries_per_s": imported / seconds}}
    with ChangeLog([nats.url], STREAM, node="bench", connect_wait=10) as log:
        snapshot = wait_snapshot(log, nats, min(head, filled))
        kept = len(log.snapshots())
    objects = nats.stream_detail(SNAPSHOTS_STREAM)
    assert objects is not None
    # From here on no snapshot is taken: restart A and B with snapshots off.
    for node in (a, b):
        node.stop()
        node.start("--cluster-snapshot-every", NO_SNAPSHOTS)
    b.wait_applied(head)
    b.pause()
    tail_head, tail_seconds = single_adds(a.client, entries, args.tail, writers=4)
    result["single_adds_acknowledged_per_s"] = args.tail / tail_seconds

    spawned = time.time()
    c.start("--cluster-snapshot-every", NO_SNAPSHOTS)
    c.wait_applied(tail_head)
    caught_up = time.time()
    assert c.server is not None
    restored = logged_at(c.server.log, "restored the replicated data")
    serving = logged_at(c.server.log, "serving on")
    if restored is None or serving is None or is_empty(c.data):
        raise SystemExit(f"node C did not start from the snapshot:\n{c.server.log.read_text()}")
    result["new_node"] = {
        "snapshot_sequence": snapshot,
        "snapshots_kept": kept,
        "snapshot_store_bytes": objects["state"]["bytes"],
        "tail_changes": tail_head - snapshot,
        "restore_s": restored - spawned,
        "index_build_s": serving - restored,
        "tail_s": caught_up - serving,
        "total_s": caught_up - spawned,
        "entries_on_new_node": c.client.get_list(LIST).entry_count if c.client is not None else 0,
    }
    c.stop()

    result["apply_single_adds"] = catch_up(b, head, tail_head)
    assert a.client is not None
    b.pause()
    bulk_head, bulk_entries = tail_head, 0

    def bulk_acknowledged(token: int, count: int) -> None:
        nonlocal bulk_head, bulk_entries
        bulk_head, bulk_entries = max(bulk_head, token), bulk_entries + count

    import_batches(a.client, entries.stream(args.batch, args.bulk_changes * args.batch), args.batch, bulk_acknowledged)
    bulk = catch_up(b, tail_head, bulk_head)
    bulk["entries"] = bulk_entries
    bulk["cpu_ms_per_entry"] = 1000 * bulk["cpu_s"] / bulk_entries
    result["apply_imports"] = bulk
    if datas:
        result["lag"] = measure_lag(a, b, entries, args.batch, args.seconds, bulk_head)
        result["checks"] = measure_checks(a, b, entries, datas, args, bulk_head)
        result["stream_appends_per_s"] = {
            str(writers): measure_appends(nats.url, writers, args.append_seconds) for writers in (1, 4)
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--entries", default="100000", help="list sizes for the new node's catch-up, comma-separated")
    parser.add_argument("--tail", type=int, default=2000, help="single adds after the snapshot")
    parser.add_argument("--batch", type=int, default=100, help="entries an import request carries")
    parser.add_argument("--bulk-changes", type=int, default=200, help="import requests B catches up on")
    parser.add_argument("--seconds", type=float, default=20.0, help="the lag run, and each arm of the checks")
    parser.add_argument("--clients", type=int, default=4, help="threads checking on B")
    parser.add_argument("--write-rate", type=float, default=1000.0, help="entries/s written while B is checked")
    parser.add_argument("--append-seconds", type=float, default=5.0, help="per writer count, the stream alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 000 entries, shorter runs: about a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.entries, args.tail, args.bulk_changes, args.seconds, args.append_seconds = "10000", 300, 30, 5.0, 2.0
    sizes = [int(size) for size in args.entries.split(",")]
    photos = sorted(args.corpus.glob("*.jpg"))
    if not photos:
        print(f"no photos in {args.corpus}; pass --corpus or set LOOKALIKE_CORPUS", file=sys.stderr)
        return 2
    datas = [photo.read_bytes() for photo in photos]

    runs = []
    with tempfile.TemporaryDirectory(prefix="lookalike-cluster-") as folder:
        for number, size in enumerate(sizes):
            with contextlib.ExitStack() as stack:
                root = Path(folder) / f"size-{size}"
                root.mkdir()
                runs.append(run_cluster(root, size, args, datas if number == 0 else [], stack))
    first = runs[0]
    report = {"hardware": hardware(), "load_average": os.getloadavg(), "model": DEFAULT_MODEL, "sizes": runs}
    print(format_table([row(run) for run in runs], list(row(first))))
    print()
    print(
        format_table(first["checks"]["arms"], ["arm", "checks_per_s", "p50_ms", "p99_ms", "cpu_ms_per_check", "errors"])
    )
    lag = first["lag"]
    print(
        f"\nlag under a bulk import of {lag['batch']}-entry batches ({lag['entries_per_s_acknowledged']:.0f} entries/s "
        f"acknowledged): p50 {lag['lag_s']['p50'] * 1000:.1f} ms, p99 {lag['lag_s']['p99'] * 1000:.1f} ms "
        f"(a check's own round trip {lag['lag_floor_ms']:.1f} ms)"
    )
    checks = first["checks"]
    print(
        f"checks on B while it replicates / alone: {checks['ratio']:.3f} "
        f"({checks['replicating_checks_per_s']:.1f} / {checks['alone_checks_per_s']:.1f} checks/s; "
        f"CPU a check {checks['replicating_cpu_ms_per_check']:.1f} / {checks['alone_cpu_ms_per_check']:.1f} ms)"
    )
    appends = first["stream_appends_per_s"]
    print(f"stream appends acknowledged: {appends['1']:.0f}/s (1 writer), {appends['4']:.0f}/s (4 writers)")
    print(json.dumps(report))
    return 0


def row(run: dict[str, Any]) -> dict[str, Any]:
    """One size's figures for the table."""
    new_node = run["new_node"]
    return {
        "entries": run["entries"],
        "snapshot_MB": new_node["snapshot_store_bytes"] / 1e6,
        "restore_s": new_node["restore_s"],
        "index_s": new_node["index_build_s"],
        "tail": new_node["tail_changes"],
        "tail_s": new_node["tail_s"],
        "new_node_s": new_node["total_s"],
        "applied_adds_per_s": run["apply_single_adds"]["changes_per_s"],
        "cpu_ms_per_add": run["apply_single_adds"]["cpu_ms_per_change"],
        "applied_imports_per_s": run["apply_imports"]["changes_per_s"],
        "cpu_ms_per_import": run["apply_imports"]["cpu_ms_per_change"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
