"""Publish as a transaction (issue 18): the process running the flow is SIGKILLed mid-publish,
after the manifest but before the card switch, and after the switch but before the earlier
files are deleted; no process of the killed run remains, readers of the card see the
previous dataset whole until the switch, the re-run publishes exactly what an uninterrupted
run publishes. Local and on the S3 protocol. (The earlier boundaries of a run:
tests/e2e/test_crash_points.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthgen.config import OutputConfig
from synthgen.io.layout import DatasetLayout
from synthgen.io.store import Store
from synthgen.reading import dataset_files
from synthgen.stages.publish import read_card, read_manifest
from tests.crash_helpers import kill_at, run_cli, start_dask
from tests.helpers import fake_config, write_config

pytestmark = pytest.mark.slow

SPLITS = {"test": 0.25}


@pytest.fixture()
def dask_procs(tmp_path):
    procs = start_dask(tmp_path, n_workers=1)
    try:
        yield procs
    finally:
        procs.stop()


def _killed_at(point: str, config: str, log: Path) -> int:
    run = kill_at(point, config, log)
    assert run.remaining() == [], "processes of the killed run remain"
    return run.code


def _read(store: Store, manifest: dict) -> pa.Table:
    """The rows the card's files hold (what `load_dataset(DIR)` reads)."""
    dataset = DatasetLayout(store)
    tables = []
    for f in manifest["files"]:
        data = store.read_bytes(dataset.file(f["path"]))
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]
        t = pq.read_table(pa.BufferReader(data))
        tables.append(t.append_column("split", pa.array([f["split"]] * t.num_rows, pa.string())))
    return pa.concat_tables(tables)


def _rows(store: Store) -> list[tuple]:
    manifest = read_manifest(store)
    t = _read(store, manifest)
    assert t.num_rows == manifest["rows"]
    if "messages" in t.column_names and pa.types.is_list(t.schema.field("messages").type):
        return sorted(zip(t["prompt_id"].to_pylist(), [str(m) for m in t["messages"].to_pylist()],
                          t["split"].to_pylist(), strict=True))  # fmt: skip
    return sorted(zip(t["prompt_id"].to_pylist(), t["completion"].to_pylist(),
                      t["split"].to_pylist(), strict=True))  # fmt: skip


def _data_files(store: Store) -> set[str]:
    return {f"data/{n}" for n in store.ls(DatasetLayout(store).data_dir)}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_publishes_never_show_a_mix_and_the_rerun_equals_an_uninterrupted_run(
    where, tmp_path, prefect_api, dask_procs, request
) -> None:
    def listed(store: Store) -> set[str]:
        # what synthgen.reading.dataset_files hands readers: the card's files, whatever else
        # the folder holds; as paths relative to dataset/
        uri, opts = store.output.uri, store.output.storage_options
        so = {"client_kwargs": {"endpoint_url": opts["endpoint_url"]}} if opts else {}
        d = uri.rstrip("/") + "/dataset/"
        return {f.removeprefix(d) for fs in dataset_files(uri, so).values() for f in fs}

    def config(name: str, fmt: str) -> tuple[str, Store]:
        if where == "local":
            uri, opts = str(tmp_path / name), {}
        else:
            s3_server = request.getfixturevalue("s3_server")
            bucket = request.getfixturevalue("s3_bucket")
            uri, opts = f"s3://{bucket}/{name}", {"endpoint_url": s3_server}
        data = fake_config(
            uri, shards__size=3, cluster__address=dask_procs.address,
            output__storage_options=opts, output__splits=SPLITS, output__format=fmt,
        )  # fmt: skip
        path = write_config(tmp_path / f"{name}-{fmt}.yaml", data)
        return path, Store(OutputConfig(uri=uri, storage_options=opts))

    # the reference: the sft dataset published without interruption
    ref_cfg, ref = config("ref", "sft")
    code, _, text = run_cli(ref_cfg, tmp_path, "ref")
    assert code == 0, text[-3000:]
    want = _rows(ref)
    assert len(want) == 24 and len({r[0] for r in want}) == 24

    # the same run published as raw first: the dataset readers use while sft is published
    raw_cfg, store = config("out", "raw")
    code, _, text = run_cli(raw_cfg, tmp_path, "raw")
    assert code == 0, text[-3000:]
    v1 = read_manifest(store)
    v1_rows = _rows(store)
    sft_cfg, _ = config("out", "sft")

    # 1. killed mid-publish (3 of 8 shards' files written): the card still shows v1, whole
    assert _killed_at("publish.shard_done:3", sft_cfg, tmp_path / "k1.log") == -9
    assert read_manifest(store)["publish_id"] == v1["publish_id"] and _rows(store) == v1_rows
    orphans = _data_files(store) - {f["path"] for f in v1["files"]}
    assert orphans, "the killed publish wrote no file: the kill came too early"
    assert listed(store) == {f["path"] for f in v1["files"]}  # readers of the card: v1 only

    # 2. killed after the new manifest, before the card switch: still v1
    assert _killed_at("publish.before_switch", sft_cfg, tmp_path / "k2.log") == -9
    assert read_manifest(store)["publish_id"] == v1["publish_id"] and _rows(store) == v1_rows

    # 3. killed after the switch, before the v1 files are deleted: the card shows sft whole
    assert _killed_at("publish.after_switch", sft_cfg, tmp_path / "k3.log") == -9
    card = read_card(store)
    assert card["publish_id"] != v1["publish_id"]
    assert _rows(store) == want
    assert {f["path"] for f in v1["files"]} <= _data_files(store)  # not yet collected
    assert listed(store) == {f["path"] for f in read_manifest(store)["files"]}  # sft only

    # the re-run: nothing to write again; the stale files go; equal to the uninterrupted run
    code, summary, text = run_cli(sft_cfg, tmp_path, "rerun")
    assert code == 0, text[-3000:]
    assert f"already published as {card['publish_id']}" in text
    manifest = read_manifest(store)
    assert manifest["publish_id"] == card["publish_id"]
    assert _rows(store) == want
    ids = [r[0] for r in _rows(store)]
    assert len(ids) == len(set(ids)) == 24, "a prompt id appears twice"
    assert _data_files(store) == {f["path"] for f in manifest["files"]}
    assert summary["rows_published"] == manifest["rows"] == 24
