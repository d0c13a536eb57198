"""One list of N synthetic entries: memory, build, search, recall, start-up, new entries, removals.

Entries are random unit embeddings and random PDQ codes, written to LMDB through the
store as a server would write them. Queries are planted near chosen entries: each
embedding query has a known cosine to its entry (bands from 0.5, where review starts,
to 0.99), each PDQ query a known Hamming distance (0 to 48 bits). Random isotropic
vectors are the hardest case for an inverted file (real embeddings cluster), so
recall here is a floor. Exact search is computed by brute force over the same
vectors while they are generated.

Measured, on one FAISS/numpy thread, through the server's own code (`IndexRegistry`,
`ListIndex`, as a check searches):
build time (the index, then the PDQ hash tables), index memory (estimate and process RSS), snapshot size,
per-query search time (p50/p99) for one embedding view, for PDQ with 8 variants (a check by
hashes, or of a list holding hash-only entries) and with the picture's own code alone (a picture
check of a list whose entries all have embeddings), and both searches of such a picture check,
recall of the planted (exact top-1) neighbour among the top 10 and the error of its
similarity, snapshot time (the first, and one after a few changes), start-up time of a
fresh process loading the list (snapshot + change-log replay; its PDQ hash tables follow on a
thread, timed too), time for a new entry to become matchable, and the time of a removal.
PDQ searches are measured twice, side by side: on the binary IVF alone (what answers until
the hash tables are built, and what the PDQ scan budget tunes), then with the tables.

    .venv/bin/python -m benchmarks.scale                       # 1M entries, ~6 min on 2 cores
    .venv/bin/python -m benchmarks.scale --entries 10000000    # ~40 min, ~30 GB of disk

Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import hardware
from benchmarks.metrics import format_table
from benchmarks.synthetic import new_entries, new_list, unit
from lookalike.index import configure_threads
from lookalike.index.list_index import PDQ_SCAN_BUDGET, VECTOR_SCAN_BUDGET, ListIndex
from lookalike.server.changes import EntryRemoved
from lookalike.server.flood import FloodGuard, FloodSettings
from lookalike.server.indexes import IndexRegistry
from lookalike.server.scoring import PDQ_SEARCH_RADIUS
from lookalike.server.storage.store import Store
from lookalike.server.writes import WritePath

LIST = "scale"
CHUNK = 20_000
COSINE_BANDS = ((0.50, 0.60), (0.60, 0.75), (0.75, 0.90), (0.90, 0.99))
PDQ_BANDS = ((0, 16), (16, 32), (32, 49))
CHECK_VIEWS = (3, 10)
"""Views a check searches with: a composite's on the accuracy benchmark (3.0 on average, the whole picture
included), and a 3×3 collage's (the whole and nine cells). Each view is one more embedding query and PDQ code."""
PDQ_KEYS = ("pdq_search_8_variants", "pdq_search_own_code", "picture_check_searches", "pdq_recall_by_distance")


def map_size_for(entries: int) -> int:
    """LMDB address space: about 3 KiB an entry (embedding, record, keys) plus snapshots, doubled."""
    return max(1 << 32, entries * 6 * 1024)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def near(rng: np.random.Generator, vector: np.ndarray, cosine: float) -> np.ndarray:
    noise = rng.standard_normal(len(vector)).astype(np.float32)
    noise -= (noise @ vector) * vector
    noise /= np.linalg.norm(noise)
    return np.asarray(cosine * vector + np.sqrt(1 - cosine**2) * noise, dtype=np.float32)


def flip(rng: np.random.Generator, code: np.ndarray, bits: int) -> np.ndarray:
    unpacked = np.unpackbits(code)
    unpacked[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked)


class Planted:
    """Queries near chosen entries, and exact search's best entry for each, kept while generating."""

    def __init__(self, rng: np.random.Generator, entries: int, queries: int) -> None:
        self.targets = np.sort(rng.choice(entries, queries, replace=False))
        low, high = np.array(COSINE_BANDS).T
        band = rng.integers(0, len(COSINE_BANDS), queries)
        self.cosines = rng.uniform(low[band], high[band]).astype(np.float32)
        self.distances = rng.integers(0, PDQ_BANDS[-1][1], queries)
        self.vectors = np.zeros((queries, 512), np.float32)
        self.codes = np.zeros((queries, 32), np.uint8)
        self.best_similarity = np.full(queries, -2.0, np.float32)
        self.best_position = np.zeros(queries, np.int64)

    def observe(self, rng: np.random.Generator, start: int, vectors: np.ndarray, codes: np.ndarray) -> None:
        """Plant the queries whose targets fall in this chunk; update exact search with it."""
        for q in np.flatnonzero((self.targets >= start) & (self.targets < start + len(vectors))):
            row = self.targets[q] - start
            self.vectors[q] = near(rng, vectors[row], float(self.cosines[q]))
            self.codes[q] = flip(rng, codes[row], int(self.distances[q]))
        planted = self.targets < start + len(vectors)
        similarities = self.vectors[planted] @ vectors.T
        best = similarities.argmax(axis=1)
        better = similarities[np.arange(len(best)), best] > self.best_similarity[planted]
        rows = np.flatnonzero(planted)[better]
        self.best_similarity[rows] = similarities[better, best[better]]
        self.best_position[rows] = start + best[better]


def populate(store: Store, entries: int, planted: Planted, rng: np.random.Generator) -> None:
    store.commit(new_list(LIST, "scale benchmark"))
    for start in range(0, entries, CHUNK):
        count = min(CHUNK, entries - start)
        vectors = unit(rng, count)
        codes = rng.integers(0, 256, (count, 32), dtype=np.uint8)
        planted.observe(rng, start, vectors, codes)
        store.commit(new_entries(LIST, start, vectors, codes))
        if start and start % (20 * CHUNK) == 0:
            print(f"  populated {start:,}", file=sys.stderr, flush=True)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.array(samples_ms)
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def measure_searches(index: ListIndex, planted: Planted, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    vector_ms, pdq_ms, own_code_ms, check_ms, found_vector, found_pdq, errors = [], [], [], [], [], [], []
    views_ms: dict[int, list[float]] = {views: [] for views in CHECK_VIEWS}
    for q in range(len(planted.targets)):
        expected = int(planted.best_position[q]) + 1  # sequence numbers start at 1
        started = time.perf_counter()
        similarities = {hit.id: hit.similarity for hit in index.search_vectors(planted.vectors[q], 10)}
        vector_ms.append((time.perf_counter() - started) * 1000)
        found_vector.append(expected in similarities)
        if expected in similarities:
            errors.append(abs(similarities[expected] - float(planted.best_similarity[q])))
        variants = [planted.codes[q].tobytes()] + [rng.bytes(32) for _ in range(7)]  # 8 variants, as a check
        started = time.perf_counter()
        hits = index.search_pdq(variants, PDQ_SEARCH_RADIUS)
        pdq_ms.append((time.perf_counter() - started) * 1000)
        found_pdq.append(int(planted.targets[q]) + 1 in {hit.id for hit in hits})
        started = time.perf_counter()
        index.search_pdq(variants[:1], PDQ_SEARCH_RADIUS)  # the same cells as variant 0 above: the same recall
        own_code_ms.append((time.perf_counter() - started) * 1000)
        check_ms.append(vector_ms[-1] + own_code_ms[-1])
        for views in CHECK_VIEWS:  # the planted query as the whole picture, unrelated pictures found inside it
            vectors = np.concatenate([planted.vectors[q : q + 1], unit(rng, views - 1)])
            codes = variants[:1] + [rng.bytes(32) for _ in range(views - 1)]
            started = time.perf_counter()
            index.search_vectors(vectors, 10)
            index.search_pdq(codes, PDQ_SEARCH_RADIUS)
            views_ms[views].append((time.perf_counter() - started) * 1000)
    vector_found, pdq_found = np.array(found_vector), np.array(found_pdq)
    by_cosine = {
        f"cos {low:.2f}-{high:.2f}": float(vector_found[(planted.cosines >= low) & (planted.cosines < high)].mean())
        for low, high in COSINE_BANDS
    }
    by_distance = {
        f"pdq {low}-{high - 1} bits": float(pdq_found[(planted.distances >= low) & (planted.distances < high)].mean())
        for low, high in PDQ_BANDS
    }
    planted_is_exact = planted.best_position == planted.targets
    return {
        "embedding_search": percentiles(vector_ms),
        "pdq_search_8_variants": percentiles(pdq_ms),
        "pdq_search_own_code": percentiles(own_code_ms),
        "picture_check_searches": percentiles(check_ms),
        "check_searches_by_views": {str(views): percentiles(ms) for views, ms in views_ms.items()},
        "recall_of_exact_top1_in_top10": float(vector_found.mean()),
        "similarity_error_max": max(errors, default=0.0),
        "exact_top1_is_the_planted_entry": float(planted_is_exact.mean()),
        "recall_by_cosine": by_cosine,
        "pdq_recall_by_distance": by_distance,
    }


def startup(data: Path, entries: int) -> dict[str, float]:
    """Load the list in a fresh process, as a restarting server would (PDQ hash tables on a
    thread); report time to serve, time until the tables answer, and memory."""
    code = (
        "import json,sys,time;from pathlib import Path;"
        "from benchmarks.scale import rss_mib,map_size_for;from lookalike.index import configure_threads;"
        "from lookalike.server.indexes import IndexRegistry;from lookalike.server.storage.store import Store;"
        "configure_threads(1);"
        f"before=rss_mib();t=time.perf_counter();s=Store(Path({str(data)!r}),map_size_for({entries}));"
        "r=IndexRegistry(s,background=True);r.load_all();took=time.perf_counter()-t;rss=rss_mib();"
        "r.wait_for_rebuilds();ready=time.perf_counter()-t;i=r.get(s.lists()[0].uid);"
        "print(json.dumps({'startup_s':took,'rss_mib':rss,'rss_growth_mib':rss-before,"
        "'pdq_tables_ready_s':ready,'tables_rss_mib':rss_mib(),'pdq_tables':i.has_pdq_tables,"
        "'entries':i.vector_count}))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="data folder to use (default: a temporary one)")
    parser.add_argument(
        "--budgets",
        default="",
        help="extra VECTORS:PDQ scan budgets to measure beside the defaults (PDQ: on the binary IVF alone, before "
        "the hash tables), e.g. 300000:50000,1200000:200000",
    )
    args = parser.parse_args(argv)
    budgets = [tuple(int(x) for x in pair.split(":")) for pair in args.budgets.split(",") if pair]
    configure_threads(1)
    rng = np.random.default_rng(args.seed)
    planted = Planted(rng, args.entries, args.queries)
    with tempfile.TemporaryDirectory(prefix="lookalike-scale-", dir=args.data) as folder:
        data = Path(folder) / "data"
        store = Store(data, map_size_for(args.entries))
        started = time.perf_counter()
        populate(store, args.entries, planted, rng)
        populate_s = time.perf_counter() - started
        uid = store.get_list(LIST).uid
        print(f"  populated {args.entries:,} in {populate_s:.0f} s; building", file=sys.stderr, flush=True)

        registry = IndexRegistry(store, background=False)
        rss_before = rss_mib()
        started = time.perf_counter()
        index = registry.build(uid)
        build_s = time.perf_counter() - started
        ivf_searches = measure_searches(index, planted, args.seed)
        sweep = []  # before the PDQ hash tables: the PDQ budget tunes the binary IVF
        for vector_budget, pdq_budget in budgets:
            index.set_scan_budgets(vector_budget, pdq_budget)
            sweep.append(
                {"vector_budget": vector_budget, "pdq_budget": pdq_budget} | measure_searches(index, planted, args.seed)
            )
        index.set_scan_budgets(VECTOR_SCAN_BUDGET, PDQ_SCAN_BUDGET)
        started = time.perf_counter()
        index.index_pdq_codes()
        tables_s = time.perf_counter() - started
        rss_growth = rss_mib() - rss_before
        registry.created(uid)
        assert registry.install(uid, index)  # serving, as a rebuilt index takes over
        searches = measure_searches(index, planted, args.seed)

        started = time.perf_counter()
        registry.snapshot_all()
        snapshot_s = time.perf_counter() - started
        snapshot = store.load_snapshot(uid)
        pieces = sum(len(data) for _, data in store.snapshot_pieces(uid))
        snapshot_mib = (len(snapshot[1]) + pieces) / 2**20 if snapshot else 0.0
        del snapshot

        # A new entry, added as the service adds one (store commit, then index, under the list's lock).
        writes = WritePath(store, registry, FloodGuard(store, FloodSettings()))
        vector, code = unit(rng, 1), rng.integers(0, 256, (1, 32), dtype=np.uint8)
        started = time.perf_counter()
        outcome = writes.apply(new_entries(LIST, args.entries + 1, vector, code))[0]
        assert not isinstance(outcome, Exception)
        added_ms = (time.perf_counter() - started) * 1000
        matchable = outcome.entry.seq in {hit.id for hit in index.search_vectors(vector[0], 10)}

        removal_ms = []
        for position in rng.choice(args.entries, 20, replace=False):
            started = time.perf_counter()
            writes.apply(EntryRemoved(time=time.time(), list=LIST, entry_id=f"s{position}"))
            removal_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        registry.snapshot_all()  # the log holds the new entry and the removals: start-up replays nothing
        later_snapshot_s = time.perf_counter() - started
        layout, index_memory = index.layout, index.memory_bytes()
        del index, writes, registry  # the fresh process loads its own copy: at 10M two would not fit in memory
        store.close()
        started_process = startup(data, args.entries)

    result: dict[str, Any] = {
        "hardware": hardware(),
        "entries": args.entries,
        "queries": args.queries,
        "seed": args.seed,
        "layout": {"vector_cells": layout.vector_cells, "pdq_cells": layout.pdq_cells},
        "populate_s": populate_s,
        "build_s": build_s,
        "pdq_tables_s": tables_s,
        "index_memory_mib_estimate": index_memory / 2**20,
        "build_rss_growth_mib": rss_growth,
        "snapshot_s": snapshot_s,
        "snapshot_mib": snapshot_mib,
        "later_snapshot_s": later_snapshot_s,
        **searches,
        "binary_ivf_alone": {key: ivf_searches[key] for key in PDQ_KEYS},
        "new_entry_add_ms": added_ms,
        "new_entry_matchable_on_next_search": matchable,
        "removal": percentiles(removal_ms),
        "budget_sweep": sweep,
        "startup": started_process,
    }
    rows = [
        {"measure": "entries", "value": f"{args.entries:,}"},
        {
            "measure": "layout (vector cells, pdq cells)",
            "value": f"{layout.vector_cells}, {layout.pdq_cells}",
        },
        {"measure": "build s: index / PDQ hash tables", "value": f"{build_s:.1f} / {tables_s:.1f}"},
        {
            "measure": "index memory MiB (estimate / RSS growth)",
            "value": f"{result['index_memory_mib_estimate']:.0f} / {rss_growth:.0f}",
        },
        {
            "measure": "embedding search + re-rank p50 / p99 ms",
            "value": "{p50_ms:.2f} / {p99_ms:.2f}".format(**searches["embedding_search"]),
        },
        {
            "measure": "PDQ search, 8 variants p50 / p99 ms",
            "value": "{p50_ms:.2f} / {p99_ms:.2f}".format(**searches["pdq_search_8_variants"]),
        },
        {
            "measure": "PDQ search, the picture's own code p50 / p99 ms",
            "value": "{p50_ms:.2f} / {p99_ms:.2f}".format(**searches["pdq_search_own_code"]),
        },
        {
            "measure": "a picture check's searches (embedding + own code) p50 / p99 ms",
            "value": "{p50_ms:.2f} / {p99_ms:.2f}".format(**searches["picture_check_searches"]),
        },
        *(
            {
                "measure": f"  the same, {views} views (each one more embedding query and PDQ code) p50 / p99 ms",
                "value": "{p50_ms:.2f} / {p99_ms:.2f}".format(**by_views),
            }
            for views, by_views in searches["check_searches_by_views"].items()
        ),
        {"measure": "recall of exact top-1 in top 10", "value": f"{searches['recall_of_exact_top1_in_top10']:.3f}"},
        {"measure": "  its similarity: largest error", "value": f"{searches['similarity_error_max']:.5f}"},
        *(
            {"measure": f"  recall, {band}", "value": f"{value:.3f}"}
            for band, value in searches["recall_by_cosine"].items()
        ),
        *(
            {"measure": f"  PDQ recall, {band}", "value": f"{value:.3f}"}
            for band, value in searches["pdq_recall_by_distance"].items()
        ),
        {
            "measure": "binary IVF alone: PDQ 8 variants / own code p50 ms",
            "value": "{:.2f} / {:.2f}".format(
                ivf_searches["pdq_search_8_variants"]["p50_ms"], ivf_searches["pdq_search_own_code"]["p50_ms"]
            ),
        },
        *(
            {"measure": f"  binary IVF alone: PDQ recall, {band}", "value": f"{value:.3f}"}
            for band, value in ivf_searches["pdq_recall_by_distance"].items()
        ),
        {"measure": "snapshot s / MiB", "value": f"{snapshot_s:.1f} / {snapshot_mib:.0f}"},
        {"measure": "later snapshot (21 changes) s", "value": f"{later_snapshot_s:.1f}"},
        {
            "measure": "start-up s (fresh process) / RSS MiB",
            "value": f"{started_process['startup_s']:.1f} / {started_process['rss_mib']:.0f}",
        },
        {
            "measure": "  PDQ hash tables ready s / RSS MiB",
            "value": f"{started_process['pdq_tables_ready_s']:.1f} / {started_process['tables_rss_mib']:.0f}",
        },
        {"measure": "new entry: add ms, matchable on next search", "value": f"{added_ms:.1f}, {matchable}"},
        {"measure": "removal p50 / p99 ms", "value": "{p50_ms:.2f} / {p99_ms:.2f}".format(**result["removal"])},
    ]
    print(format_table(rows, ["measure", "value"]))
    if sweep:
        print("\nScan budgets (IVF entries compared per query view / per PDQ variant, PDQ on the binary IVF alone):\n")
        print(
            format_table(
                [
                    {
                        "vector budget": row["vector_budget"],
                        "embedding p50 / p99 ms": "{p50_ms:.2f} / {p99_ms:.2f}".format(**row["embedding_search"]),
                        "recall": round(row["recall_of_exact_top1_in_top10"], 3),
                        "recall cos 0.5-0.6": round(row["recall_by_cosine"]["cos 0.50-0.60"], 3),
                        "pdq budget": row["pdq_budget"],
                        "PDQ p50 / p99 ms": "{p50_ms:.2f} / {p99_ms:.2f}".format(**row["pdq_search_8_variants"]),
                        "PDQ recall 32-48 bits": round(row["pdq_recall_by_distance"]["pdq 32-48 bits"], 3),
                    }
                    for row in sweep
                ],
                [
                    "vector budget",
                    "embedding p50 / p99 ms",
                    "recall",
                    "recall cos 0.5-0.6",
                    "pdq budget",
                    "PDQ p50 / p99 ms",
                    "PDQ recall 32-48 bits",
                ],
            )
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
