"""Publish-ready files (`ready_shard`, written as a shard commits) moved into a publish
(`place_ready`) are exactly the files `publish_shard` writes for that shard, with the same
entry; the moves leave no ready file behind. Local disk and the S3 endpoint."""

from __future__ import annotations

import pytest

from synthgen.config import RunConfig
from synthgen.io.layout import DatasetLayout, RunLayout, unit_key
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import write_plan
from synthgen.stages.publish import place_ready, prepare_publish, publish_shard, ready_shard
from tests.helpers import fake_config, kept_fake_text


def _committed(store: Store) -> tuple[dict, list[str]]:
    opts = dict(store.output.storage_options or {})
    cfg = RunConfig.model_validate(
        fake_config(
            store.uri,
            output__storage_options=opts,
            shards__size=2,
            model__fake__tokens_per_completion=8,
            **kept_fake_text(6),
        )
    )
    plan = write_plan(cfg, store)
    config = cfg.model_dump(mode="json")
    ids = [s.shard_id for s in plan.shards]
    for sid in ids:
        assert run_shard(ShardTask(config, sid)).status == "done"
    return config, ids


def test_ready_files_moved_into_a_publish_are_the_files_publish_writes(any_store) -> None:
    store = Store(any_store.output)
    config, ids = _committed(store)
    prepare_publish(config)
    ready = [ready_shard(config, sid) for sid in ids]
    layout = RunLayout(store, config["run_id"])
    assert len(store.ls(layout.publish_ready)) == len(ids)  # one split per shard
    for e, sid in zip(ready, ids, strict=True):
        marker = store.read_json(layout.stage().commit(sid))
        assert e["source_sha256"] == marker["sha256"]
        assert all("path" not in f and f["ready"] for f in e["files"])
    placed = place_ready(store, [(e, i) for i, e in enumerate(ready)], len(ids), "pready")
    assert store.ls(layout.publish_ready) == []  # moved, not copied

    dataset = DatasetLayout(store)
    for i, (sid, got) in enumerate(zip(ids, placed, strict=True)):
        want = publish_shard(
            config, sid, publish_id="pwrite", index=i, count=len(ids), extra_drops={}
        )
        assert got["rows"] == want["rows"] > 0
        (g,), (w,) = got["files"], want["files"]
        assert g["path"] == dataset.data_name("train", i, len(ids), "pready")
        assert {**g, "path": None} == {**w, "path": None}  # same rows, bytes, sha256
        assert store.read_bytes(dataset.file(g["path"])) == store.read_bytes(
            dataset.file(w["path"])
        )
        assert {k: v for k, v in got.items() if k != "files"} == {
            k: v for k, v in want.items() if k != "files"
        }


def test_a_ready_file_names_the_committed_file_it_was_made_from(tmp_path) -> None:
    from synthgen.config import OutputConfig

    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    config, ids = _committed(store)
    prepare_publish(config)
    e = ready_shard(config, ids[0])
    (f,) = e["files"]
    assert e["source_sha256"][:16] in f["ready"]
    with pytest.raises(FileNotFoundError):  # moved once; a second move finds nothing
        place_ready(store, [(e, 0), (e, 0)], 1, "p")


def test_the_flow_writes_ready_files_for_results_without_them(tmp_path, capsys) -> None:
    """`Prepublish` (flows/run.py): a result that brings its ready entry (written by the
    worker) is taken as it is; one without (TLS, untrusted workers, a worker-side failure)
    gets its files written by the flow; a shard whose files cannot be written is left to
    the usual publish, with a warning; other stages' and failed results are ignored."""
    from flows.run import Prepublish
    from synthgen.config import OutputConfig

    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    config, ids = _committed(store)
    prepare_publish(config)
    from_worker = ready_shard(config, ids[0])
    pre = Prepublish(config, "generate", threads=2)
    try:
        pre.add({"shard_id": ids[0], "status": "done", "ready": from_worker})
        pre.add({"shard_id": ids[1], "status": "skipped"})  # no entry: the flow writes it
        pre.add({"shard_id": ids[2], "status": "superseded"})  # another attempt's commit
        pre.add({"shard_id": "shard-99999", "status": "done"})  # never committed
        pre.add({"shard_id": unit_key("judge", ids[2]), "status": "done"})  # not the final stage
        ready = pre.entries()
    finally:
        pre.close()
    assert set(ready) == {ids[0], ids[1]}
    assert ready[ids[0]] is from_worker
    assert ready[ids[1]]["source_sha256"] and ready[ids[1]]["files"][0]["ready"]
    assert "1 shard(s) had no publish-ready files" in capsys.readouterr().out


def test_prepublish_keeps_each_shards_dedup_keys_up_to_its_cap(tmp_path, monkeypatch, capsys):
    """The dedup keys a ready entry brings go to `Prepublish.keys` (shard -> (the committed
    file's sha256, keys)), never into the entry the manifest takes; past KEYS_MAX_BYTES a
    shard keeps none (the run-wide dedup reads it) and the log says so once."""
    import flows.run
    from flows.run import Prepublish, _key_bytes
    from synthgen.config import OutputConfig

    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    config, ids = _committed(store)
    prepare_publish(config)
    entries = [ready_shard(config, sid) for sid in ids[:3]]
    assert all(e["dedup_keys"].rows > 0 for e in entries)
    one = _key_bytes(entries[0]["dedup_keys"])
    monkeypatch.setattr(flows.run, "KEYS_MAX_BYTES", one + one // 2)
    pre = Prepublish(config, "generate", threads=1)
    try:
        for sid, e in zip(ids, entries, strict=False):
            pre.add({"shard_id": sid, "status": "done", "ready": e})
        ready = pre.entries()
    finally:
        pre.close()
    assert set(pre.keys) == {ids[0]}
    sha, keys = pre.keys[ids[0]]
    assert sha == ready[ids[0]]["source_sha256"] and keys.rows == entries[0]["rows"]
    assert pre.key_bytes == one
    assert all("dedup_keys" not in e for e in ready.values())
    out = capsys.readouterr().out
    assert out.count("later shards are read again at the end of the run") == 1
