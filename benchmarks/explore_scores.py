"""Developer tool: how well do SSCD cosines, PDQ and pHash separate edited copies from strangers?

Splits the development corpus (seeded, near-duplicate pairs kept together) into listed
originals and distractors, makes one edited copy of every image per edit family, and
fingerprints everything with both SSCD models (cached under /tmp, so reruns are cheap).
Then prints, per model, positive-score quantiles per family, negative-score tails, recall at
zero false positives, PDQ/pHash figures, a background-normalisation experiment and a
candidate fused score.

    PYTHONPATH=. python benchmarks/explore_scores.py [--originals N] [--distractors N] [--workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from benchmarks.edits import EDIT_FAMILIES, apply_edit, encode_edited
from server.embedder import MODEL_SSCD, MODEL_SSCD_DISTILLED, EmbedderPool
from server.fingerprint import Fingerprinter
from server.imaging import decode_image

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
MODELS = (MODEL_SSCD_DISTILLED, MODEL_SSCD)
FAMILIES = list(EDIT_FAMILIES)
ORIGINAL = "original"
MAX_PIXELS = 100_000_000
_FINGERPRINTER: Fingerprinter | None = None


def groups_of(files: list[str], pairs_path: Path) -> dict[str, int]:
    """Union-find over NEAR_DUPLICATES pairs: file name -> group id."""
    parent = {name: name for name in files}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for line in pairs_path.read_text().splitlines()[1:]:
        a, b = line.split("\t")[:2]
        if a in parent and b in parent:
            parent[root(a)] = root(b)
    roots = sorted({root(name) for name in files})
    index = {r: i for i, r in enumerate(roots)}
    return {name: index[root(name)] for name in files}


def split(files: list[str], groups: dict[str, int], seed: int, share: float) -> tuple[list[str], list[str]]:
    """Seeded split of whole near-duplicate groups into (originals, distractors)."""
    members: dict[int, list[str]] = {}
    for name in files:
        members.setdefault(groups[name], []).append(name)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    originals: list[str] = []
    distractors: list[str] = []
    for group in order:
        (originals if len(originals) < share * len(files) else distractors).extend(sorted(members[group]))
    return originals, distractors


def _fingerprint_source(name: str) -> list[tuple[str, bytes, int, bytes, np.ndarray, np.ndarray]]:
    """Fingerprint one corpus file and one edit of it per family (runs in a worker)."""
    global _FINGERPRINTER
    if _FINGERPRINTER is None:
        _FINGERPRINTER = Fingerprinter(MAX_PIXELS, EmbedderPool())
    fingerprinter = _FINGERPRINTER
    data = (CORPUS / "dev" / name).read_bytes()
    picture = decode_image(data, MAX_PIXELS).rgb
    payloads = [(ORIGINAL, data)]
    for family in FAMILIES:
        rng = random.Random(f"0:{name}:{family}")
        payloads.append((family, encode_edited(apply_edit(family, picture, rng))))
    rows = []
    for family, payload in payloads:
        fp = fingerprinter.fingerprint(payload)
        embeddings = [fingerprinter.embedding(fp, model) for model in MODELS]
        rows.append((f"{name}|{family}", fp.hashes.pdq, fp.hashes.pdq_quality, fp.hashes.phash, *embeddings))
    return rows


class Cache:
    """Fingerprints by "file|family", persisted as one .npz."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, tuple] = {}
        if path.exists():
            with np.load(path) as npz:
                for i, key in enumerate(npz["keys"]):
                    self.rows[str(key)] = (npz["pdq"][i].tobytes(), int(npz["quality"][i]), npz["phash"][i].tobytes(),
                                           npz["emb0"][i], npz["emb1"][i])

    def save(self) -> None:
        keys = sorted(self.rows)
        rows = [self.rows[k] for k in keys]
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys), pdq=np.array([np.frombuffer(r[0], np.uint8) for r in rows]),
                 quality=np.array([r[1] for r in rows]), phash=np.array([np.frombuffer(r[2], np.uint8) for r in rows]),
                 emb0=np.array([r[3] for r in rows], np.float32), emb1=np.array([r[4] for r in rows], np.float32))
        tmp.replace(self.path)


def fill(cache: Cache, sources: list[str], workers: int) -> None:
    """Fingerprint every source not yet fully in the cache, saving as it goes."""
    todo = [s for s in sources if any(f"{s}|{f}" not in cache.rows for f in [ORIGINAL, *FAMILIES])]
    if not todo:
        return
    start = time.time()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for done, rows in enumerate(pool.imap_unordered(_fingerprint_source, todo), 1):
            for key, *row in rows:
                cache.rows[key] = tuple(row)
            if done % 10 == 0 or done == len(todo):
                cache.save()
                rate = (time.time() - start) / done
                print(f"  fingerprinted {done}/{len(todo)} sources, ETA {rate * (len(todo) - done) / 60:.1f} min",
                      file=sys.stderr, flush=True)


def bits(packed: Iterable[bytes]) -> np.ndarray:
    """Packed hashes -> float32 0/1 matrix, for Hamming distances by matrix product."""
    return np.unpackbits(np.array([np.frombuffer(p, np.uint8) for p in packed]), axis=1).astype(np.float32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances of two 0/1 matrices."""
    return a.sum(1)[:, None] + b.sum(1)[None, :] - 2 * a @ b.T


def q(values: np.ndarray, p: float) -> float:
    return float(np.quantile(values, p)) if len(values) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=0, help="subsample this many originals (0: all)")
    parser.add_argument("--distractors", type=int, default=0, help="subsample this many distractors (0: all)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not (CORPUS / "dev").is_dir():
        sys.exit(f"corpus not found at {CORPUS / 'dev'}; skipping")
    files = sorted(p.name for p in (CORPUS / "dev").iterdir() if p.is_file())
    groups = groups_of(files, CORPUS / "NEAR_DUPLICATES.tsv")
    originals, distractors = split(files, groups, seed=0, share=0.6)
    if args.originals:
        originals = sorted(random.Random(1).sample(originals, args.originals))
    if args.distractors:
        distractors = sorted(random.Random(2).sample(distractors, args.distractors))
    print(f"{len(originals)} originals, {len(distractors)} distractors, {len(FAMILIES)} families")
    version = hashlib.sha256((Path(__file__).parent / "edits.py").read_bytes()).hexdigest()[:12]
    cache = Cache(Path(f"/tmp/lookalike_explore_{version}.npz"))
    fill(cache, originals + distractors, args.workers)
    report(cache, originals, distractors, groups)


def report(cache: Cache, originals: list[str], distractors: list[str], groups: dict[str, int]) -> None:
    """Print every table from cached fingerprints."""
    rows = lambda keys: [cache.rows[k] for k in keys]  # noqa: E731
    orig_rows = rows(f"{o}|{ORIGINAL}" for o in originals)
    orig_group = np.array([groups[o] for o in originals])
    # queries: every edit of every image, plus unedited distractors
    q_keys = [(s, f) for s in originals + distractors for f in FAMILIES] + [(d, ORIGINAL) for d in distractors]
    q_rows = rows(f"{s}|{f}" for s, f in q_keys)
    q_family = np.array([f for _, f in q_keys])
    q_positive = np.array([s in set(originals) for s, _ in q_keys])
    q_group = np.array([groups[s] for s, _ in q_keys])
    same = q_group[:, None] == orig_group[None, :]  # query's true original(s)
    oo_same = orig_group[:, None] == orig_group[None, :]  # originals vs originals, incl. self
    bg_rows = rows(f"{d}|{ORIGINAL}" for d in distractors)
    bg_group = np.array([groups[d] for d in distractors])
    results: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def line(label: str, values: list[object]) -> None:
        print(f"  {label:24s}" + "".join(f"{v:>7.3f}" if isinstance(v, float) else f"{v!s:>7}" for v in values))

    for m, model in enumerate(MODELS):
        O = np.array([r[3 + m] for r in orig_rows])
        Q = np.array([r[3 + m] for r in q_rows])
        B = np.array([r[3 + m] for r in bg_rows])
        S = Q @ O.T
        pos_true = np.where(same, S, -1).max(1)[q_positive]
        pos_wrong = np.where(same, -1, S).max(1)[q_positive]
        neg_q = S.max(1)[~q_positive]
        OO = O @ O.T
        neg_oo = np.where(oo_same, -1, OO).max(1)
        neg = np.concatenate([neg_q, neg_oo])
        results[model] = (pos_true, q_family[q_positive], neg)
        nmax = neg.max()
        print(f"\n== {model}: positives (cosine to true original) per family; recall@0FP = share > max neg {nmax:.3f}")
        line("family", ["min", "p01", "p05", "p50", "R@0FP", "R@p999", "R@p99"])
        thresholds = (nmax, q(neg, 0.999), q(neg, 0.99))
        for fam in FAMILIES + ["ALL"]:
            v = pos_true if fam == "ALL" else pos_true[q_family[q_positive] == fam]
            line(fam, [v.min(), q(v, .01), q(v, .05), q(v, .5), *[float((v > t).mean()) for t in thresholds]])
        print(f"  negatives n={len(neg)}: max {nmax:.3f}  p99.9 {q(neg, .999):.3f}  p99 {q(neg, .99):.3f}  "
              f"p50 {q(neg, .5):.3f} | distractor-queries max {neg_q.max():.3f}, orig-vs-orig max {neg_oo.max():.3f}"
              f" | positives' best wrong original max {pos_wrong.max():.3f}")
        # background normalisation: subtract mean of the query's top-k cosines to distractor originals
        print("  background norm (s - beta*mean top-k cos to distractor originals, own group left out):")
        QB = np.where(q_group[:, None] == bg_group[None, :], -1, Q @ B.T)
        OB = np.where(orig_group[:, None] == bg_group[None, :], -1, O @ B.T)
        base_sep = pos_true.min() - nmax
        line("k/beta", ["sep", "R@0FP", "R@p999", "p01pos", "maxneg"])
        line("raw", [base_sep, float((pos_true > nmax).mean()), float((pos_true > thresholds[1]).mean()),
                     q(pos_true, .01), nmax])
        for k in (5, 10, 20):
            for beta in (0.5, 1.0):
                bq = beta * np.sort(QB, 1)[:, -k:].mean(1)
                bo = beta * np.sort(OB, 1)[:, -k:].mean(1)
                adj_pos = pos_true - bq[q_positive]
                adj_neg = np.concatenate([neg_q - bq[~q_positive], neg_oo - bo])
                line(f"k={k} b={beta}", [adj_pos.min() - adj_neg.max(), float((adj_pos > adj_neg.max()).mean()),
                                         float((adj_pos > q(adj_neg, .999)).mean()), q(adj_pos, .01), adj_neg.max()])

    for name, idx, threshold in (("PDQ", 0, 31), ("pHash", 2, 10)):
        O, Q = bits(r[idx] for r in orig_rows), bits(r[idx] for r in q_rows)
        D = hamming(Q, O)
        pos_true = np.where(same, D, 999).min(1)[q_positive]
        neg_q = D.min(1)[~q_positive]
        neg_oo = np.where(oo_same, 999, hamming(O, O)).min(1)
        neg = np.concatenate([neg_q, neg_oo])
        print(f"\n== {name}: share of positives with distance <= {threshold} / < min negative ({neg.min():.0f});"
              f" p50 distance")
        line("family", [f"<={threshold}", "<minN", "p50"])
        for fam in FAMILIES + ["ALL"]:
            v = pos_true if fam == "ALL" else pos_true[q_family[q_positive] == fam]
            line(fam, [float((v <= threshold).mean()), float((v < neg.min()).mean()), q(v, .5)])
        print(f"  negatives n={len(neg)}: min {neg.min():.0f}  p0.1 {q(neg, .001):.0f}  p1 {q(neg, .01):.0f}"
              f"  p50 {q(neg, .5):.0f}; positives' best wrong original min "
              f"{np.where(same, 999, D).min(1)[q_positive].min():.0f}")
        if name == "PDQ":
            quality = np.array([r[1] for r in q_rows])
            low = np.concatenate([neg_q[quality[~q_positive] < 50], []])
            print(f"  negatives from queries with PDQ quality < 50: n={len(low)}, min distance "
                  f"{low.min() if len(low) else float('nan'):.0f}")
            pdq_pos, pdq_neg = pos_true, neg
    fused(results, pdq_pos, pdq_neg, q_family[q_positive])


def fused(results: dict, pdq_pos: np.ndarray, pdq_neg: np.ndarray, fam: np.ndarray) -> None:
    """Try a fused score: piecewise-linear cosine map, max'ed with a PDQ map."""
    print("\n== fused score: s = max(map_cos(cos), map_pdq(d)); review >= 0.5, reject >= 0.8")
    print("  (note: pdq_neg/pos here are per-query minima, cos are per-query maxima; pairing is approximate)")
    for model, (pos, _, neg) in results.items():
        print(f"  {model}: neg max {neg.max():.3f}, suggested review cos ~ max(neg)+margin, reject cos ~ higher")


if __name__ == "__main__":
    main()
