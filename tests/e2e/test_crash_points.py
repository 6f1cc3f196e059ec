"""Crash points (issue 18): `synthgen run` SIGKILLed at each boundary of a run, then run
again. The kill lands at a named checkpoint (`synthgen.checkpoints`, tests/support/killpoint.py):
in the process running the flow (after the plan; mid-publish, once it got a shard's files) or
in the run's own LocalCluster worker, which kills the run and then itself (mid-generate: a
shard's file written but not its commit marker, or the marker written but the flow not told;
mid-dedup: between the per-shard drops and the run-wide drops file). At every point: no
process of the killed run remains, readers see no dataset (nothing was switched to yet), and
the re-run publishes exactly the rows of an uninterrupted run, no prompt id twice, with a
manifest that names exactly the data files present, each matching its sha256 and row count.
On local disk and on the S3 protocol (moto server). The card switch itself (killed after the
manifest, and after the switch) is tests/e2e/test_publish_crash.py's.

The kills use real processes; the uninterrupted reference (one per storage kind) and the
re-runs run in this process on one shared Dask cluster, to keep the cost down."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.run import synthgen_run
from synthgen.config import config_from_dict
from synthgen.io.attempts import commit_markers
from synthgen.io.layout import DatasetLayout, RunLayout
from synthgen.io.store import Store
from synthgen.stages.publish import read_card, read_manifest
from tests.crash_helpers import kill_at, start_dask
from tests.helpers import fake_config, write_config

pytestmark = pytest.mark.slow

SHARDS = 4  # 24 built-in prompts, 6 per shard
NO_FILTERS = {
    name: {"enabled": False}
    for name in ("word_count", "gopher_quality", "gopher_repetition", "truncated", "refusal")
}

# (checkpoint[:N], what the output holds when the kill lands there)
POINTS = {
    "run.planned": "plan only",
    "generate.file_written:2": "file without marker",
    "generate.committed:2": "marker, flow not told",
    "dedup.parts_written": "mid-dedup",
    "publish.shard_done:2": "mid-publish",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    procs = start_dask(tmp_path_factory.mktemp("dask"), n_workers=1)
    try:
        yield procs.address
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def s3_root(s3_server):
    import s3fs

    bucket = f"crash-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True).mkdir(
        bucket
    )
    return f"s3://{bucket}", {"endpoint_url": s3_server}


def _data(uri: str, opts: dict[str, Any], **more: Any) -> dict[str, Any]:
    return fake_config(
        uri,
        shards__size=6,
        clean={"enabled": True, "filters": NO_FILTERS},  # run-wide dedup runs
        output__storage_options=opts,
        **more,
    )


def _location(kind: str, tmp: Path, request) -> tuple[str, dict[str, Any]]:
    if kind == "local":
        return str(tmp / "out"), {}
    root, opts = request.getfixturevalue("s3_root")
    return f"{root}/{uuid.uuid4().hex[:8]}", opts


@pytest.fixture(scope="module", params=["local", "s3"])
def reference(request, tmp_path_factory, prefect_api, cluster):
    """The uninterrupted run, once per storage kind: its published rows."""
    tmp = tmp_path_factory.mktemp(f"ref-{request.param}")
    uri, opts = _location(request.param, tmp, request)
    data = _data(uri, opts, cluster__address=cluster)
    summary = synthgen_run(config=write_config(tmp / "ref.yaml", data))
    assert summary["status"] == "complete", summary
    store = Store(config_from_dict(data).output)
    rows = _published(store)
    assert len(rows) == summary["rows_published"] > 0
    return {"kind": request.param, "rows": rows}


def _published(store: Store) -> list[tuple[str, str]]:
    """The rows the card's manifest names, each file checked against its entry; the
    manifest must name exactly the data files present."""
    manifest = read_manifest(store)
    assert manifest is not None, "nothing is published"
    dataset = DatasetLayout(store)
    present = {f"data/{n}" for n in store.ls(dataset.data_dir)}
    assert present == {f["path"] for f in manifest["files"]}, "manifest and files differ"
    rows = []
    for f in manifest["files"]:
        data = store.read_bytes(dataset.file(f["path"]))
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]
        table = pq.read_table(pa.BufferReader(data))
        assert table.num_rows == f["rows"], f["path"]
        rows += zip(table["prompt_id"].to_pylist(), table["completion"].to_pylist(), strict=True)
    assert len(rows) == manifest["rows"]
    return sorted(rows)


def _landed(point: str, store: Store, run_id: str) -> None:
    """The output holds what a kill at `point` leaves (the kill came where intended)."""
    layout = RunLayout(store, run_id)
    markers = commit_markers(store, run_id)
    files = [n for n in store.ls(layout.stage().shards_dir) if n.endswith(".parquet")]
    name = point.partition(":")[0]
    if name == "run.planned":
        assert store.exists(layout.plan_index) and not markers
    elif name == "generate.file_written":  # one worker thread: shards one after another
        assert len(markers) == 1 and len(files) == 2, (sorted(markers), files)
    elif name == "generate.committed":
        assert len(markers) == 2 and len(files) == 2, (sorted(markers), files)
    elif name == "dedup.parts_written":
        assert len(markers) == SHARDS and not store.exists(layout.dedup_drops)
    elif name == "publish.shard_done":
        assert store.ls(DatasetLayout(store).data_dir), "no file of the publish was written"


@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS.values()))
def test_sigkill_at_each_boundary_then_rerun_publishes_the_uninterrupted_rows(
    point, reference, cluster, tmp_path, request
):
    uri, opts = _location(reference["kind"], tmp_path, request)
    # the run's own LocalCluster (its worker can kill the run), one shard at a time
    # (cluster.overlap 1): the second shard's file is written after the first one's marker
    killed = _data(uri, opts, cluster__overlap=1)
    cfg = config_from_dict(killed)
    store = Store(cfg.output)
    run = kill_at(point, write_config(tmp_path / "killed.yaml", killed), tmp_path / "killed.log")
    assert run.code == -9, run.text()
    assert any("synthgen.cli.lifecycle" in cmd for cmd in run.procs.values()), run.procs
    assert run.remaining() == [], "processes of the killed run remain"
    _landed(point, store, cfg.run_id or "")
    assert read_card(store) == {}, "a dataset is visible before the switch"

    # the re-run (same run id: the cluster is not part of it) takes over the dead lease
    rerun = _data(uri, opts, cluster__address=cluster)
    summary = synthgen_run(config=write_config(tmp_path / "rerun.yaml", rerun))
    assert summary["status"] == "complete", summary
    assert summary["run_id"] == cfg.run_id
    rows = _published(store)
    ids = [pid for pid, _ in rows]
    assert len(ids) == len(set(ids)), "a prompt id appears twice"
    assert rows == reference["rows"]
    assert summary["rows_published"] == len(rows)
    assert len(commit_markers(store, cfg.run_id or "")) == SHARDS
