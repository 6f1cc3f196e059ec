"""The clean stage through the real flow: Prefect + Dask LocalCluster (2 worker processes),
the fake engine, output on local disk and on a live S3 endpoint (moto)."""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import s3fs

from flows.run import synthgen_run
from synthgen.stages.card import front_matter
from synthgen.stages.dedup.normalize import text_hash
from tests.helpers import fake_config, write_config


def _clean_cfg(uri: str, **extra) -> dict:
    # one-word completions from a 60-word vocabulary: 24 prompts give exact duplicates,
    # within and across shards; the Gopher filters are off (one word is never "decent")
    cfg = fake_config(
        uri,
        cluster__n_workers=2,
        model__fake__tokens_per_completion=1,
        clean={
            "enabled": True,
            "filters": {
                "word_count": {"min_words": 1},
                "gopher_quality": {"enabled": False},
                "gopher_repetition": {"enabled": False},
            },
        },
        **extra,
    )
    return cfg


def _manifest(fs, root: str) -> dict:
    card = front_matter(fs.cat_file(f"{root}/dataset/README.md").decode())["synthgen"]
    # the card names the manifest relative to dataset/ ("../runs/..."): object stores do
    # not resolve "..", so the path is normalised first (as synthgen's read_manifest does)
    return json.loads(fs.cat_file(posixpath.normpath(f"{root}/dataset/{card['manifest']}")))


def _check_run(fs, root: str, summary: dict) -> None:
    manifest = _manifest(fs, root)
    run_id = manifest["run_id"]
    raw = pa.concat_tables(
        [
            pq.read_table(f, filesystem=fs)
            for f in sorted(fs.glob(f"{root}/runs/{run_id}/shards/*.parquet"))
        ]
    )
    drops = pq.read_table(f"{root}/runs/{run_id}/dedup/drops.parquet", filesystem=fs)
    data = ds.dataset(f"{root}/dataset/data", format="parquet", filesystem=fs).to_table()
    t = manifest["totals"]

    # counts add up: generated = kept + dropped, per shard and in total
    assert t["generated"] == raw.num_rows == 24
    assert t["kept_records"] == manifest["rows"] == data.num_rows
    assert t["generated"] == t["kept_records"] + t["dropped"]
    assert t["dropped"] == sum(t["drop_counts"].values())
    for s in manifest["shards"]:
        assert s["generated"] == s["rows"] + sum(s["drop_counts"].values())
    assert summary["drop_counts"] == t["drop_counts"]
    assert summary["generated"] == 24 and summary["rows_published"] == data.num_rows

    # expected outcome, computed independently: one record per distinct normalised text,
    # the lowest prompt_id of each group
    groups: dict[int, list[str]] = defaultdict(list)
    for pid, text in zip(raw["prompt_id"].to_pylist(), raw["completion"].to_pylist(), strict=True):
        groups[text_hash(text)].append(pid)
    expected_kept = sorted(min(p) for p in groups.values())
    assert sorted(data["prompt_id"].to_pylist()) == expected_kept
    assert t["drop_counts"] == {"exact_duplicate": 24 - len(groups)}
    # duplicates across shards were found by the cluster stage, the rest in-shard
    in_shard = sum(1 for r in raw["drop_reason"].to_pylist() if r is not None)
    assert in_shard + drops.num_rows == 24 - len(groups)
    assert drops.num_rows > 0
    # dropped rows stay in the raw shards; the dataset has no clean-stage columns
    assert raw.num_rows == 24 and "drop_reason" not in data.column_names
    # the band index of the published records is stored beside the dataset
    index = fs.glob(f"{root}/dedup_index/*.parquet")
    assert sum(pq.read_metadata(p, filesystem=fs).num_rows for p in index) == data.num_rows


def test_flow_cleans_and_publishes_only_kept_records_local(tmp_path, prefect_api, monkeypatch):
    import flows.run

    moved: list[str] = []
    real = flows.run.place_ready

    def spy(store, ready, count, pid):  # type: ignore[no-untyped-def]
        out = real(store, ready, count, pid)
        moved.extend(e["shard_id"] for e in out)
        return out

    monkeypatch.setattr(flows.run, "place_ready", spy)
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", _clean_cfg(str(out)))
    summary = synthgen_run(config=cfg_path)
    assert summary["status"] == "complete"
    import fsspec

    fs = fsspec.filesystem("file")
    _check_run(fs, str(out), summary)
    # the shards the run-wide dedup left alone were moved into place from the files written
    # as they committed; the ones it dropped rows of were published from their shard again
    run_id = summary["run_id"]
    dropped = set(
        pq.read_table(out / "runs" / run_id / "dedup" / "drops.parquet")["shard_id"].to_pylist()
    )
    published = {s["shard_id"] for s in _manifest(fs, str(out))["shards"]}
    assert dropped and moved and published == dropped | set(moved)
    assert not dropped & set(moved)
    assert not (out / "runs" / run_id / "publish" / "ready").exists()  # cleared once published
    # every shard was indexed for the run-wide dedup as it committed: none was read again
    # for its keys (only those holding a candidate pair, by the verify step)
    assert _manifest(fs, str(out))["dedup"]["shards_indexed"] == summary["shards_total"] == 5
    sha = [f["sha256"] for f in _manifest(fs, str(out))["files"]]

    # a re-run (resume, then re-publish) keeps exactly the same representatives
    again = synthgen_run(config=cfg_path)
    assert again["shards_generated"] == 0
    _check_run(fs, str(out), again)
    assert [f["sha256"] for f in _manifest(fs, str(out))["files"]] == sha


@pytest.mark.slow
def test_flow_cleans_on_s3(tmp_path, prefect_api, s3_server, s3_bucket):
    uri = f"s3://{s3_bucket}/synth"
    cfg = _clean_cfg(uri, output__storage_options={"endpoint_url": s3_server})
    summary = synthgen_run(config=write_config(tmp_path / "c.yaml", cfg))
    assert summary["status"] == "complete"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    _check_run(fs, f"{s3_bucket}/synth", summary)


def test_against_published_drops_what_the_dataset_has(tmp_path, prefect_api):
    out = tmp_path / "out"
    first = _clean_cfg(str(out), name="first")
    s1 = synthgen_run(config=write_config(tmp_path / "a.yaml", first))
    second = _clean_cfg(str(out), name="second")
    second["clean"]["near"] = {"against_published": True}
    # another run's dataset, and zero rows to show: both need the explicit flag
    second["output"]["replace"] = True
    s2 = synthgen_run(config=write_config(tmp_path / "b.yaml", second))
    assert s1["run_id"] != s2["run_id"]
    # same prompts, same seeds -> the same texts: all already published
    assert s2["rows_published"] == 0
    assert s2["generated"] == 24
    assert sum(s2["drop_counts"].values()) == 24
