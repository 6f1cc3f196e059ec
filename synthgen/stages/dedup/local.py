"""In-shard exact and near-duplicate detection (run on the worker, after generation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthgen.config import NearDedupConfig
from synthgen.stages.dedup.clusters import band_pairs, exact_pairs, resolve
from synthgen.stages.dedup.lsh import band_keys, estimated_jaccard


def verified_near_pairs(
    signatures: np.ndarray, ids: np.ndarray, cfg: NearDedupConfig
) -> np.ndarray:
    """LSH candidate pairs among rows of `signatures` (labelled by `ids`) whose estimated
    Jaccard is at least cfg.threshold; returns pairs of row positions."""
    n = len(signatures)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    bands, rows = cfg.lsh_params()
    pairs = band_pairs(band_keys(signatures, bands, rows), cfg.max_bucket_pairs)
    if len(pairs) == 0:
        return pairs
    est = estimated_jaccard(signatures[pairs[:, 0]], signatures[pairs[:, 1]])
    return pairs[est >= cfg.threshold]


def duplicate_reasons(
    prompt_ids: Sequence[str],
    hashes: np.ndarray,
    signatures: np.ndarray | None,
    eligible: np.ndarray,
    near: NearDedupConfig | None,
    exact: bool = True,
) -> dict[int, str]:
    """Row index -> exact_duplicate / near_duplicate for the duplicates among the
    eligible rows; in each cluster the row with the lowest prompt_id is kept. Rows of the
    same prompt (the samples of `sampling.n` > 1) are never each other's duplicates."""
    rows = np.flatnonzero(eligible)
    if len(rows) < 2:
        return {}
    edges: list[tuple[int, int]] = []
    if exact:
        edges += [(int(a), int(b)) for a, b in exact_pairs(hashes[rows], rows)]
    if near is not None and signatures is not None:
        pos = verified_near_pairs(signatures[rows], rows, near)
        edges += [(int(rows[a]), int(rows[b])) for a, b in pos]
    edges = [(a, b) for a, b in edges if prompt_ids[a] != prompt_ids[b]]
    if not edges:
        return {}
    rank = {int(r): (prompt_ids[r], int(r)) for r in rows}
    hmap = {int(r): int(hashes[r]) for r in rows}
    return resolve(edges, rank, hmap)
