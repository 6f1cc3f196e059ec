"""In-shard exact and near-duplicate detection (run on the worker, after generation).

Where the texts are at hand (the clean step), LSH candidates are verified by the exact
Jaccard of their shingle sets (the 64-bit shingle hashes the signatures were made from),
so a pair is a near duplicate exactly when J >= threshold; only the LSH banding can miss
one, and it is chosen to miss a pair at the threshold with probability <= 0.001
(`NearDedupConfig.exact_lsh_params`). Without the texts (signatures only), candidates are
verified by the signatures' estimate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthgen.config import NearDedupConfig
from synthgen.stages.dedup.clusters import band_pairs, exact_pairs, resolve
from synthgen.stages.dedup.lsh import band_keys, estimated_jaccard
from synthgen.stages.dedup.minhash import MinHasher, _ranges

Shingles = tuple[np.ndarray, np.ndarray]  # (uint64 shingle hashes of all rows, per-row counts)


def hasher_for(cfg: NearDedupConfig) -> MinHasher:
    """The MinHasher of a `clean.near` config."""
    return MinHasher(
        num_perm=cfg.num_perm,
        shingle=cfg.shingle,
        shingle_size=cfg.shingle_size,
        seed=cfg.seed,
        stratified=cfg.stratified,
    )


def shingle_jaccard(hashes: np.ndarray, counts: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the shingle-hash sets of each pair (i, j) of rows; `hashes` holds
    the rows' shingle hashes back to back, `counts[i]` of them for row i (repeats count
    once). Only the rows that occur in a pair are read, each once, into a Python set of
    ints: for the few hundred shingles of a text, set intersection beats any numpy
    sort-based grouping (measured: about half the CPU time of an np.lexsort grouping)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.empty(len(pairs), dtype=np.float64)
    if len(pairs) == 0:
        return out
    offsets = np.concatenate(([0], np.cumsum(counts, dtype=np.int64))).tolist()
    sets: dict[int, set[int]] = {}

    def row_set(i: int) -> set[int]:
        s = sets.get(i)
        if s is None:
            s = sets[i] = set(hashes[offsets[i] : offsets[i + 1]].tolist())
        return s

    for k, (a, b) in enumerate(pairs.tolist()):
        sa, sb = row_set(a), row_set(b)
        inter = len(sa & sb)
        out[k] = inter / (len(sa) + len(sb) - inter)
    return out


def verified_near_pairs(
    signatures: np.ndarray,
    ids: np.ndarray,
    cfg: NearDedupConfig,
    shingles: Shingles | None = None,
) -> np.ndarray:
    """LSH candidate pairs among rows of `signatures` (labelled by `ids`) that are near
    duplicates; returns pairs of row positions. With `shingles` (the rows' shingle hashes
    and counts, as `MinHasher.shingle_hashes` returns them) a candidate is kept when its
    exact Jaccard is at least cfg.threshold, else when the signatures' estimate is."""
    n = len(signatures)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    bands, rows = cfg.lsh_params() if shingles is None else cfg.exact_lsh_params()
    pairs = band_pairs(band_keys(signatures, bands, rows), cfg.max_bucket_pairs)
    if len(pairs) == 0:
        return pairs
    if shingles is not None:
        sim = shingle_jaccard(shingles[0], shingles[1], pairs)
    else:
        sim = estimated_jaccard(signatures[pairs[:, 0]], signatures[pairs[:, 1]])
    return pairs[sim >= cfg.threshold]


def near_duplicate_pairs(
    texts: Sequence[str],
    cfg: NearDedupConfig,
    hasher: MinHasher | None = None,
    batch: int = 4096,
) -> np.ndarray:
    """Pairs (i, j), i < j, of texts whose shingle sets have Jaccard >= cfg.threshold (up
    to the LSH miss rate): signatures `batch` texts at a time, LSH, exact verification."""
    hasher = hasher or hasher_for(cfg)
    n = len(texts)
    sigs = np.empty((n, cfg.num_perm), dtype=np.uint32)
    hs, cs = [], []
    for i in range(0, n, batch):
        h, c = hasher.shingle_hashes(texts[i : i + batch])
        sigs[i : i + len(c)] = hasher.signatures_from_hashes(h, c)
        hs.append(h)
        cs.append(c)
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    shingles = (np.concatenate(hs), np.concatenate(cs))
    return verified_near_pairs(sigs, np.arange(n), cfg, shingles)


def duplicate_reasons(
    prompt_ids: Sequence[str],
    hashes: np.ndarray,
    signatures: np.ndarray | None,
    eligible: np.ndarray,
    near: NearDedupConfig | None,
    exact: bool = True,
    shingles: Shingles | None = None,
) -> dict[int, str]:
    """Row index -> exact_duplicate / near_duplicate for the duplicates among the
    eligible rows; in each cluster the row with the lowest prompt_id is kept. Rows of the
    same prompt (the samples of `sampling.n` > 1) are never each other's duplicates.
    `shingles`: the rows' shingle hashes and counts, for exact verification of near
    pairs (else the signatures' estimate decides)."""
    rows = np.flatnonzero(eligible)
    if len(rows) < 2:
        return {}
    edges: list[tuple[int, int]] = []
    if exact:
        edges += [(int(a), int(b)) for a, b in exact_pairs(hashes[rows], rows)]
    if near is not None and signatures is not None:
        sub = None
        if shingles is not None:
            sh, cnt = shingles
            offsets = np.concatenate(([0], np.cumsum(cnt)))
            sub = (sh[_ranges(offsets[rows], cnt[rows])], cnt[rows])
        pos = verified_near_pairs(signatures[rows], rows, near, sub)
        edges += [(int(rows[a]), int(rows[b])) for a, b in pos]
    edges = [(a, b) for a, b in edges if prompt_ids[a] != prompt_ids[b]]
    if not edges:
        return {}
    rank = {int(r): (prompt_ids[r], int(r)) for r in rows}
    hmap = {int(r): int(hashes[r]) for r in rows}
    return resolve(edges, rank, hmap)
