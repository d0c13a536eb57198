"""What storing every check's result costs a check.

Every synchronous check hands its result to a writer thread (`server.checks`);
this measures, on a real in-process server with a list of `--entries` corpus
photos: the same check over gRPC with results stored and with storing switched
off (alternating blocks, so drift hits both alike); the request-path cost of
handing over one result; the writer's throughput (results committed a second);
and the round trip of a deferred check's submission.

    .venv/bin/python -m benchmarks.check_store [--checks 200] [--entries 20]

Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from benchmarks.accuracy import DEFAULT_CORPUS, hardware
from benchmarks.metrics import format_table
from lookalike.client import LookalikeClient
from lookalike.server.app import create_server
from lookalike.server.config import ServerConfig

BLOCK = 20


def _ms(seconds: Sequence[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "mean": 1000 * statistics.fmean(ordered),
        "p50": 1000 * ordered[len(ordered) // 2],
        "p99": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--checks", type=int, default=200, help="checks per arm")
    parser.add_argument("--entries", type=int, default=20)
    parser.add_argument("--handovers", type=int, default=5000)
    args = parser.parse_args(argv)
    photos = sorted(args.corpus.glob("*.jpg"))[: args.entries + 1]
    if len(photos) <= args.entries:
        print(f"need {args.entries + 1} photos in {args.corpus}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        config = ServerConfig(
            listen="127.0.0.1:0",
            data=Path(folder),
            map_size=1 << 32,
            workers=0,
            cpu_slots=1,
            flood_min_matches=0,
            http_listen="off",
        )
        running = create_server(config)
        ledger = running.checks
        assert ledger is not None
        client = LookalikeClient(f"127.0.0.1:{running.port}")
        try:
            client.create_list("banned")
            for path in photos[: args.entries]:
                client.add("banned", path)
            query = photos[0].read_bytes()
            client.check(query, ["banned"])  # warm up
            stored: list[float] = []
            unstored: list[float] = []
            keep = ledger.record
            for block in range(2 * args.checks // BLOCK):
                storing = block % 2 == 0
                ledger.record = keep if storing else (lambda *_, **__: None)  # type: ignore[method-assign]
                for _ in range(BLOCK):
                    started = time.perf_counter()
                    client.check(query, ["banned"])
                    (stored if storing else unstored).append(time.perf_counter() - started)
            ledger.record = keep  # type: ignore[method-assign]

            result = running.service.check(query, ["banned"])
            started = time.perf_counter()
            for number in range(args.handovers):
                ledger.record(replace(result, request_id=f"bench-{number}"), "")
            handover = (time.perf_counter() - started) / args.handovers
            deadline = time.monotonic() + 120
            while ledger.unwritten and time.monotonic() < deadline:
                time.sleep(0.001)
            drained = time.perf_counter() - started

            deferred: list[float] = []
            for _ in range(50):
                started = time.perf_counter()
                client.check(query, ["banned"], defer=True)
                deferred.append(time.perf_counter() - started)
        finally:
            client.close()
            running.stop(grace=1)
    report = {
        "hardware": hardware(),
        "entries": args.entries,
        "check_stored_ms": _ms(stored),
        "check_not_stored_ms": _ms(unstored),
        "handover_us": handover * 1e6,
        "writer_results_per_s": args.handovers / drained,
        "deferred_submit_ms": _ms(deferred),
    }
    rows = [
        {"what": "check over gRPC, result stored", **report["check_stored_ms"]},
        {"what": "check over gRPC, storing off", **report["check_not_stored_ms"]},
        {"what": "deferred check submitted", **report["deferred_submit_ms"]},
    ]
    print(format_table(rows, ["what", "mean", "p50", "p99"]))
    print(
        f"hand-over to the writer: {report['handover_us']:.1f} µs a result; "
        f"writer: {report['writer_results_per_s']:.0f} results/s"
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
