"""The real Prefect flow on a real Dask LocalCluster, with the fast fake engine."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from flows.run import synthgen_run
from tests.helpers import fake_config, published_manifest, write_config


def read_dataset(path):
    return ds.dataset(path, format="parquet").to_table()


def test_flow_writes_one_row_per_prompt_and_resumes_without_regenerating(tmp_path, prefect_api):
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", fake_config(str(out), cluster__n_workers=2))
    first = synthgen_run(config=cfg_path)
    assert first["status"] == "complete"
    assert first["shards_total"] == 5 and first["shards_generated"] == 5

    table = read_dataset(out / "dataset" / "data")
    assert table.num_rows == 24
    ids = table["prompt_id"].to_pylist()
    assert len(set(ids)) == 24
    assert all(c for c in table["completion"].to_pylist())
    for col in ("model", "engine", "worker", "device", "sampling", "shard_id", "run_id"):
        assert all(v for v in table[col].to_pylist()), col
    assert set(table["engine"].to_pylist()) == {"fake"}

    manifest = published_manifest(out)
    assert manifest["rows"] == table.num_rows == sum(f["rows"] for f in manifest["files"])
    assert manifest["totals"]["completion_tokens"] == sum(table["completion_tokens"].to_pylist())
    assert manifest["totals"]["prompts"] == 24
    t = manifest["totals"]  # counts add up: generated = kept + dropped
    assert t["generated"] == 24 == t["kept_records"] + t["dropped"] and t["dropped"] == 0
    assert manifest["run_id"] == first["run_id"]

    # the engine was loaded once per worker process and reused for every shard it ran
    commits = [
        json.loads(p.read_text())["result"]
        for p in (out / "runs" / first["run_id"] / "_commits").glob("*.json")
    ]
    by_worker: dict[str, set[str]] = {}
    for r in commits:
        by_worker.setdefault(r["worker"], set()).add(r["load_id"])
    assert all(len(loads) == 1 for loads in by_worker.values()), by_worker
    assert sum(1 for r in commits) == 5

    # resume: same run id, nothing regenerated, dataset unchanged
    second = synthgen_run(config=cfg_path)
    assert second["run_id"] == first["run_id"]
    assert second["shards_generated"] == 0 and second["shards_skipped"] == 5
    manifest2 = published_manifest(out)
    assert [f["sha256"] for f in manifest2["files"]] == [f["sha256"] for f in manifest["files"]]


def test_partial_run_resumes_only_missing_shards(tmp_path, prefect_api):
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", fake_config(str(out)))
    first = synthgen_run(config=cfg_path)
    run_dir = out / "runs" / first["run_id"]
    # lose two shards' commits (as if their workers died before committing)
    for sid in ("shard-00001", "shard-00003"):
        (run_dir / "_commits" / f"{sid}.json").unlink()
    second = synthgen_run(config=cfg_path)
    assert second["shards_generated"] == 2 and second["shards_skipped"] == 3
    table = read_dataset(out / "dataset" / "data")
    assert sorted(table["prompt_id"].to_pylist()) == sorted(set(table["prompt_id"].to_pylist()))
    assert table.num_rows == 24


def test_changed_config_under_same_run_id_is_refused(tmp_path, prefect_api):
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", fake_config(str(out), run_id="fixed"))
    synthgen_run(config=cfg_path)
    with pytest.raises(Exception, match="already exists .* different config"):
        synthgen_run(config=cfg_path, overrides=["sampling.seed=99"])


def test_overrides_reach_the_run(tmp_path, prefect_api):
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", fake_config(str(tmp_path / "elsewhere")))
    res = synthgen_run(config=cfg_path, overrides=[f"output.uri={out}", "shards.size=12"])
    assert res["shards_total"] == 2
    assert (out / "dataset" / "README.md").is_file()


def test_generate_seconds_spans_the_generate_loop_not_dedup_or_publish(tmp_path, prefect_api):
    """The summary's `generate_seconds` (and so its tokens/s) runs from checkpoint
    `generate.started` to `generate.done`; run-wide dedup and publish count in
    `wall_seconds` only. The publish slowed by 2 s (a hook in this process, when the flow
    gets the first publish batch) shows in the wall time, not in the generate time."""
    import time

    from synthgen.checkpoints import set_checkpoint_hook

    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", fake_config(str(out)))
    seen: dict[str, float] = {}

    def hook(point: str) -> None:
        if point in ("generate.started", "generate.done"):
            seen[point] = time.perf_counter()
        elif point == "publish.shard_done" and "slowed" not in seen:
            seen["slowed"] = 2.0
            time.sleep(2.0)

    set_checkpoint_hook(hook)
    try:
        summary = synthgen_run(config=cfg_path)
    finally:
        set_checkpoint_hook(None)
    assert summary["status"] == "complete" and "slowed" in seen, (summary, seen)
    loop_s = seen["generate.done"] - seen["generate.started"]
    # the clock reads on either side of the hook's own: a few microseconds apart
    assert 0 < summary["generate_seconds"] <= loop_s + 0.5, (summary["generate_seconds"], loop_s)
    assert summary["wall_seconds"] >= summary["generate_seconds"] + 2.0
    assert summary["tokens_per_s"] == pytest.approx(
        summary["completion_tokens"] / summary["generate_seconds"]
    )
