"""In-shard near-duplicates verified by exact Jaccard: quality on a planted corpus, the
exact Jaccard against the Python reference, bucket expansion, and signatures that do not
depend on the process that computes them."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

import numpy as np

from synthgen.config import NearDedupConfig
from synthgen.stages.dedup.clusters import band_pairs, candidate_pairs
from synthgen.stages.dedup.local import (
    duplicate_reasons,
    hasher_for,
    near_duplicate_pairs,
    shingle_jaccard,
    verified_near_pairs,
)
from synthgen.stages.dedup.minhash import MinHasher, jaccard, word_shingles
from tests._cleanutil import text

CFG = NearDedupConfig(shingle_size=5)  # 5-gram words, 128 values, threshold 0.8


def _planted(n_base: int = 300, seed: int = 7) -> tuple[list[str], dict[tuple[int, int], float]]:
    """n_base ~130-word texts and one variant of each (a few words replaced, inserted or
    deleted, a tail cut or added), so the exact Jaccard of the pairs spreads over ~0.6-1.0
    and many pairs lie just above and just below 0.8."""
    rng = random.Random(seed)
    docs = [text(1000 + i, rng.randint(110, 150)) for i in range(n_base)]
    truth = {}
    for i in range(n_base):
        w = docs[i].split()
        for k in range(rng.choice([0, 1, 1, 2, 2, 3, 4])):
            j = rng.randrange(len(w))
            op = rng.randrange(3)
            if op == 0:
                w[j] = f"rep{i}x{k}"
            elif op == 1:
                w.insert(j, f"ins{i}x{k}")
            else:
                del w[j]
        cut = rng.randrange(0, 14)
        w = w[: len(w) - cut] if rng.random() < 0.5 else w + [f"tail{i}x{c}" for c in range(cut)]
        docs.append(" ".join(w))
        truth[(i, len(docs) - 1)] = jaccard(word_shingles(docs[i], 5), word_shingles(docs[-1], 5))
    order = list(range(len(docs)))
    rng.shuffle(order)  # duplicates are not next to their source
    where = {old: new for new, old in enumerate(order)}
    docs = [docs[o] for o in order]
    truth = {tuple(sorted((where[a], where[b]))): j for (a, b), j in truth.items()}
    return docs, truth


def _scores(found: np.ndarray, truth: dict, docs: list[str]) -> tuple[float, float]:
    got = {(int(a), int(b)) for a, b in found}
    pos = {p for p, j in truth.items() if j >= CFG.threshold}

    def exact(p: tuple[int, int]) -> float:
        if p in truth:
            return truth[p]
        return jaccard(word_shingles(docs[p[0]], 5), word_shingles(docs[p[1]], 5))

    tp = sum(exact(p) >= CFG.threshold for p in got)
    return tp / max(len(got), 1), len(pos & got) / len(pos)


def test_planted_corpus_recall_and_precision_at_least_099() -> None:
    docs, truth = _planted()
    js = np.array(list(truth.values()))
    # the corpus tests the threshold: many pairs on both sides close to it
    assert np.sum((js >= 0.8) & (js < 0.85)) >= 30
    assert np.sum((js >= 0.75) & (js < 0.8)) >= 20
    assert np.sum(js >= 0.8) >= 150

    pairs = near_duplicate_pairs(docs, CFG, batch=128)  # several batches
    precision, recall = _scores(pairs, truth, docs)
    assert precision >= 0.99 and recall >= 0.99, (precision, recall)
    assert np.all(pairs[:, 0] < pairs[:, 1])
    # the same pairs through the clean step's entry (all rows eligible)
    m = hasher_for(CFG)
    shingles = m.shingle_hashes(docs)
    sigs = m.signatures_from_hashes(*shingles)
    reasons = duplicate_reasons(
        [f"p{i:04d}" for i in range(len(docs))],
        np.arange(len(docs), dtype=np.uint64),  # no exact duplicates
        sigs,
        np.ones(len(docs), bool),
        CFG,
        exact=False,
        shingles=shingles,
    )
    assert set(reasons) == {int(b) for _, b in pairs}  # the later row of each pair drops

    # the signatures' estimate alone cannot tell pairs at J 0.80-0.85 from 0.75-0.80:
    # that is what the exact verification buys
    est = verified_near_pairs(sigs, np.arange(len(docs)), CFG)
    est_precision, est_recall = _scores(est, truth, docs)
    assert min(est_precision, est_recall) < 0.99


def test_shingle_jaccard_matches_python_sets() -> None:
    m = MinHasher(shingle_size=5)
    base = text(5, 60)
    docs = [
        base,
        base + " " + base,  # every shingle twice (+ 4 across the seam): sets count once
        " ".join(base.split()[3:]),
        "",
        "Too short",
        "too SHORT",
        text(6, 60),
    ]
    hashes, counts = m.shingle_hashes(docs)
    pairs = np.array([(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs))])
    got = shingle_jaccard(hashes, counts, pairs)
    want = [jaccard(word_shingles(docs[i], 5), word_shingles(docs[j], 5)) for i, j in pairs]
    assert np.allclose(got, want)
    j = {(int(a), int(b)): float(x) for (a, b), x in zip(pairs, got, strict=True)}
    assert j[(0, 1)] == 56 / 60  # 56 shingles, 4 more in the doubled text
    assert j[(4, 5)] == 1.0  # one short shingle each, equal after case-folding
    assert j[(0, 6)] == 0.0
    assert shingle_jaccard(hashes, counts, np.zeros((0, 2), np.int64)).shape == (0,)


def test_band_pairs_expands_buckets_of_every_size() -> None:
    rng = np.random.default_rng(3)
    n, b = 2000, 5
    keys = rng.integers(0, 2**63, size=(n, b), dtype=np.uint64)
    start = 0
    for size in [2, 3, 3, 4, 5, 7, 8, 8, 9, 12, 30]:  # buckets at, below and over cap 8
        col = start % b
        members = rng.choice(n, size=size, replace=False)
        keys[members, col] = keys[members[0], col]
        start += 1
    want = candidate_pairs(keys.ravel(), np.repeat(np.arange(n), b), 8)
    assert np.array_equal(band_pairs(keys, 8), want)


_DIGEST = (
    "import hashlib, sys\n"
    "from synthgen.stages.dedup.minhash import MinHasher\n"
    "texts = sys.stdin.read().split('\\x00')\n"
    "for kw in (dict(shingle_size=5), dict(shingle_size=3, stratified=False),"
    " dict(shingle='char', shingle_size=5)):\n"
    "    sig = MinHasher(**kw).signatures(texts)\n"
    "    print(hashlib.sha256(sig.tobytes()).hexdigest())\n"
)


def test_signatures_identical_across_processes() -> None:
    texts = [text(i, 130) for i in range(40)] + ["", "Ünïcode straße ＦＵＬＬ width 😀 emoji", "x"]
    outs = []
    for hash_seed in ("1", "987"):  # Python's str hash differs between the two processes
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": os.getcwd()}
        proc = subprocess.run(
            [sys.executable, "-c", _DIGEST],
            input="\x00".join(texts),
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        outs.append(proc.stdout.split())
    here = [
        hashlib.sha256(MinHasher(**kw).signatures(texts).tobytes()).hexdigest()
        for kw in (
            dict(shingle_size=5),
            dict(shingle_size=3, stratified=False),
            dict(shingle="char", shingle_size=5),
        )
    ]
    assert outs[0] == outs[1] == here
    assert len(set(here)) == 3


def test_exact_bands_rows_reach_the_recall_target_with_most_rows() -> None:
    from synthgen.stages.dedup.lsh import exact_bands_rows

    def p_cand(t: float, b: int, r: int) -> float:
        return 1.0 - (1.0 - t**r) ** b

    for t, perms in ((0.8, 128), (0.5, 128), (0.9, 256)):
        b, r = exact_bands_rows(t, perms)
        assert b * r <= perms and b == perms // r
        assert p_cand(t, b, r) >= 0.999
        assert p_cand(t, perms // (r + 1), r + 1) < 0.999  # one more row would miss it
    assert NearDedupConfig(shingle_size=5).exact_lsh_params() == (25, 5)
    assert NearDedupConfig(bands=16).exact_lsh_params() == (16, 8)  # pinned bands win
