"""The publish switch without a cluster: one owner per output, zero-row publishes, idempotence
and the collection of other publishes' files; local and on the S3 endpoint."""

from __future__ import annotations

import pyarrow as pa
import pytest

from synthgen.config import config_from_dict
from synthgen.errors import PublishRefused
from synthgen.io.layout import DatasetLayout
from synthgen.io.store import Store
from synthgen.stages.card import front_matter
from synthgen.stages.formats import to_dpo
from synthgen.stages.publish import (
    check_owner,
    commit_publish,
    publish_id,
    published_as,
    read_card,
    read_manifest,
)


def _cfg(store, name: str, **output):
    return config_from_dict({"name": name, "output": {"uri": store.uri, **output}})


def _shard(store, pid: str, rows: int, shard_id: str = "shard-00000") -> dict:
    dataset = DatasetLayout(store)
    path = dataset.data_name("train", 0, 1, pid)
    t = pa.table(
        {"prompt_id": [f"p{i}" for i in range(rows)]},
        schema=pa.schema([("prompt_id", pa.string())]),
    )
    size, sha = store.write_table(dataset.file(path), t)
    return {
        "shard_id": shard_id, "rows": rows, "generated": rows, "kept_tokens": 0,
        "drop_counts": {},
        "files": [{"path": path, "split": "train", "rows": rows, "bytes": size, "sha256": sha,
                   "shard_id": shard_id}],
    }  # fmt: skip


def test_one_output_one_owner_and_no_silent_empty_replace(any_store) -> None:
    store = any_store
    a = _cfg(store, "a")
    m1 = commit_publish(a, store, [_shard(store, "pa1", 3)], "pa1")
    card = read_card(store)
    assert card["run_id"] == a.run_id and card["publish_id"] == "pa1" and card["rows"] == 3
    assert read_manifest(store) == m1
    # the card lists exactly this publish's files
    meta = front_matter(store.read_bytes(DatasetLayout(store).card).decode())
    assert meta["configs"][0]["data_files"] == [
        {"split": "train", "path": ["data/train-00000-of-00001-pa1.parquet"]}
    ]
    assert published_as(store, a.run_id, "pa1") == m1  # a re-run has nothing to write

    b = _cfg(store, "b")
    with pytest.raises(PublishRefused) as err:
        check_owner(b, store)
    assert a.run_id in str(err.value) and b.run_id in str(err.value)
    assert "output.replace=true" in str(err.value)
    with pytest.raises(PublishRefused):
        commit_publish(b, store, [_shard(store, "pb1", 2)], "pb1")
    assert read_card(store)["publish_id"] == "pa1"  # untouched

    # the owner's own zero-row publish does not replace its data either, without the flag
    with pytest.raises(PublishRefused, match="0 rows"):
        commit_publish(a, store, [_shard(store, "pa2", 0)], "pa2")
    assert read_card(store)["publish_id"] == "pa1"

    # replacing on purpose: the new publish shows, every other data file is gone
    b2 = _cfg(store, "b", replace=True)
    m2 = commit_publish(b2, store, [_shard(store, "pb2", 2)], "pb2")
    assert read_card(store)["run_id"] == b2.run_id and m2["rows"] == 2
    names = store.ls(DatasetLayout(store).data_dir)
    assert names == ["train-00000-of-00001-pb2.parquet"]
    assert store.ls(DatasetLayout(store).dir) == ["README.md", "data"]


def test_publish_id_changes_with_what_the_files_hold(tmp_path) -> None:
    cfg = config_from_dict({"output": {"uri": str(tmp_path)}})
    base = publish_id(cfg, {"s0": "aa", "s1": "bb"}, None)
    assert base == publish_id(cfg, {"s1": "bb", "s0": "aa"}, None)  # order does not matter
    assert base != publish_id(cfg, {"s0": "aa", "s1": "cc"}, None)
    assert base != publish_id(cfg, {"s0": "aa", "s1": "bb"}, "drops")
    sft = config_from_dict({"output": {"uri": str(tmp_path), "format": "sft"}})
    assert base != publish_id(sft, {"s0": "aa", "s1": "bb"}, None)


def test_the_flat_layout_of_earlier_versions_is_read_and_then_cleaned(tmp_path) -> None:
    cfg = config_from_dict({"name": "new", "output": {"uri": str(tmp_path), "replace": True}})
    store = Store(cfg.output)
    dataset = DatasetLayout(store)
    store.write_json(dataset.file("_manifest.json"), {"run_id": "old-run", "rows": 5})
    store.write_bytes(dataset.file("_README.md"), b"# old\n")
    store.write_table(dataset.file("shard-00000.parquet"), pa.table({"x": [1]}))
    assert read_card(store) == {"run_id": "old-run", "rows": 5, "legacy": True}
    with pytest.raises(PublishRefused, match="old-run"):
        check_owner(
            cfg.model_copy(update={"output": cfg.output.model_copy(update={"replace": False})}),
            store,
        )
    # what a write killed mid-way leaves on a local disk
    store.write_bytes(dataset.file("data/.train-00000-of-00001-p0.parquet.tmp-abcd1234"), b"x")
    commit_publish(cfg, store, [_shard(store, "p1", 1)], "p1")
    assert store.ls(dataset.dir) == ["README.md", "data"]
    assert store.ls(dataset.data_dir) == ["train-00000-of-00001-p1.parquet"]


def test_a_dpo_folder_loads_with_datasets_as_trls_preference_format(tmp_path) -> None:
    datasets = pytest.importorskip("datasets", reason="datasets is a test dependency")
    cfg = config_from_dict({
        "output": {"uri": str(tmp_path), "format": "dpo", "license": "cc-by-4.0"},
        "stages": [
            {"name": "answer", "prompt": "{{ prompt }}", "sampling": {"n": 2}},
            {"name": "judge", "prompt": "{{ answer }}", "parse": "json",
             "guided": {"json_schema": {"type": "object",
                                        "properties": {"score": {"type": "integer"}}}}},
        ],
        "select": {"strategy": "pairs", "by": "judge.score", "stage": "answer"},
    })  # fmt: skip
    store = Store(cfg.output)
    dataset = DatasetLayout(store)
    rows = to_dpo(pa.table({
        "run_id": [cfg.run_id] * 2, "prompt_id": ["p1", "p2"],
        "answer.messages": ['[{"role": "user", "content": "Hi?"}]'] * 2,
        "chosen": ["Hello!", "Hey."], "rejected": ["No.", "..."],
        "chosen_score": [9.0, 8.0], "rejected_score": [1.0, 2.0],
    }), "answer")  # fmt: skip
    path = dataset.data_name("train", 0, 1, "d1")
    size, sha = store.write_table(dataset.file(path), rows)
    shard = {"shard_id": "s0", "rows": 2, "generated": 4, "kept_tokens": 0,
             "drop_counts": {"low_margin": 2},
             "files": [{"path": path, "split": "train", "rows": 2, "bytes": size, "sha256": sha,
                        "shard_id": "s0"}]}  # fmt: skip
    commit_publish(cfg, store, [shard], "d1")
    meta = front_matter(store.read_bytes(dataset.card).decode())
    assert meta["license"] == "cc-by-4.0" and "dpo" in meta["tags"]
    ds = datasets.load_dataset(dataset.dir, cache_dir=str(tmp_path / "hf"))["train"]
    msg = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    for col in ("prompt", "chosen", "rejected"):
        assert ds.features[col] == msg, col
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Hello!"}]
    assert ds[0]["prompt"] == [{"role": "user", "content": "Hi?"}]
