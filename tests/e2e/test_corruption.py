"""Committed shards damaged after their commit (a file substituted, truncated or replaced by
garbage, a garbage commit marker): the next run withdraws them, generates them again in the
same run and publishes the same dataset as before, from verified files only. On local disk
and on the live S3 endpoint."""

from __future__ import annotations

import hashlib
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.run import synthgen_run
from synthgen.checkpoints import set_checkpoint_hook
from synthgen.config import config_from_dict
from synthgen.io.layout import DatasetLayout, RunLayout
from synthgen.io.store import Store
from synthgen.stages.publish import read_manifest
from tests.helpers import fake_config, write_config

pytestmark = pytest.mark.slow

NO_FILTERS = {
    name: {"enabled": False}
    for name in ("word_count", "gopher_quality", "gopher_repetition", "truncated", "refusal")
}


def _config(tmp_path, request, dedup: bool):
    if request.param == "local":
        uri, opts = str(tmp_path / "out"), {}
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        uri, opts = f"s3://{bucket}/{uuid.uuid4().hex[:6]}", {"endpoint_url": server}
    clean = {"enabled": True, "filters": NO_FILTERS} if dedup else {"enabled": False}
    data = fake_config(uri, shards__size=3, output__storage_options=opts, clean=clean)
    return write_config(tmp_path / "c.yaml", data), config_from_dict(data)


def _published(store: Store) -> list[tuple[str, str]]:
    dataset = DatasetLayout(store)
    manifest = read_manifest(store)  # the one the card names
    assert manifest is not None
    rows = []
    for f in manifest["files"]:
        data = store.read_bytes(dataset.file(f["path"]))
        table = pq.read_table(pa.BufferReader(data))
        rows += list(
            zip(table["prompt_id"].to_pylist(), table["completion"].to_pylist(), strict=True)
        )
    return sorted(rows)


def _damage(store: Store, run_id: str) -> dict[str, str]:
    layout = RunLayout(store, run_id).stage()
    damaged = {
        "shard-00000": "substituted",  # another shard's (valid Parquet) file
        "shard-00002": "truncated",
        "shard-00003": "garbage",
        "shard-00005": "garbage marker",
    }
    other = store.read_bytes(layout.shard("shard-00001"))
    for sid, how in damaged.items():
        path = layout.shard(sid)
        if how == "substituted":
            store.write_bytes(path, other)
        elif how == "truncated":
            store.write_bytes(path, store.read_bytes(path)[:-100])
        elif how == "garbage":
            store.write_bytes(path, b"PAR1" + b"\xde\xad" * 200 + b"PAR1")
        else:
            store.write_bytes(layout.commit(sid), b'{"sha256": "not a marker"')
    return damaged


@pytest.fixture(params=["local", "s3"])
def where(request):
    return request


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "publish-only"])
def test_damaged_shards_are_regenerated_in_the_same_run(tmp_path, prefect_api, where, dedup):
    cfg_path, cfg = _config(tmp_path, where, dedup)
    store = Store(cfg.output)
    first = synthgen_run(config=cfg_path)
    assert first["status"] == "complete" and first["shards_total"] == 8
    before = _published(store)
    assert len(before) == (24 if not dedup else len(before)) and before

    damaged = _damage(store, cfg.run_id or "")
    second = synthgen_run(config=cfg_path)  # the first re-run ends complete and correct
    assert second["status"] == "complete", second
    # the garbage marker is withdrawn at start; the damaged files by dedup or publish, and
    # all four are generated again by this same run
    assert second["shards_generated"] == len(damaged), second
    assert _published(store) == before

    layout = RunLayout(store, cfg.run_id or "").stage()
    for sid in damaged:  # every shard is committed again, to a file that matches it
        marker = json.loads(store.read_bytes(layout.commit(sid)))
        data = store.read_bytes(layout.shard(sid))
        assert hashlib.sha256(data).hexdigest() == marker["sha256"]


def test_a_marker_garbled_after_the_generate_loop_is_regenerated_in_the_same_run(
    tmp_path, prefect_api, where
):
    """The marker of a shard the loop committed is damaged before dedup and publish read it
    (checkpoint `generate.done`, in this process): the run withdraws it, generates the shard
    again and publishes all 24 rows, the regenerated shard's as they were."""
    cfg_path, cfg = _config(tmp_path, where, dedup=False)
    store = Store(cfg.output)
    layout = RunLayout(store, cfg.run_id or "").stage()
    victim = "shard-00002"
    seen: dict[str, list[tuple[str, str]]] = {}

    def garble(point: str) -> None:
        if point != "generate.done" or seen:
            return
        table = pq.read_table(pa.BufferReader(store.read_bytes(layout.shard(victim))))
        seen[victim] = sorted(zip(table["prompt_id"].to_pylist(),
                                  table["completion"].to_pylist(), strict=True))  # fmt: skip
        store.write_bytes(layout.commit(victim), b"\x00garbage{")

    set_checkpoint_hook(garble)
    try:
        summary = synthgen_run(config=cfg_path)
    finally:
        set_checkpoint_hook(None)
    assert seen, "the checkpoint was never reached"
    assert summary["status"] == "complete", summary
    assert summary["shards_generated"] == 9, summary  # 8, and the withdrawn one again
    rows = _published(store)
    ids = [pid for pid, _ in rows]
    assert len(ids) == len(set(ids)) == summary["rows_published"] == 24
    assert set(seen[victim]) <= set(rows), "the regenerated shard's rows differ"
    marker = json.loads(store.read_bytes(layout.commit(victim)))
    assert marker["result"]["attempt"] == 2
