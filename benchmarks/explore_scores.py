"""Developer tool: how well do SSCD cosines, PDQ and pHash separate edited copies from strangers?

Splits the development corpus (seeded, near-duplicate pairs kept together) into listed
originals and distractors, makes one edited copy of every image per edit family, and
fingerprints everything with both SSCD models (cached under /tmp, so reruns are cheap).
Then prints, per model, positive-score quantiles per family, negative-score tails (ordinary
negatives, and a harder tier: other shots of the same scene, see SCENES), recall above those
tails, PDQ/pHash figures, a background-normalisation experiment, the reject-threshold
trade-off and the candidate fused score (FUSED_COS, PDQ_POINTS).

    PYTHONPATH=. python benchmarks/explore_scores.py [--originals N] [--distractors N] [--workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import random
import re
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
                arrays = {name: npz[name] for name in npz.files}  # each member read once
            for i, key in enumerate(arrays["keys"]):
                self.rows[str(key)] = (
                    arrays["pdq"][i].tobytes(),
                    int(arrays["quality"][i]),
                    arrays["phash"][i].tobytes(),
                    arrays["emb0"][i],
                    arrays["emb1"][i],
                )

    def save(self) -> None:
        keys = sorted(self.rows)
        rows = [self.rows[k] for k in keys]
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            keys=np.array(keys),
            pdq=np.array([np.frombuffer(r[0], np.uint8) for r in rows]),
            quality=np.array([r[1] for r in rows]),
            phash=np.array([np.frombuffer(r[2], np.uint8) for r in rows]),
            emb0=np.array([r[3] for r in rows], np.float32),
            emb1=np.array([r[4] for r in rows], np.float32),
        )
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
                print(
                    f"  fingerprinted {done}/{len(todo)} sources, ETA {rate * (len(todo) - done) / 60:.1f} min",
                    file=sys.stderr,
                    flush=True,
                )


def bits(packed: Iterable[bytes]) -> np.ndarray:
    """Packed hashes -> float32 0/1 matrix, for Hamming distances by matrix product."""
    return np.unpackbits(np.array([np.frombuffer(p, np.uint8) for p in packed]), axis=1).astype(np.float32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances of two 0/1 matrices."""
    return a.sum(1)[:, None] + b.sum(1)[None, :] - 2 * a @ b.T


def q(values: np.ndarray, p: float) -> float:
    """Quantile p of values (nan when empty)."""
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


SCENES = {  # different shots of one scene: not "the same picture", but a harder tier of negatives
    "chessboard": re.compile(r"opencv__data__(left|right)\d\d\.|calibration__left"),
    "stereo": re.compile(r"opencv__data__(left|right)\.jpg"),
    "mvtb-seq": re.compile(r"pypi_mvtb__seq__"),
    "campus": re.compile(r"pypi_mvtb__campus__"),
    "mosaic": re.compile(r"pypi_mvtb__mosaic__"),
    "leuven": re.compile(r"opencv__data__leuven"),
    "ela": re.compile(r"opencv__data__ela_"),  # a tampered copy of one photo, absent from NEAR_DUPLICATES
}
PDQ_MIN_QUALITY = 50


def scene_of(name: str) -> str:
    """The same-scene series a file belongs to, or the file itself."""
    return next((key for key, pattern in SCENES.items() if pattern.search(name)), name)


def _line(label: str, values: list[object]) -> None:
    """One table row: a label then right-aligned numbers."""
    cells = [f"{float(v):>7.3f}" if isinstance(v, (float, np.floating)) else f"{v!s:>7}" for v in values]
    print(f"  {label:23s}" + "".join(cells))


class Study:
    """Queries (every edit, plus unedited distractors) against listed originals, with truth masks."""

    def __init__(self, cache: Cache, originals: list[str], distractors: list[str], groups: dict[str, int]) -> None:
        listed = set(originals)
        self.q_keys = [(s, f) for s in originals + distractors for f in FAMILIES] + [(d, ORIGINAL) for d in distractors]
        self.q_rows = [cache.rows[f"{s}|{f}"] for s, f in self.q_keys]
        self.o_rows = [cache.rows[f"{o}|{ORIGINAL}"] for o in originals]
        self.b_rows = [cache.rows[f"{d}|{ORIGINAL}"] for d in distractors]
        self.is_pos = np.array([s in listed for s, _ in self.q_keys])
        self.pos_fam = np.array([f for s, f in self.q_keys if s in listed])
        qg, og = np.array([groups[s] for s, _ in self.q_keys]), np.array([groups[o] for o in originals])
        self.bg_group, self.q_group, self.o_group = np.array([groups[d] for d in distractors]), qg, og
        qs, os_ = np.array([scene_of(s) for s, _ in self.q_keys]), np.array([scene_of(o) for o in originals])
        self.same, self.oo_same = qg[:, None] == og[None, :], og[:, None] == og[None, :]
        self.scene = (qs[:, None] == os_[None, :]) & ~self.same
        self.oo_scene = (os_[:, None] == os_[None, :]) & ~self.oo_same
        self.q_quality = np.array([r[1] for r in self.q_rows])
        self.o_quality = np.array([r[1] for r in self.o_rows])

    def tiers(self, S: np.ndarray, SO: np.ndarray) -> dict[str, np.ndarray]:
        """Per-query best similarity: positives (true original), ordinary and same-scene negatives."""
        best = lambda M, mask: np.where(mask, M, -np.inf).max(1)  # noqa: E731
        neg_q, pos = ~self.is_pos, self.is_pos
        ordinary = np.concatenate([best(S, ~self.same & ~self.scene)[neg_q], best(SO, ~self.oo_same & ~self.oo_scene)])
        scene = np.concatenate([best(S, self.scene)[neg_q], best(SO, self.oo_scene)])
        pairs = np.concatenate([S[neg_q][~self.scene[neg_q]], SO[~self.oo_same & ~self.oo_scene]])
        return {
            "pos": best(S, self.same)[pos],
            "ord": ordinary,
            "scene": scene[np.isfinite(scene)],
            "pairs": pairs,
            "wrong": best(S, ~self.same & ~self.scene)[pos],
        }

    def family_table(self, t: dict[str, np.ndarray], sign: float = 1.0) -> None:
        """Positive quantiles per family and recall above the ordinary / same-scene negative tails."""
        o, sc = t["ord"], t["scene"]
        cuts = (o.max(), q(o, 0.999), max(o.max(), sc.max()))
        _line("family", ["worst", "p01", "p05", "p50", "R>maxO", "R>O999", "R>maxSc"])
        for f in FAMILIES + ["ALL"]:
            v = t["pos"] if f == "ALL" else t["pos"][self.pos_fam == f]
            qs = [sign * q(v, p) for p in (0.0, 0.01, 0.05, 0.5)]
            _line(f, [*qs, *[float((v > c).mean()) for c in cuts]])
        pairs = t["pairs"]
        print(
            f"  ordinary negatives n={len(o)}: best {sign * o.max():.3f} p99.9 {sign * cuts[1]:.3f} "
            f"p99 {sign * q(o, 0.99):.3f} p50 {sign * q(o, 0.5):.3f}; pairs n={len(pairs)}: 1e-5 tail "
            f"{sign * q(pairs, 1 - 1e-5):.3f} 1e-4 {sign * q(pairs, 1 - 1e-4):.3f}; same-scene n={len(sc)}: best "
            f"{sign * sc.max():.3f} p90 {sign * q(sc, 0.9):.3f}; edits' best wrong original {sign * t['wrong'].max():.3f}"
        )


def report(cache: Cache, originals: list[str], distractors: list[str], groups: dict[str, int]) -> None:
    """Print every table from cached fingerprints."""
    st = Study(cache, originals, distractors, groups)
    sims: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for m, model in enumerate(MODELS):
        O, Q, B = (np.array([r[3 + m] for r in rows]) for rows in (st.o_rows, st.q_rows, st.b_rows))
        S, SO = Q @ O.T, O @ O.T
        sims[model] = (S, SO)
        t = st.tiers(S, SO)
        print(f"\n== {model} cosine: edit vs its true original; R>x = share above the negatives' tail x")
        st.family_table(t)
        print("  background norm: s - beta * mean(top-k cos of the query to distractor originals, own group out)")
        QB = np.where(st.q_group[:, None] == st.bg_group[None, :], -1, Q @ B.T)
        OB = np.where(st.o_group[:, None] == st.bg_group[None, :], -1, O @ B.T)
        _line("variant", ["sepO", "R>maxO", "R>O999", "R>maxSc", "maxO", "maxSc"])
        for k, beta in [(0, 0.0)] + [(k, b) for k in (5, 10, 20) for b in (0.5, 1.0)]:
            bq = beta * np.sort(QB, 1)[:, -k:].mean(1) if k else np.zeros(len(Q))
            bo = beta * np.sort(OB, 1)[:, -k:].mean(1) if k else np.zeros(len(O))
            a = st.tiers(S - bq[:, None], SO - bo[:, None])
            top = max(a["ord"].max(), a["scene"].max())
            _line(
                "raw" if not k else f"k={k} beta={beta}",
                [
                    a["pos"].min() - a["ord"].max(),
                    float((a["pos"] > a["ord"].max()).mean()),
                    float((a["pos"] > q(a["ord"], 0.999)).mean()),
                    float((a["pos"] > top).mean()),
                    a["ord"].max(),
                    a["scene"].max(),
                ],
            )
    for name, idx in (("pdq", 0), ("phash", 2)):
        O, Q = bits(r[idx] for r in st.o_rows), bits(r[idx] for r in st.q_rows)
        sims[name] = (-hamming(Q, O), -hamming(O, O))
        print(f"\n== {name} Hamming distance (shown positive; R>x = share closer than x)")
        st.family_table(st.tiers(*sims[name]), sign=-1.0)
    ok = (st.q_quality[:, None] >= PDQ_MIN_QUALITY) & (st.o_quality[None, :] >= PDQ_MIN_QUALITY)
    print(
        f"  pdq quality < {PDQ_MIN_QUALITY}: {int((st.q_quality < PDQ_MIN_QUALITY).sum())} queries, "
        f"{int((st.o_quality < PDQ_MIN_QUALITY).sum())} originals; ordinary negatives' min distance with both "
        f">= {PDQ_MIN_QUALITY}: {-st.tiers(np.where(ok, sims['pdq'][0], -999), sims['pdq'][1])['ord'].max():.0f}"
    )
    fused(st, sims)


def ramp(x: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """Piecewise-linear map through (x, y) points, clamped at both ends."""
    xs, ys = zip(*sorted(points), strict=False)
    return np.interp(x, xs, ys)


FUSED_COS = {  # cosine anchors per model: score 0, 0.5 (review), 0.8 (reject), 1
    MODEL_SSCD_DISTILLED: [(0.45, 0.0), (0.62, 0.5), (0.92, 0.8), (0.98, 1.0)],
    MODEL_SSCD: [(0.40, 0.0), (0.55, 0.5), (0.92, 0.8), (0.98, 1.0)],
}
PDQ_POINTS = [(0, 1.0), (31, 0.8), (50, 0.5), (70, 0.0)]  # Hamming distance anchors


def fused(st: Study, sims: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Fused score per (query, original) = max(cos ramp, PDQ ramp where both PDQ qualities suffice)."""
    (D, DO), ok_q, ok_o = sims["pdq"], st.q_quality >= PDQ_MIN_QUALITY, st.o_quality >= PDQ_MIN_QUALITY
    P = np.where(ok_q[:, None] & ok_o[None, :], ramp(-D, PDQ_POINTS), 0.0)
    PO = np.where(ok_o[:, None] & ok_o[None, :], ramp(-DO, PDQ_POINTS), 0.0)
    print("\n== reject-threshold trade-off: cosine c (or PDQ <= 31): same-scene queries over it / recall of edits")
    pdq31 = np.where(ok_q[:, None] & ok_o[None, :], -D <= 31, False)
    pdq31_o = np.where(ok_o[:, None] & ok_o[None, :], -DO <= 31, False)
    for model in FUSED_COS:
        S, SO = sims[model]
        cells = []
        for c in (0.70, 0.75, 0.80, 0.85, 0.90):
            t = st.tiers(((S >= c) | pdq31).astype(float), ((SO >= c) | pdq31_o).astype(float))
            cells.append(f"c={c:.2f}: {int(t['scene'].sum())}/{int(t['ord'].sum())} FR, R={t['pos'].mean():.2f}")
        print(f"  {model:15s} " + " | ".join(cells))
    print(f"\n== fused = max(cos ramp, PDQ ramp {PDQ_POINTS}); review >= 0.5, reject >= 0.8")
    for model, points in FUSED_COS.items():
        S, SO = sims[model]
        for label, (F, FO) in (
            ("cos only", (ramp(S, points), ramp(SO, points))),
            ("cos+pdq", (np.maximum(ramp(S, points), P), np.maximum(ramp(SO, points), PO))),
        ):
            t = st.tiers(F, FO)
            print(
                f"  {model} {label}, cos anchors {points}: ordinary negatives review {int((t['ord'] >= 0.5).sum())}"
                f"/{len(t['ord'])} reject {int((t['ord'] >= 0.8).sum())} (max {t['ord'].max():.3f}); same-scene "
                f"review {int((t['scene'] >= 0.5).sum())}/{len(t['scene'])} reject {int((t['scene'] >= 0.8).sum())}"
            )
            rows = [(f, t["pos"] if f == "ALL" else t["pos"][st.pos_fam == f]) for f in FAMILIES + ["ALL"]]
            print("    R@0.5: " + " ".join(f"{f[:8]}={(v >= 0.5).mean():.2f}" for f, v in rows))
            print("    R@0.8: " + " ".join(f"{f[:8]}={(v >= 0.8).mean():.2f}" for f, v in rows))


if __name__ == "__main__":
    main()
