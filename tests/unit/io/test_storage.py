import os
import time

import pyarrow as pa
import pytest

from synthgen.config import OutputConfig
from synthgen.errors import StorageError
from synthgen.io.store import RetryPolicy, Store, is_transient, retrying


def test_local_roundtrip_and_atomic_write_leaves_no_temp(tmp_path):
    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    t = pa.table({"a": [1, 2, 3]})
    size, sha = store.write_table(store.path("x", "t.parquet"), t)
    assert size > 0 and len(sha) == 64
    assert store.read_table(store.path("x", "t.parquet")).equals(t)
    assert os.listdir(tmp_path / "out" / "x") == ["t.parquet"]
    store.write_json(store.path("j.json"), {"k": 1})
    assert store.read_json(store.path("j.json")) == {"k": 1}
    assert store.ls(store.path("x")) == ["t.parquet"]
    assert store.ls(store.path("nothing")) == []


def test_s3_roundtrip_over_http(s3_server, s3_bucket):
    store = Store(
        OutputConfig(uri=f"s3://{s3_bucket}/pre", storage_options={"endpoint_url": s3_server})
    )
    store.check_writable()
    t = pa.table({"a": ["x", "y"]})
    store.write_table(store.path("d", "t.parquet"), t)
    assert store.read_table(store.path("d", "t.parquet")).equals(t)
    assert store.url("d") == f"s3://{s3_bucket}/pre/d"


def test_missing_bucket_is_reported_before_work(s3_server):
    store = Store(
        OutputConfig(uri="s3://no-such-bucket-xyz/p", storage_options={"endpoint_url": s3_server})
    )
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-xyz' does not exist"):
        store.check_writable()


def test_unwritable_local_output_is_reported(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    store = Store(OutputConfig(uri=str(ro / "file" / "sub")))
    with pytest.raises(OSError):
        store.check_writable()


def test_retry_recovers_from_transient_errors_with_backoff():
    from botocore.exceptions import EndpointConnectionError

    calls = []

    def flaky():
        calls.append(time.perf_counter())
        if len(calls) < 3:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        return "ok"

    assert is_transient(EndpointConnectionError(endpoint_url="x"))
    assert retrying(flaky, "writing x", RetryPolicy(attempts=5, base=0.05, cap=0.2)) == "ok"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.02  # backed off before retrying


def test_retry_gives_up_with_a_clear_message():
    def down():
        raise ConnectionRefusedError("refused")

    with pytest.raises(StorageError, match="writing y: still failing after 3 attempts"):
        retrying(down, "writing y", RetryPolicy(attempts=3, base=0.01, cap=0.01))


def test_permanent_errors_are_not_retried():
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        retrying(missing, "reading z")
    assert calls == [1]


def test_read_optional_location_and_a_store_over_an_open_filesystem(any_store):
    store = any_store
    path = store.path("runs", "r", "x.json")
    assert store.read_optional(path) is None  # missing: None, not an error
    store.write_bytes(path, b"{}")
    assert store.read_optional(path) == b"{}"
    assert store.location(path) == store.url("runs", "r", "x.json")
    run = Store.over(store.fs, store.path("runs", "r"))
    assert run.root == store.path("runs", "r") and run.local == store.local
    assert run.location(run.path("x.json")) == store.location(path)
    run.write_bytes(run.path("y.json"), b"1")
    assert store.ls(store.path("runs", "r")) == ["x.json", "y.json"]


def test_store_retry_uses_the_store_policy(tmp_path):
    store = Store(OutputConfig(uri=str(tmp_path), retry_attempts=3, retry_base_delay_s=0.001))
    calls = []

    def always_down():
        calls.append(1)
        raise ConnectionResetError("reset")

    with pytest.raises(StorageError, match="still failing after 3 attempts"):
        store.retry(always_down, "probing")
    assert len(calls) == 3
