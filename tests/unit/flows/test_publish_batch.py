"""A publish batch (flows.units.publish_batch): its shards are written concurrently, each
outcome stays with its shard (in the batch's order), one shard's failure is not the batch's,
and the dedup index's meta file is checked once per batch, not once per shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import flows.units as run_mod
import synthgen.stages.dedup.index as index_mod
import synthgen.stages.publish as publish_mod
from synthgen.config import RunConfig
from synthgen.io.layout import DatasetLayout
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import write_plan
from tests.helpers import fake_config, kept_fake_text

SHARDS = 12


def test_a_batch_publishes_its_shards_in_order_and_isolates_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = RunConfig.model_validate(
        fake_config(
            str(tmp_path / "out"),
            shards__size=2,
            model__fake__tokens_per_completion=8,  # under max_new_tokens: not truncated
            **kept_fake_text(2 * SHARDS),
        )
    )
    assert cfg.clean.enabled and cfg.clean.near.enabled  # so the index is written
    store = Store(cfg.output)
    plan = write_plan(cfg, store)
    config = cfg.model_dump(mode="json")
    ids = [s.shard_id for s in plan.shards]
    for sid in ids:
        assert run_shard(ShardTask(config, sid)).status == "done"

    metas: list[str] = []
    real = index_mod.ensure_meta

    def counted(fs, parent, clean_cfg):  # type: ignore[no-untyped-def]
        metas.append(parent)
        return real(fs, parent, clean_cfg)

    monkeypatch.setattr(index_mod, "ensure_meta", counted)
    monkeypatch.setattr(publish_mod, "ensure_meta", counted)
    monkeypatch.setattr(run_mod, "PUBLISH_TRIES", 1)  # the missing shard fails at once

    items = [(i, sid) for i, sid in enumerate(ids)]
    items.insert(5, (len(ids), "shard-99999"))  # never committed
    out = run_mod.publish_batch(config, items, "pidtest", len(items))

    assert len(out) == len(items)
    assert len(metas) == 1, metas  # once per batch
    for (index, sid), outcome in zip(items, out, strict=True):
        if sid == "shard-99999":
            assert outcome["type"] == "FileNotFoundError" and sid in outcome["error"]
            continue
        entry = outcome["shard"]
        assert entry["shard_id"] == sid
        (f,) = entry["files"]
        assert f"-{index:05d}-of-" in f["path"] and f["path"].endswith("-pidtest.parquet")
        table = pq.read_table(DatasetLayout(store).file(f["path"]))
        assert table.num_rows == f["rows"] == entry["rows"] > 0
    parts = list((tmp_path / "out" / "dedup_index").glob("*.parquet"))
    assert len(parts) == SHARDS  # one index part per published shard
    assert not list((tmp_path / "out" / "dedup_index").glob(".*.tmp"))
