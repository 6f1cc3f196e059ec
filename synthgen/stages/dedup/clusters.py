"""Candidate pairs from LSH band keys, verification, and deterministic union-find."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

EXACT = "exact_duplicate"
NEAR = "near_duplicate"


def candidate_pairs(keys: np.ndarray, ids: np.ndarray, max_bucket_pairs: int = 64) -> np.ndarray:
    """Pairs (i, j), i < j, of ids that share at least one key; shape (n_pairs, 2).

    `keys` and `ids` are flat and aligned (one row per (record, band)). A bucket of s
    members yields all pairs while s <= max_bucket_pairs, else each member paired with
    the bucket's smallest id plus all pairs among the first max_bucket_pairs members, so
    one huge bucket cannot explode into s**2/2 pairs.
    """
    keys = np.asarray(keys, dtype=np.uint64).ravel()
    ids = np.asarray(ids, dtype=np.int64).ravel()
    if keys.shape != ids.shape:
        raise ValueError(f"keys {keys.shape} and ids {ids.shape} differ in shape")
    if len(keys) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(keys)  # output is canonicalised below: stability not needed
    sk, sid = keys[order], ids[order]
    edge = np.flatnonzero(sk[1:] != sk[:-1]) + 1
    starts = np.concatenate(([0], edge))
    sizes = np.diff(np.concatenate((starts, [len(sk)])))
    out: list[np.ndarray] = []
    two = starts[sizes == 2]  # the common case, vectorised
    if len(two):
        a, b = sid[two], sid[two + 1]
        ne = a != b
        out.append(np.stack([np.minimum(a, b)[ne], np.maximum(a, b)[ne]], axis=1))
    for g in np.flatnonzero(sizes > 2):
        members = np.unique(sid[starts[g] : starts[g] + sizes[g]])
        s = len(members)
        if s < 2:
            continue
        head = members[:max_bucket_pairs]
        iu, ju = np.triu_indices(len(head), k=1)
        out.append(np.stack([head[iu], head[ju]], axis=1))
        if s > max_bucket_pairs:
            rest = members[max_bucket_pairs:]
            out.append(np.stack([np.full(len(rest), members[0]), rest], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(out).astype(np.int64), axis=0)


def band_pairs(keys: np.ndarray, max_bucket_pairs: int = 64) -> np.ndarray:
    """Pairs (i, j), i < j, of row positions sharing a key in any column of `keys`
    (n_rows x bands uint64); the same bucket rule as `candidate_pairs`.

    Faster than `candidate_pairs` on one table: each band's keys are truncated and packed
    with the row position into one uint64, so a plain (SIMD) sort replaces an argsort;
    buckets are expanded into pairs per bucket size, not per bucket, and pairs are
    deduplicated as single int64 keys. Truncation can only add candidates (they are
    verified afterwards), never lose one.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    n = keys.shape[0]
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    bits = np.uint64(max(1, (n - 1).bit_length()))
    mask = np.uint64((1 << int(bits)) - 1)
    pos = np.arange(n, dtype=np.uint64)
    out: list[np.ndarray] = []
    for j in range(keys.shape[1]):
        packed = np.sort(((keys[:, j] >> bits) << bits) | pos)
        hi = packed >> bits
        idx = np.flatnonzero(hi[1:] == hi[:-1])
        if len(idx) == 0:
            continue
        rows = (packed & mask).astype(np.int64)
        # a run of k equal neighbours is a bucket of k+1 rows (sorted: positions are the
        # low bits)
        brk = np.flatnonzero(idx[1:] != idx[:-1] + 1)
        run_start = idx[np.concatenate(([0], brk + 1))]
        size = idx[np.concatenate((brk, [len(idx) - 1]))] + 2 - run_start
        for s in np.unique(size).tolist():
            starts = run_start[size == s]
            head = min(s, max_bucket_pairs)
            members = rows[starts[:, None] + np.arange(head)]
            iu, ju = np.triu_indices(head, k=1)
            out.append(np.stack([members[:, iu].ravel(), members[:, ju].ravel()], axis=1))
            if s > max_bucket_pairs:  # the rest joins each bucket's first member only
                rest = rows[starts[:, None] + np.arange(max_bucket_pairs, s)]
                first = np.repeat(members[:, :1], s - max_bucket_pairs, axis=1)
                out.append(np.stack([first.ravel(), rest.ravel()], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    flat = np.concatenate(out)
    code = np.sort(flat[:, 0] * np.int64(n) + flat[:, 1])
    code = code[np.concatenate(([True], code[1:] != code[:-1]))]
    return np.stack(np.divmod(code, np.int64(n)), axis=1)


def exact_pairs(hashes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pairs of ids with equal text hash, each joined to its group's smallest id."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    ids = np.asarray(ids, dtype=np.int64)
    if len(hashes) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort((ids, hashes))
    sh, sid = hashes[order], ids[order]
    same = np.concatenate(([False], sh[1:] == sh[:-1]))
    group_start = np.maximum.accumulate(np.where(~same, np.arange(len(sh)), 0))
    sel = np.flatnonzero(same)
    return np.stack([sid[group_start[sel]], sid[sel]], axis=1)


class UnionFind:
    """Union-find whose root is always the smallest element under `rank_key`."""

    def __init__(self, rank_key: dict[Hashable, tuple]) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.rank_key = rank_key

    def find(self, x: Hashable) -> Hashable:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            nxt = parent.get(x, x)
            parent[x] = root
            x = nxt
        return root

    def union(self, a: Hashable, b: Hashable) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.rank_key[rb] < self.rank_key[ra]:
            ra, rb = rb, ra
        self.parent[rb] = ra


def resolve(
    edges: Iterable[tuple[Hashable, Hashable]],
    rank_key: dict[Hashable, tuple],
    hashes: dict[Hashable, int],
    keep_always: Sequence[Hashable] = (),
) -> dict[Hashable, str]:
    """Drop reason for every non-representative node of each connected component.

    The representative is the node with the smallest `rank_key` (e.g. (prompt_id,
    shard_id)); it is kept and every other member is dropped as exact_duplicate when its
    hash equals the representative's, else near_duplicate. Nodes in `keep_always`
    (records already published) are never dropped.
    """
    uf = UnionFind(rank_key)
    nodes: set[Hashable] = set()
    for a, b in edges:
        uf.union(a, b)
        nodes.add(a)
        nodes.add(b)
    protected = set(keep_always)
    out: dict[Hashable, str] = {}
    for node in sorted(nodes, key=rank_key.__getitem__):
        root = uf.find(node)
        if node == root or node in protected:
            continue
        out[node] = EXACT if hashes[node] == hashes[root] else NEAR
    return out
