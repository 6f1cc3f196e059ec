"""Cross-shard dedup on a real LocalCluster (2 worker processes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from synthgen.config import CleanConfig
from synthgen.errors import ConfigError
from synthgen.stages.clean import clean_shard
from synthgen.stages.dedup.cross import apply_drops, cross_shard_dedup, shard_keys
from synthgen.stages.dedup.index import index_paths, index_rows, write_index
from synthgen.stages.dedup.local import hasher_for
from synthgen.stages.dedup.lsh import estimated_jaccard
from synthgen.stages.dedup.minhash import jaccard, word_shingles
from tests._cleanutil import mutate, records, text


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def _write_shards(
    root: Path, shards: dict[str, list[tuple[str, str]]], cfg: CleanConfig, run_id: str = "run-1"
) -> list[str]:
    paths = []
    for sid, rows in shards.items():
        table, _ = clean_shard(records(rows, shard_id=sid, run_id=run_id), cfg)
        p = root / f"{sid}.parquet"
        pq.write_table(table, p)
        paths.append(str(p))
    return paths


def _planted() -> dict[str, list[tuple[str, str]]]:
    a, b, c = text(10), text(11), text(12)
    return {
        "shard-00000": [("p010", a), ("p011", text(20)), ("p012", mutate(b, 1, 5))],
        "shard-00001": [("p020", a.upper()), ("p021", b), ("p022", text(21))],
        "shard-00002": [("p001", "  " + a), ("p030", mutate(c, 1, 6)), ("p031", text(22))],
        "shard-00003": [("p040", c), ("p041", mutate(c, 1, 8)), ("p042", text(23))],
    }


def test_cross_shard_drops_exact_and_near_keeps_lowest(client: Client, tmp_path: Path) -> None:
    cfg = CleanConfig()
    paths = _write_shards(tmp_path, _planted(), cfg)
    res = cross_shard_dedup(client, paths, cfg)
    got = {
        (s, p): r
        for s, p, r in zip(
            *(res.drops[c].to_pylist() for c in ("shard_id", "prompt_id", "reason")), strict=True
        )
    }
    # a: p001 (lowest) kept, p010 / p020 exact; b: p012 < p021 kept, p021 near
    # c: p030 < p040 < p041 -> p030 kept (p041 was already dropped in its shard vs p040)
    assert got == {
        ("shard-00000", "p010"): "exact_duplicate",
        ("shard-00001", "p020"): "exact_duplicate",
        ("shard-00001", "p021"): "near_duplicate",
        ("shard-00003", "p040"): "near_duplicate",
    }
    assert res.counts == {"exact_duplicate": 2, "near_duplicate": 2}
    assert res.rows == 11  # 12 rows, p041 dropped in-shard
    assert res.candidate_pairs >= res.verified_pairs >= 4
    # a re-run (files listed in another order) drops exactly the same rows
    again = cross_shard_dedup(client, list(reversed(paths)), cfg)
    assert again.drops.equals(res.drops)


def test_shards_indexed_as_they_commit_give_the_same_drops_without_being_read(
    client: Client, tmp_path: Path
) -> None:
    """Keys taken from each shard's table as it commits (`shard_keys`) stand in for the map's
    read: the same drops, counts and rows as reading every file; a shard that holds no
    candidate pair is not read at all (its file is gone here); keys of other parameters
    are not used (that shard is read)."""
    cfg = CleanConfig()
    shards = _planted() | {"shard-00004": [("p050", text(30)), ("p051", text(31))]}
    paths = _write_shards(tmp_path, shards, cfg)
    want = cross_shard_dedup(client, paths, cfg)
    keys = {p: shard_keys(pq.read_table(p), cfg, p) for p in paths}
    lonely = paths[-1]
    Path(lonely).unlink()  # no duplicate in it: the verify step never opens it
    got = cross_shard_dedup(client, paths, cfg, keys=keys)
    assert got.drops.equals(want.drops) and got.drops.num_rows == 4
    assert (got.counts, got.rows, got.candidate_pairs, got.verified_pairs) == (
        want.counts,
        want.rows,
        want.candidate_pairs,
        want.verified_pairs,
    )
    assert got.indexed == len(paths) and want.indexed == 0
    # half the shards indexed, half read: the same drops
    half = {p: k for p, k in keys.items() if p in paths[:2] or p == lonely}
    assert cross_shard_dedup(client, paths, cfg, keys=half).drops.equals(want.drops)
    # keys of other LSH parameters: that shard is read (and it is gone)
    k = keys[lonely]
    stale = {**keys, lonely: dataclasses.replace(k, params=(*k.params[:4], 64))}
    with pytest.raises(OSError, match="shard-00004"):
        cross_shard_dedup(client, paths, cfg, keys=stale)


def test_apply_drops_marks_rows(client: Client, tmp_path: Path) -> None:
    cfg = CleanConfig()
    paths = _write_shards(tmp_path, _planted(), cfg)
    res = cross_shard_dedup(client, paths, cfg)
    t = pq.read_table(paths[1])
    marked = apply_drops(t, res.by_shard()["shard-00001"])
    assert marked["drop_reason"].to_pylist() == ["exact_duplicate", "near_duplicate", None]


def test_distinct_texts_all_kept(client: Client, tmp_path: Path) -> None:
    cfg = CleanConfig()
    shards = {
        f"shard-{i:05d}": [(f"p{i}-{j}", text(100 * i + j)) for j in range(20)] for i in range(4)
    }
    res = cross_shard_dedup(client, _write_shards(tmp_path, shards, cfg), cfg)
    assert res.drops.num_rows == 0 and res.rows == 80


def test_against_published_index(client: Client, tmp_path: Path) -> None:
    cfg = CleanConfig(near={"against_published": True})
    fs = fsspec.filesystem("file")
    dataset = str(tmp_path / "dataset")
    old = records([("q1", text(50)), ("q2", text(51))], run_id="run-0")
    old, _ = clean_shard(old, cfg)
    write_index(fs, dataset, "run-0", index_rows(old), cfg)
    prior = index_paths(fs, dataset, cfg)
    assert len(prior) == 1
    new = {
        "shard-00000": [("a1", text(50).lower()), ("a2", mutate(text(51), 1, 3)), ("a3", text(52))]
    }
    (tmp_path / "new").mkdir()
    paths = _write_shards(tmp_path / "new", new, cfg, run_id="run-1")
    res = cross_shard_dedup(client, paths, cfg, prior_index_paths=prior, run_id="run-1")
    got = dict(
        zip(res.drops["prompt_id"].to_pylist(), res.drops["reason"].to_pylist(), strict=True)
    )
    assert got == {"a1": "exact_duplicate", "a2": "near_duplicate"}  # published rows never dropped
    # the same run re-published does not drop itself
    write_index(fs, dataset, "run-1", index_rows(pq.read_table(paths[0])), cfg)
    res2 = cross_shard_dedup(
        client, paths, cfg, prior_index_paths=index_paths(fs, dataset, cfg), run_id="run-1"
    )
    assert set(res2.drops["prompt_id"].to_pylist()) == {"a1", "a2"}
    with pytest.raises(ConfigError, match="num_perm"):
        index_paths(fs, dataset, CleanConfig(near={"num_perm": 64}))


def test_exact_only_when_near_disabled(client: Client, tmp_path: Path) -> None:
    cfg = CleanConfig(near={"enabled": False})
    paths = _write_shards(tmp_path, _planted(), cfg)
    res = cross_shard_dedup(client, paths, cfg)
    assert set(res.counts) == {"exact_duplicate"}
    assert set(res.drops["prompt_id"].to_pylist()) == {"p010", "p020"}
    assert cross_shard_dedup(client, [], cfg).drops.num_rows == 0


def _straddling(cfg: CleanConfig, want: int = 2) -> tuple[list, list]:
    """Pairs around the threshold on which the signatures' estimate is wrong: exact
    Jaccard >= threshold but estimate below it, and the other way round."""
    m = hasher_for(cfg.near)
    n = cfg.near.shingle_size
    above, below = [], []
    for seed in range(400):
        x = text(300 + seed, 70)
        w = mutate(x, 1 + seed % 3, seed).split()
        y = " ".join(w[: len(w) - seed % 5])
        j = jaccard(word_shingles(x, n), word_shingles(y, n))
        est = float(estimated_jaccard(m.signatures([x]), m.signatures([y]))[0])
        if j >= cfg.near.threshold > est and len(above) < want:
            above.append((x, y))
        elif est >= cfg.near.threshold > j and len(below) < want:
            below.append((x, y))
        if len(above) == len(below) == want:
            break
    assert len(above) == len(below) == want  # the search found both kinds
    return above, below


def test_cross_shard_verifies_candidates_by_exact_jaccard(client: Client, tmp_path: Path) -> None:
    cfg = CleanConfig()
    above, below = _straddling(cfg)
    shards: dict[str, list[tuple[str, str]]] = {"shard-00000": [], "shard-00001": []}
    for k, (x, y) in enumerate(above + below):
        shards["shard-00000"].append((f"p{k}a", x))
        shards["shard-00001"].append((f"p{k}b", y))  # the later prompt_id of its pair
    res = cross_shard_dedup(client, _write_shards(tmp_path, shards, cfg), cfg)
    got = dict(
        zip(res.drops["prompt_id"].to_pylist(), res.drops["reason"].to_pylist(), strict=True)
    )
    # the pairs at exact J >= 0.8 are dropped although their estimate is below 0.8; the
    # pairs below 0.8 are kept although their estimate is above
    assert got == {f"p{k}b": "near_duplicate" for k in range(len(above))}
