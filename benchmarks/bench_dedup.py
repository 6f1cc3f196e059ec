"""Near-duplicate detection side by side: synthgen vs rensa vs datasketch, one core, one corpus.

Every method goes from raw text to verified near-duplicate pairs (shingling, signatures,
LSH, verification of the candidates) with the same shingles (word n-grams, n=5, of the
NFKC + case-folded text, regex \\w+ words), the same number of permutations (128) and the
same threshold (Jaccard >= 0.8). Quality is measured against the exact pairs: recall =
share of the pairs with exact Jaccard >= threshold that a method reports; precision =
share of the reported pairs whose exact Jaccard (from the pairs file, else computed) is
>= threshold. Speed: documents per CPU-second of this process, best of `--repeat` runs.

Corpus: `--corpus FILE.parquet` (columns `id`, `text`) with `--pairs FILE.json` (a list of
{"a": id, "b": id, "jaccard": J}: every pair whose exact Jaccard matters, at least all
with J >= threshold). Without `--corpus`, a synthetic corpus is generated (`--docs`,
`--seed`): ~130-word documents from a Zipf vocabulary, a share of them planted
near-duplicates of another document (word edits and tail cuts spread the exact Jaccard
over ~0.5-1.0, dense around 0.8); it is written as the same two files under `--out`, so
the run can be repeated on exactly that corpus.

Methods:
  synthgen     synthgen.stages.dedup.local.near_duplicate_pairs: numpy shingle hashes,
               MinHash signatures, LSH, candidates verified by exact Jaccard of the
               shingle-hash sets (what the in-shard clean step runs).
  synthgen-est the same signatures and LSH, verified by the signatures' estimate (what
               the run-wide stage does with the stored signatures).
  rensa        rensa 0.5.0 bulk API: Python shingles -> RMinHash.from_token_sets ->
               RMinHashLSH(num_bands=--rensa-bands).insert_many/query_all -> verified
               with RMinHash.jaccard (its estimate).
  rensa-exact  the same rensa candidates verified by exact Jaccard of the shingle sets.
  datasketch   MinHash.bulk + MinHashLSH(threshold) insertion_session/query, verified
               with MinHash.jaccard.

One core: run it under `taskset -c N` (or pass `--cpu N`); thread pools are set to one
thread before numpy/rensa load.

    taskset -c 1 python benchmarks/bench_dedup.py --docs 110000 --seed 0
    taskset -c 1 python benchmarks/bench_dedup.py --corpus c.parquet --pairs p.json
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import unicodedata  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from synthgen.config import NearDedupConfig  # noqa: E402
from synthgen.stages.dedup.local import near_duplicate_pairs, verified_near_pairs  # noqa: E402
from synthgen.stages.dedup.minhash import MinHasher, jaccard, word_shingles  # noqa: E402

_WORD = re.compile(r"\w+")
Pairs = set[tuple[int, int]]


# ---------------------------------------------------------------------------- corpus
def generate(n_docs: int, seed: int, dup_share: float = 0.1) -> tuple[list[str], list[dict]]:
    """`n_docs` texts (about 130 words) of which ~dup_share are planted near-duplicates
    of another text, and every within-cluster pair with its exact Jaccard (5-gram words)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lens = rng.integers(2, 11, size=50_000)
    vocab = np.array(["".join(rng.choice(letters, size=k)) for k in lens.tolist()])
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05  # Zipf-like word frequencies
    weights /= weights.sum()
    n_dup = int(n_docs * dup_share)
    n_base = n_docs - n_dup
    words_of: list[list[str]] = []
    sizes = np.clip(rng.normal(130, 20, n_base).astype(int), 60, 220)
    flat = rng.choice(len(vocab), size=int(sizes.sum()), p=weights)
    pos = 0
    for s in sizes.tolist():
        words_of.append(vocab[flat[pos : pos + s]].tolist())
        pos += s
    cluster_of: dict[int, list[int]] = {}
    root_of: dict[int, int] = {}
    for d in range(n_dup):
        # clusters of 2-4: a source gets one or more variants (edits of the source, or of
        # an earlier variant, so pairs inside a cluster span many Jaccard values)
        src = int(rng.integers(n_base)) if d % 3 else n_base + max(0, d - 1)
        if src >= len(words_of):
            src = int(rng.integers(n_base))
        w = list(words_of[src])
        n_edit = int(rng.choice([0, 1, 1, 2, 2, 2, 3, 3, 4, 5]))
        for _ in range(n_edit):
            i = int(rng.integers(len(w)))
            op = rng.integers(3)
            if op == 0:
                w[i] = f"v{d}x{i}"
            elif op == 1:
                w.insert(i, f"i{d}x{i}")
            elif len(w) > 10:
                del w[i]
        cut = int(rng.integers(0, 16))  # drop or append a tail: fine-grained Jaccard
        if rng.random() < 0.5:
            w = w[: max(10, len(w) - cut)]
        else:
            w = w + [f"t{d}x{k}" for k in range(cut)]
        words_of.append(w)
        root = root_of.setdefault(src, src)
        root_of[len(words_of) - 1] = root
        cluster_of.setdefault(root, [root]).append(len(words_of) - 1)
    texts = [" ".join(w) for w in words_of]
    perm = rng.permutation(len(texts))  # duplicates anywhere, not next to their source
    new_pos = np.empty_like(perm)
    new_pos[perm] = np.arange(len(perm))
    texts = [texts[i] for i in perm.tolist()]
    pairs = []
    for members in cluster_of.values():
        sh = {m: word_shingles(" ".join(words_of[m]), 5) for m in members}
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                ia, ib = sorted((int(new_pos[a]), int(new_pos[b])))
                pairs.append(
                    {"a": f"d{ia:07d}", "b": f"d{ib:07d}", "jaccard": jaccard(sh[a], sh[b])}
                )
    return texts, pairs


def write_corpus(texts: list[str], pairs: list[dict], corpus: Path, pairs_path: Path) -> None:
    corpus.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"d{i:07d}" for i in range(len(texts))]
    pq.write_table(pa.table({"id": ids, "text": texts}), corpus, compression="zstd")
    pairs_path.write_text(json.dumps(pairs))


def load_corpus(corpus: Path, pairs_path: Path) -> tuple[list[str], dict[tuple[int, int], float]]:
    try:
        t = pq.read_table(corpus)
    except (OSError, pa.ArrowInvalid) as exc:
        sys.exit(f"{corpus}: cannot read the corpus: {exc}")
    for col in ("id", "text"):
        if col not in t.column_names:
            sys.exit(f"{corpus}: no {col!r} column (have {t.column_names})")
    ids = [str(x) for x in t.column("id").to_pylist()]
    texts = [x or "" for x in t.column("text").to_pylist()]
    row = {x: i for i, x in enumerate(ids)}
    if len(row) != len(ids):
        sys.exit(f"{corpus}: the id column has duplicates")
    try:
        raw = json.loads(pairs_path.read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"{pairs_path}: cannot read the pairs: {exc}")
    if isinstance(raw, dict):
        raw = raw.get("pairs", raw)
    truth: dict[tuple[int, int], float] = {}
    for k, e in enumerate(raw):
        try:
            a, b, j = row[str(e["a"])], row[str(e["b"])], float(e["jaccard"])
        except KeyError as exc:
            sys.exit(f"{pairs_path}: entry {k} ({e!r}): no key or unknown id {exc}")
        if a != b:
            truth[(min(a, b), max(a, b))] = j
    return texts, truth


# ---------------------------------------------------------------------------- methods
def shingle_strings(text: str, n: int) -> list[str]:
    """The shingles of `word_shingles`, as strings (what rensa and datasketch hash)."""
    toks = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    if len(toks) < n:
        return [" ".join(toks)]
    return [" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def run_synthgen(texts: list[str], cfg: NearDedupConfig, batch: int, exact: bool) -> Pairs:
    hasher = MinHasher(
        num_perm=cfg.num_perm,
        shingle=cfg.shingle,
        shingle_size=cfg.shingle_size,
        seed=cfg.seed,
        stratified=cfg.stratified,
    )
    if exact:
        pairs = near_duplicate_pairs(texts, cfg, hasher=hasher, batch=batch)
    else:
        sigs = np.empty((len(texts), cfg.num_perm), np.uint32)
        for i in range(0, len(texts), batch):
            sigs[i : i + batch] = hasher.signatures(texts[i : i + batch])
        pairs = verified_near_pairs(sigs, np.arange(len(texts)), cfg)
    return {(int(a), int(b)) for a, b in pairs}


def _rensa(texts: list[str], cfg: NearDedupConfig, bands: int, exact: bool) -> Pairs:
    from rensa import RMinHash, RMinHashLSH

    toks = [shingle_strings(t, cfg.shingle_size) for t in texts]
    mhs = RMinHash.from_token_sets(toks, cfg.num_perm, cfg.seed)
    lsh = RMinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, num_bands=bands)
    lsh.insert_many(mhs)
    found: Pairs = set()
    sets: dict[int, set[str]] = {}
    for i, cands in enumerate(lsh.query_all(mhs)):
        for c in cands:
            if c >= i:
                continue
            if exact:
                for x in (c, i):
                    if x not in sets:
                        sets[x] = set(toks[x])
                ok = jaccard(sets[c], sets[i]) >= cfg.threshold
            else:
                ok = mhs[c].jaccard(mhs[i]) >= cfg.threshold
            if ok:
                found.add((c, i))
    return found


def run_datasketch(texts: list[str], cfg: NearDedupConfig) -> Pairs:
    from datasketch import MinHash, MinHashLSH

    shingles = ([s.encode() for s in shingle_strings(t, cfg.shingle_size)] for t in texts)
    mhs = MinHash.bulk(shingles, num_perm=cfg.num_perm, seed=cfg.seed)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    with lsh.insertion_session() as s:
        for i, m in enumerate(mhs):
            s.insert(i, m, check_duplication=False)
    found: Pairs = set()
    for i, m in enumerate(mhs):
        for c in lsh.query(m):
            if c < i and mhs[c].jaccard(m) >= cfg.threshold:
                found.add((c, i))
    return found


# ---------------------------------------------------------------------------- scoring
def evaluate(found: Pairs, truth: dict[tuple[int, int], float], texts: list[str], t: float) -> dict:
    sh: dict[int, set] = {}

    def exact_j(a: int, b: int) -> float:
        for x in (a, b):
            if x not in sh:
                sh[x] = word_shingles(texts[x], 5)
        return jaccard(sh[a], sh[b])

    pos = {p for p, v in truth.items() if v >= t}
    tp = sum(1 for p in found if (truth[p] if p in truth else exact_j(*p)) >= t)
    bins = {}
    edges = [0.7, 0.75, 0.8, 0.82, 0.85, 0.9, 1.0001]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = [p for p, v in truth.items() if lo <= v < hi]
        if sel:
            bins[f"{lo:.2f}-{min(hi, 1.0):.2f}"] = (
                sum(p in found for p in sel) / len(sel),
                len(sel),
            )
    return {
        "precision": tp / len(found) if found else 1.0,
        "recall": len(pos & found) / len(pos) if pos else 1.0,
        "found": len(found),
        "bins": bins,
    }


def timed(fn: Callable[[], Pairs], repeat: int) -> tuple[Pairs, float, float]:
    """(result, best CPU seconds, wall seconds of that run)."""
    best = None
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        c, w = time.process_time() - c0, time.perf_counter() - w0
        if best is None or c < best[1]:
            best = (out, c, w)
    assert best is not None
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="Parquet file with id and text columns")
    ap.add_argument("--pairs", type=Path, help="JSON list of {a, b, jaccard} (with --corpus)")
    ap.add_argument("--docs", type=int, default=110_000, help="synthetic corpus size")
    ap.add_argument("--seed", type=int, default=0, help="synthetic corpus seed")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dedup-corpus"))
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--shingle-size", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4096, help="synthgen: docs per signature call")
    ap.add_argument("--rensa-bands", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2, help="runs per method; the fastest counts")
    ap.add_argument("--methods", default="synthgen,synthgen-est,rensa,rensa-exact,datasketch")
    ap.add_argument("--cpu", type=int, help="pin this process to one CPU")
    a = ap.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    if a.corpus is None:
        corpus = a.out / f"corpus-{a.docs}-s{a.seed}.parquet"
        pairs_path = a.out / f"pairs-{a.docs}-s{a.seed}.json"
        if not (corpus.exists() and pairs_path.exists()):
            t0 = time.perf_counter()
            texts, pairs = generate(a.docs, a.seed)
            write_corpus(texts, pairs, corpus, pairs_path)
            print(f"generated {corpus} and {pairs_path} in {time.perf_counter() - t0:.1f}s")
    else:
        if a.pairs is None:
            sys.exit("--corpus needs --pairs (the exact pairs to score against)")
        corpus, pairs_path = a.corpus, a.pairs
    if a.generate_only:
        return
    texts, truth = load_corpus(corpus, pairs_path)
    cfg = NearDedupConfig(num_perm=a.num_perm, threshold=a.threshold, shingle_size=a.shingle_size)
    n_pos = sum(v >= a.threshold for v in truth.values())
    words = np.mean([len(t.split()) for t in texts[:20_000]])
    print(
        f"corpus: {corpus} ({len(texts)} docs, mean {words:.0f} words), pairs: {pairs_path} "
        f"({len(truth)} pairs, {n_pos} with J >= {a.threshold}); shingles: word {a.shingle_size}"
        f"-grams; num_perm {a.num_perm}; cpus allowed {sorted(os.sched_getaffinity(0))}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"synthgen LSH (bands, rows): exact-verified {cfg.exact_lsh_params()}, "
        f"estimate-verified {cfg.lsh_params()}"
    )
    methods: dict[str, Callable[[], Pairs]] = {
        "synthgen": lambda: run_synthgen(texts, cfg, a.batch, exact=True),
        "synthgen-est": lambda: run_synthgen(texts, cfg, a.batch, exact=False),
        "rensa": lambda: _rensa(texts, cfg, a.rensa_bands, exact=False),
        "rensa-exact": lambda: _rensa(texts, cfg, a.rensa_bands, exact=True),
        "datasketch": lambda: run_datasketch(texts, cfg),
    }
    wanted = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in methods]
    if unknown:
        sys.exit(f"--methods: unknown {unknown}; known {list(methods)}")
    run_synthgen(texts[: a.batch], cfg, a.batch, exact=True)  # one-off tables, untimed
    print(
        f"{'method':<13} {'cpu s':>7} {'wall s':>7} {'docs/s':>8} {'P':>6} {'R':>6} "
        f"{'found':>6}  recall by exact J (pairs)"
    )
    for name in wanted:
        try:
            found, cpu, wall = timed(methods[name], a.repeat)
        except ImportError as exc:
            print(f"{name:<13} skipped: {exc} (pip install -e '.[test]')")
            continue
        ev = evaluate(found, truth, texts, a.threshold)
        bins = "  ".join(f"{k}:{r:.3f}({c})" for k, (r, c) in ev["bins"].items())
        print(
            f"{name:<13} {cpu:>7.2f} {wall:>7.2f} {len(texts) / cpu:>8.0f} "
            f"{ev['precision']:>6.3f} {ev['recall']:>6.3f} {ev['found']:>6}  {bins}",
            flush=True,
        )


if __name__ == "__main__":
    main()
