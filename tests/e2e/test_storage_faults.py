"""The S3 endpoint disappears mid-run (moto's server stopped, then restarted on the same port
in this process, which keeps the data): retries ride it out; past the retry budget the run
fails clearly, commits nothing half-written, and resumes cleanly later."""

from __future__ import annotations

import hashlib
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from synthgen.config import config_from_dict
from synthgen.io.attempts import commit_markers
from synthgen.io.store import Store
from tests.conftest import free_port
from tests.crash_helpers import run_cli, start_cli, wait_for
from tests.helpers import fake_config, write_config

pytestmark = pytest.mark.slow
SHARDS = 8


class Endpoint:
    """A moto server that can be taken down and brought back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        deadline = time.monotonic() + 15
        while True:
            try:
                self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
                self.server.start()
                return
            except OSError:  # the port may linger for a moment after stop()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture()
def endpoint():
    ep = Endpoint()
    try:
        yield ep
    finally:
        ep.stop()


def _setup(tmp_path, endpoint, **more):
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint.url}, skip_instance_cache=True).mkdir(
        bucket
    )
    data = fake_config(
        f"s3://{bucket}/out",
        shards__size=3,
        cluster__task_retries=0,  # storage retries alone must carry the run
        model__fake__seconds_per_shard=1.0,
        output__storage_options={"endpoint_url": endpoint.url},
        **more,
    )
    cfg = config_from_dict(data)
    return write_config(tmp_path / "c.yaml", data), cfg, Store(cfg.output)


def _commits(store, run_id):
    try:
        return commit_markers(store, run_id)
    except Exception:
        return {}


def _dataset_ids(store):
    ids = []
    for name in store.ls(store.path("dataset", "data")):
        if name.endswith(".parquet"):
            ids += store.read_table(store.path("dataset", "data", name))["prompt_id"].to_pylist()
    return ids


def test_outage_of_several_seconds_is_ridden_out_by_retries(tmp_path, prefect_api, endpoint):
    cfg_path, cfg, store = _setup(tmp_path, endpoint)
    cli = start_cli(cfg_path, tmp_path / "s.json", tmp_path / "log")
    wait_for(lambda: len(_commits(store, cfg.run_id)) >= 1, 120, "the first commit")
    endpoint.stop()
    time.sleep(5)
    endpoint.start()
    code = cli.wait(timeout=240)
    log = (tmp_path / "log").read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert "retrying in" in log  # the outage was seen, and retried
    ids = _dataset_ids(store)
    assert len(ids) == 24 and len(set(ids)) == 24


def test_outage_past_the_retry_budget_fails_clearly_then_resumes(tmp_path, prefect_api, endpoint):
    cfg_path, cfg, store = _setup(
        tmp_path, endpoint, output__retry_attempts=2, output__retry_max_delay_s=0.3
    )
    cli = start_cli(cfg_path, tmp_path / "s.json", tmp_path / "log")
    wait_for(lambda: len(_commits(store, cfg.run_id)) >= 1, 120, "the first commit")
    endpoint.stop()
    code = cli.wait(timeout=180)
    log = (tmp_path / "log").read_text(errors="replace")
    assert code == 3, log[-3000:]  # incomplete: storage gave up mid-run
    assert "still failing after 2 attempts" in log and "EndpointConnectionError" in log, log[-3000:]
    assert "re-run the same command to resume" in log
    endpoint.start()

    # every commit marker points at a whole shard file with the recorded checksum
    commits = commit_markers(store, cfg.run_id)
    assert 1 <= len(commits) < SHARDS
    for sid, marker in commits.items():
        blob = store.read_bytes(marker["file"])
        assert hashlib.sha256(blob).hexdigest() == marker["sha256"], sid
        assert pq.read_table(pa.BufferReader(blob)).num_rows == marker["rows"]
    assert not store.exists(store.path("dataset", "README.md"))

    code, summary, text = run_cli(cfg_path, tmp_path, "resume")
    assert code == 0, text[-3000:]
    assert summary["shards_generated"] == SHARDS - len(commits)
    ids = _dataset_ids(store)
    assert len(ids) == 24 and len(set(ids)) == 24


# --------------------------------------------------------------------------- commit integrity
def test_create_bytes_never_replaces_an_existing_object(any_store):
    path = any_store.path("runs", "r", "_commits", "shard-00000.json")
    assert any_store.create_bytes(path, b"first")
    assert not any_store.create_bytes(path, b"second")
    assert any_store.read_bytes(path) == b"first"
    assert any_store.ls(any_store.path("runs", "r", "_commits")) == ["shard-00000.json"]


def test_a_shard_file_that_no_longer_matches_its_commit_is_never_published(tmp_path):
    from synthgen.errors import StorageError as SGStorageError
    from synthgen.io.layout import RunLayout
    from synthgen.stages.generate import ShardTask, run_shard
    from synthgen.stages.plan import write_plan
    from synthgen.stages.publish import publish_shard

    cfg = config_from_dict(fake_config(str(tmp_path / "out")))
    store = Store(cfg.output)
    write_plan(cfg, store)
    config = cfg.model_dump(mode="json")
    assert run_shard(ShardTask(config, "shard-00000")).status == "done"
    assert publish_shard(config, "shard-00000", publish_id="p", index=0, count=1)["rows"] == 5
    # something rewrites the shard after its commit (a late attempt, a stray tool)
    other = pq.read_table(store.run_path(cfg.run_id, "shards", "shard-00000.parquet")).slice(0, 2)
    store.write_table(RunLayout(store, cfg.run_id).stage().shard("shard-00000"), other)
    with pytest.raises(
        SGStorageError, match=r"shard-00000\.parquet: the file does not match its commit"
    ):
        publish_shard(config, "shard-00000", publish_id="p", index=0, count=1)
    assert not store.exists(RunLayout(store, cfg.run_id).stage().commit("shard-00000"))  # withdrawn
    again = run_shard(ShardTask(config, "shard-00000"))  # the re-run regenerates it
    assert again.status == "done" and again.rows == 5
    assert publish_shard(config, "shard-00000", publish_id="p", index=0, count=1)["rows"] == 5
