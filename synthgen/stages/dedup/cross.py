"""Cross-shard dedup on a Dask cluster: map (band keys) -> shuffle -> verify -> resolve.

Only the columns prompt_id, shard_id, text_hash, minhash and drop_reason are read, plus
the completion of the files that hold candidate pairs in the verify step; texts never
travel between tasks. Stages, all run as tasks on the cluster:

1. map:     per group of shard files, each kept row emits one key per LSH band plus its
            text hash; keys are split into `partitions` parts by key value. A shard
            indexed as it committed (its `ShardKeys`, taken by the worker that committed
            it from the bytes its commit marker names) is not read: its keys join here.
2. reduce:  part j of every map output is gathered on one worker (the shuffle); rows
            sharing a key become candidate pairs.
3. verify:  per group of the files that hold a candidate pair (no other file is read),
            candidate pairs whose first row lives there are checked:
            equal text hash, or Jaccard >= threshold — the exact Jaccard of the two
            texts' shingle sets (their `completion`, read from the two shard files for
            the candidate rows only), or the signatures' estimate where a row has no
            text (a published dedup-index part).
4. resolve: union-find over the verified edges; in each cluster the lowest
            (prompt_id, shard_id) is kept (a record of an earlier published dataset
            always wins), every other member is dropped as exact or near duplicate.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synthgen.cluster.client import workers_info
from synthgen.config import CleanConfig, NearDedupConfig
from synthgen.io.checked import Expect, ShardMismatch, check_bytes
from synthgen.stages.dedup.clusters import candidate_pairs, resolve
from synthgen.stages.dedup.local import hasher_for, shingle_jaccard
from synthgen.stages.dedup.lsh import band_keys, estimated_jaccard
from synthgen.stages.dedup.minhash import splitmix64

COLUMNS = ["prompt_id", "shard_id", "text_hash", "minhash", "drop_reason"]
TEXT = "completion"  # the text a shard's signatures were computed from (clean_shard)
INDEX_COLUMNS = ["prompt_id", "shard_id", "run_id", "text_hash", "minhash"]
_EXACT_SALT = np.uint64(0xE8AC7D0D5EED)
_ROW_BITS = 32

DROPS_SCHEMA = pa.schema(
    [
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Source:
    """One file the stage reads: a committed shard, or a published dedup-index part."""

    path: str
    prior: bool = False  # rows of an earlier published dataset: never dropped
    expect: Expect | None = None  # a committed shard: what its commit marker says of it


@dataclass(frozen=True)
class _Params:
    bands: int
    rows: int
    threshold: float
    exact: bool
    near: bool
    num_perm: int
    max_bucket_pairs: int
    partitions: int
    run_id: str | None
    near_cfg: NearDedupConfig | None = None  # for the exact Jaccard of candidate texts
    storage_options: dict[str, Any] = field(default_factory=dict)
    filesystem: Any = None  # an fsspec filesystem (pickled to the workers); else from URLs


@dataclass
class DedupResult:
    drops: pa.Table  # shard_id, prompt_id, reason (exact_duplicate | near_duplicate)
    counts: dict[str, int]
    candidate_pairs: int
    verified_pairs: int
    rows: int  # kept rows of the run's shards that took part
    withdrawn: list[str] = field(default_factory=list)  # shards that failed their check
    digest: str | None = None  # sha256 of the written drops file (dedup.stage.dedup_run)
    indexed: int = 0  # shards whose keys came from their commit (`ShardKeys`), not read

    def by_shard(self) -> dict[str, dict[str, str]]:
        """shard_id -> {prompt_id: reason}."""
        out: dict[str, dict[str, str]] = {}
        for s, p, r in zip(
            *(self.drops.column(c).to_pylist() for c in DROPS_SCHEMA.names), strict=True
        ):
            out.setdefault(s, {})[p] = r
        return out


# ---------------------------------------------------------------------------- reading
def _read(src: Source, p: _Params, text: bool = False) -> pa.Table:
    """The kept rows of a source (COLUMNS less drop_reason); with `text`, also the
    `completion` column where the file has one (shard files; index parts have none)."""
    if p.filesystem is not None:
        fs, path = p.filesystem, src.path
    else:
        fs, path = fsspec.core.url_to_fs(src.path, **p.storage_options)
    try:
        if src.prior:
            t = pq.read_table(path, columns=INDEX_COLUMNS, filesystem=fs)
            if p.run_id is not None:
                t = t.filter(pc.not_equal(t.column("run_id"), p.run_id))
            return t.drop_columns(["run_id"])
        if src.expect is None:
            names = pq.read_schema(path, filesystem=fs).names
            t = pq.read_table(path, columns=COLUMNS + _extra(names, text), filesystem=fs)
        else:  # only bytes that match the shard's commit marker are used
            try:
                data = fs.cat_file(path)
            except FileNotFoundError:
                raise ShardMismatch(src.path, "the committed file is missing") from None
            checked = check_bytes(data, src.expect, COLUMNS + _extra(_names(data), text))
            if isinstance(checked, str):
                raise ShardMismatch(src.path, checked)
            t = checked
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise OSError(f"cross-shard dedup: cannot read {src.path}: {exc}") from exc
    return _kept(t)


def _kept(t: pa.Table) -> pa.Table:
    """A shard table's rows that dedup sees, in file order: the kept ones (no drop_reason),
    keyed by `row_keys` where a prompt has several samples."""
    t = t.filter(pc.is_null(t.column("drop_reason"))).drop_columns(["drop_reason"])
    if "sample_index" in t.column_names:  # several samples per prompt: key rows, not prompts
        keys = pa.array(row_keys(t), pa.string())
        t = t.drop_columns(["sample_index"]).set_column(0, "prompt_id", keys)
    return t


def _names(data: bytes) -> list[str]:
    """The column names of Parquet bytes (none when unreadable: check_bytes says why)."""
    try:
        return pq.read_schema(pa.BufferReader(data)).names
    except (pa.ArrowException, OSError, ValueError):
        return []


def _extra(names: list[str], text: bool) -> list[str]:
    """The optional columns to read: sample_index (multi-sample runs), the text."""
    out = ["sample_index"] if "sample_index" in names else []
    return out + ([TEXT] if text and TEXT in names else [])


def row_keys(table: pa.Table, span: int = 1) -> list[str]:
    """The key the drops name a row by: its prompt_id, or `PROMPT_ID#SAMPLE_INDEX` in a
    multi-sample table (a `sample_index` column), where a prompt has several rows. `span`:
    the rows are descendants of the deduplicated stage's rows, `span` per row (later stages
    with n > 1), and take their ancestor's key."""
    pids = table.column("prompt_id").to_pylist()
    if "sample_index" not in table.column_names:
        return pids
    idx = table.column("sample_index").to_pylist()
    return [f"{p}#{i // span}" for p, i in zip(pids, idx, strict=True)]


def prompt_of(key: str) -> str:
    """The prompt a row key belongs to (`row_keys`)."""
    return key.rsplit("#", 1)[0] if "#" in key else key


def _signatures(t: pa.Table, src: Source, num_perm: int) -> np.ndarray:
    col = t.column("minhash").combine_chunks()
    if col.null_count:
        raise ValueError(f"{src.path}: {col.null_count} kept rows have no minhash signature")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
    if len(t) and len(flat) != len(t) * num_perm:
        raise ValueError(
            f"{src.path}: minhash signatures are not {num_perm} long "
            f"(clean.near.num_perm changed since the shard was written?)"
        )
    return flat.reshape(len(t), num_perm)


# ---------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class ShardKeys:
    """One committed shard's part of the map: the keys of its kept rows, in file order.
    Computed where the shard commits (`shard_keys`, from the table whose bytes its commit
    marker names), so that the run-wide stage does not read the shard again: only the
    shards that hold a candidate pair are read, by the verify step."""

    exact: np.ndarray | None  # (rows,) uint64: one exact-duplicate key per row
    bands: np.ndarray | None  # (rows, bands) uint64: the LSH band keys
    rows: int
    params: tuple[bool, bool, int, int, int]  # (exact, near, bands, rows, num_perm)


def _keys_of(t: pa.Table, src: Source, p: _Params) -> ShardKeys:
    n = len(t)
    exact = bands = None
    if p.exact:
        h = t.column("text_hash").to_numpy(zero_copy_only=False).astype(np.uint64)
        exact = splitmix64(h ^ _EXACT_SALT)
    if p.near:
        bands = band_keys(_signatures(t, src, p.num_perm), p.bands, p.rows)
    return ShardKeys(exact, bands, n, _key_params(p))


def _key_params(p: _Params) -> tuple[bool, bool, int, int, int]:
    return (p.exact, p.near, p.bands, p.rows, p.num_perm)


def shard_keys(table: pa.Table, cfg: CleanConfig, path: str = "") -> ShardKeys:
    """`ShardKeys` of a committed shard's whole table (its drop_reason and, in a
    multi-sample run, sample_index columns included), with `cfg`'s parameters."""
    p = _params(cfg, 1, None)
    return _keys_of(_kept(table.select([c for c in _KEY_COLUMNS if c in table.column_names])),
                    Source(path), p)  # fmt: skip


_KEY_COLUMNS = [*COLUMNS, "sample_index"]


def _emit(fidx: int, k: ShardKeys) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(keys, node ids, kind 0=exact/1=near) of a shard's rows as file `fidx` of the stage."""
    n = k.rows
    if n == 0:
        return [], [], []
    ids = (np.int64(fidx) << _ROW_BITS) + np.arange(n, dtype=np.int64)
    keys_l, ids_l, kind_l = [], [], []
    if k.exact is not None:
        keys_l.append(k.exact)
        ids_l.append(ids)
        kind_l.append(np.zeros(n, np.uint8))
    if k.bands is not None:
        keys_l.append(k.bands.ravel())
        ids_l.append(np.repeat(ids, k.bands.shape[1]))
        kind_l.append(np.ones(k.bands.size, np.uint8))
    return keys_l, ids_l, kind_l


def _partitioned(
    keys_l: list[np.ndarray], ids_l: list[np.ndarray], kind_l: list[np.ndarray], parts: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The keys split into `parts` parts by key value (the shuffle's input)."""
    if not keys_l:
        empty = (np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.uint8))
        return [empty] * parts
    keys, ids, kind = np.concatenate(keys_l), np.concatenate(ids_l), np.concatenate(kind_l)
    part = (keys % np.uint64(parts)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    out = []
    for j in range(parts):
        sel = order[bounds[j] : bounds[j + 1]]
        out.append((keys[sel], ids[sel], kind[sel]))
    return out


def _map(sources: list[tuple[int, Source]], p: _Params) -> list[Any]:
    """Per partition: (keys, node ids, kind 0=exact/1=near); last item: kept rows read
    from the run's own shards."""
    keys_l, ids_l, kind_l = [], [], []
    n_rows = 0
    for fidx, src in sources:
        t = _read(src, p)
        n_rows += 0 if src.prior else len(t)
        k, i, d = _emit(fidx, _keys_of(t, src, p))
        keys_l += k
        ids_l += i
        kind_l += d
    return [*_partitioned(keys_l, ids_l, kind_l, p.partitions), n_rows]


def _reduce(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], p: _Params) -> np.ndarray:
    """Candidate pairs (a, b, kind) among rows sharing a key in this partition."""
    if not parts:
        return np.zeros((0, 3), np.int64)
    keys = np.concatenate([x[0] for x in parts])
    ids = np.concatenate([x[1] for x in parts])
    kind = np.concatenate([x[2] for x in parts])
    out = []
    for k in (0, 1):
        sel = kind == k
        pairs = candidate_pairs(keys[sel], ids[sel], p.max_bucket_pairs)
        out.append(np.column_stack([pairs, np.full(len(pairs), k, np.int64)]))
    return np.concatenate(out)


def _verify(
    group: list[tuple[int, Source]],
    all_sources: Mapping[int, Source],
    candidates: list[np.ndarray],
    p: _Params,
) -> list[tuple]:
    """Verified edges whose first row lives in this group's files, with node metadata:
    (node_a, node_b, kind, meta_a, meta_b), meta = (prompt_id, shard_id, hash, prior).
    `all_sources`: file index -> source, for (at least) every file a candidate names."""
    mine = {fidx for fidx, _ in group}
    cand = np.concatenate(candidates) if candidates else np.zeros((0, 3), np.int64)
    cand = cand[np.isin(cand[:, 0] >> _ROW_BITS, list(mine))] if len(cand) else cand
    if len(cand) == 0:
        return []
    # one row per (a, b): exact wins over near
    order = np.lexsort((cand[:, 2], cand[:, 1], cand[:, 0]))
    cand = cand[order]
    first = np.concatenate(([True], np.any(cand[1:, :2] != cand[:-1, :2], axis=1)))
    cand = cand[first]
    files = np.unique(np.concatenate([cand[:, 0], cand[:, 1]]) >> _ROW_BITS)
    has_near = p.near and bool(np.any(cand[:, 2] == 1))
    tables: dict[int, tuple[list[str], list[str], np.ndarray, np.ndarray | None]] = {}
    texts: dict[int, pa.ChunkedArray] = {}
    for f in files.tolist():
        src = all_sources[f]
        t = _read(src, p, text=has_near and p.near_cfg is not None)
        sig = _signatures(t, src, p.num_perm) if p.near else None
        h = t.column("text_hash").to_numpy(zero_copy_only=False).astype(np.uint64)
        tables[f] = (t.column("prompt_id").to_pylist(), t.column("shard_id").to_pylist(), h, sig)
        if TEXT in t.column_names:
            texts[f] = t.column(TEXT)

    def meta(node: int) -> tuple[str, str, int, bool]:
        f, r = node >> _ROW_BITS, node & ((1 << _ROW_BITS) - 1)
        pid, sid, h, _ = tables[f]
        return (pid[r], sid[r], int(h[r]), all_sources[f].prior)

    def sig_of(nodes: np.ndarray) -> np.ndarray:
        out = np.empty((len(nodes), p.num_perm), np.uint32)
        for i, node in enumerate(nodes.tolist()):
            f, r = node >> _ROW_BITS, node & ((1 << _ROW_BITS) - 1)
            out[i] = tables[f][3][r]
        return out

    edges: list[tuple] = []
    exact_mask = cand[:, 2] == 0
    ex = cand[exact_mask]

    def siblings(ma: tuple, mb: tuple) -> bool:
        # samples of one prompt (sampling.n > 1) are never each other's duplicates
        return not ma[3] and not mb[3] and ma[1] == mb[1] and prompt_of(ma[0]) == prompt_of(mb[0])

    for a, b, _k in ex.tolist():
        ma, mb = meta(a), meta(b)
        if siblings(ma, mb):
            continue
        if ma[2] == mb[2]:  # equal text hash (guards against a band-key collision)
            edges.append((a, b, 0, ma, mb))
    near = cand[~exact_mask]
    if len(near) and p.near:
        est = estimated_jaccard(sig_of(near[:, 0]), sig_of(near[:, 1]))
        if p.near_cfg is not None and texts:
            est = _exact_where_texts(near, texts, est, p.near_cfg)
        for (a, b, _k), e in zip(near.tolist(), est.tolist(), strict=True):
            ma, mb = meta(a), meta(b)
            if e >= p.threshold and not siblings(ma, mb):
                edges.append((a, b, 1, ma, mb))
    return edges


def _exact_where_texts(
    near: np.ndarray, texts: dict[int, pa.ChunkedArray], sim: np.ndarray, cfg: NearDedupConfig
) -> np.ndarray:
    """`sim` with the exact Jaccard of the two texts' shingle sets in place of the
    estimate for every pair whose two rows have a text."""
    mask = (1 << _ROW_BITS) - 1
    nodes = np.unique(near[:, :2])
    local: dict[int, int] = {}
    batch: list[str] = []
    for node in nodes.tolist():
        col = texts.get(node >> _ROW_BITS)
        if col is not None:
            local[node] = len(batch)
            batch.append(col[node & mask].as_py() or "")
    idx = [k for k, (a, b) in enumerate(near[:, :2].tolist()) if a in local and b in local]
    if not idx:
        return sim
    pairs = np.array([(local[int(a)], local[int(b)]) for a, b in near[idx, :2]], np.int64)
    hashes, counts = hasher_for(cfg).shingle_hashes(batch)
    out = sim.astype(np.float64, copy=True)
    out[idx] = shingle_jaccard(hashes, counts, pairs)
    return out


def _resolve(edge_lists: list[list[tuple]]) -> tuple[pa.Table, int]:
    rank: dict[int, tuple] = {}
    hashes: dict[int, int] = {}
    prior: list[int] = []
    meta: dict[int, tuple] = {}
    edges = []
    for lst in edge_lists:
        for a, b, _k, ma, mb in lst:
            for node, m in ((a, ma), (b, mb)):
                if node not in rank:
                    rank[node] = (0 if m[3] else 1, m[0], m[1])
                    hashes[node] = m[2]
                    meta[node] = m
                    if m[3]:
                        prior.append(node)
            edges.append((a, b))
    reasons = resolve(edges, rank, hashes, keep_always=prior)
    rows = sorted((meta[n][1], meta[n][0], r) for n, r in reasons.items())
    cols = list(zip(*rows, strict=True)) if rows else [[], [], []]
    table = pa.table([pa.array(c, pa.string()) for c in cols], schema=DROPS_SCHEMA)
    return table, len(edges)


# ---------------------------------------------------------------------------- driver
def _groups(items: list[tuple[int, Source]], n: int) -> list[list[tuple[int, Source]]]:
    n = max(1, min(n, len(items)))
    return [items[i::n] for i in range(n)]


def cross_shard_dedup(
    client: Any,
    shard_paths: Sequence[str],
    cfg: CleanConfig,
    *,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
    prior_index_paths: Sequence[str] = (),
    run_id: str | None = None,
    expect: Mapping[str, Expect] | None = None,
    keys: Mapping[str, ShardKeys] | None = None,
) -> DedupResult:
    """Run-wide exact + near duplicates over committed shard files, on `client`'s cluster.

    Paths are URLs opened with `storage_options`, or paths inside `filesystem` (an fsspec
    filesystem, e.g. the run's `Store.fs`).
    `prior_index_paths`: parts of a published dataset's dedup index (its rows always win);
    rows of it that carry `run_id` are ignored (a re-published run does not drop itself).
    `expect`: path -> what the shard's commit marker says (sha256, rows); such a file is
    read whole and checked, and `ShardMismatch` is raised when it does not match.
    `keys`: path -> the shard's `ShardKeys`, computed as it committed: such a shard is not
    read for the map (only by the verify step, where it holds a candidate pair).
    Returns the rows to drop; the shard files are not modified.
    """
    n_workers = max(1, len(workers_info(client)))
    p = _params(cfg, n_workers, run_id, storage_options, filesystem)
    expect = expect or {}
    sources = [Source(s, expect=expect.get(s)) for s in sorted(shard_paths)] + [
        Source(s, prior=True) for s in sorted(prior_index_paths)
    ]
    if not sources or not (p.exact or p.near):
        return DedupResult(DROPS_SCHEMA.empty_table(), {}, 0, 0, 0)
    partitions = p.partitions
    indexed = list(enumerate(sources))
    keys = {
        path: k for path, k in (keys or {}).items() if k.params == _key_params(p)
    }  # computed with other parameters (not within one run): read again
    # shards indexed as they committed join the shuffle from here; the others are read
    known_l: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    known_rows = 0
    to_read = []
    for fidx, src in indexed:
        k = None if src.prior else keys.get(src.path)
        if k is None:
            to_read.append((fidx, src))
            continue
        known_rows += k.rows
        for acc, part in zip(known_l, _emit(fidx, k), strict=True):
            acc += part
    known = (
        client.scatter(_partitioned(*known_l, partitions)) if known_l[0] else [None] * partitions
    )
    maps = [client.submit(_map, g, p, pure=False) for g in _groups(to_read, 2 * n_workers) if g]
    counts = [client.submit(operator.getitem, m, partitions, pure=False) for m in maps]
    reduces = []
    for j in range(partitions):
        parts = [client.submit(operator.getitem, m, j, pure=False) for m in maps]
        if known[j] is not None:
            parts.append(known[j])
        reduces.append(client.submit(_reduce, parts, p, pure=False))
    # the verify step reads only the files that hold a candidate pair, in groups by the
    # file of each pair's first row
    cands = [c for c in client.gather(reduces) if len(c)]
    cand = np.concatenate(cands) if cands else np.zeros((0, 3), np.int64)
    drops, n_verified = DROPS_SCHEMA.empty_table(), 0
    if len(cand):
        first = cand[:, 0] >> _ROW_BITS
        files = np.unique(first).tolist()
        verified = []
        for g in _groups([(f, sources[f]) for f in files], 2 * n_workers):
            sub = cand[np.isin(first, [f for f, _ in g])]
            need = np.unique(np.concatenate([sub[:, 0], sub[:, 1]]) >> _ROW_BITS).tolist()
            srcs = {f: sources[f] for f in need}
            verified.append(client.submit(_verify, g, srcs, [sub], p, pure=False))
        drops, n_verified = client.submit(_resolve, verified, pure=False).result()
    reasons = Counter(drops.column("reason").to_pylist())
    return DedupResult(
        drops=drops,
        counts=dict(sorted(reasons.items())),
        candidate_pairs=len(cand),
        verified_pairs=int(n_verified),
        rows=known_rows + int(sum(c.result() for c in counts)),
        indexed=len(indexed) - len(to_read),
    )


def _params(
    cfg: CleanConfig,
    n_workers: int,
    run_id: str | None,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
) -> _Params:
    bands, rows = cfg.near.exact_lsh_params()
    return _Params(
        bands=bands,
        rows=rows,
        threshold=cfg.near.threshold,
        exact=cfg.exact.enabled,
        near=cfg.near.enabled,
        num_perm=cfg.near.num_perm,
        max_bucket_pairs=cfg.near.max_bucket_pairs,
        partitions=cfg.global_partitions or 2 * n_workers,
        run_id=run_id,
        near_cfg=cfg.near,
        storage_options=dict(storage_options or {}),
        filesystem=filesystem,
    )


def apply_drops(table: pa.Table, drops: dict[str, str], span: int = 1) -> pa.Table:
    """Set drop_reason of the rows whose key (`row_keys`, with `span`) is in `drops` (one
    shard's mapping)."""
    if not drops:
        return table
    pids = row_keys(table, span)
    cur = table.column("drop_reason").to_pylist()
    new = [drops.get(pid, r) if r is None else r for pid, r in zip(pids, cur, strict=True)]
    idx = table.schema.get_field_index("drop_reason")
    return table.set_column(idx, table.schema.field(idx), pa.array(new, pa.string()))
