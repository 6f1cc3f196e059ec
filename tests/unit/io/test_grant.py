"""Presigned grants for untrusted workers (synthgen.io.grant) against moto, behind a proxy
that checks SigV4 signatures as S3 does (tests/support/s3_sigcheck.py; moto checks none)."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pyarrow as pa
import pytest

from synthgen.config import OutputConfig
from synthgen.io.grant import EXPIRES_S, Grant, GrantRefused, GrantStore, Presigner, worker_config
from synthgen.io.store import Store
from tests.support.s3_sigcheck import sigcheck_proxy, verify


def KEYS() -> dict[str, str]:  # noqa: N802
    return {os.environ["AWS_ACCESS_KEY_ID"]: os.environ["AWS_SECRET_ACCESS_KEY"]}


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


@pytest.fixture()
def checked(s3_server: str, s3_bucket: str) -> Iterator[tuple[Store, list[str]]]:
    with sigcheck_proxy(s3_server, KEYS()) as (url, refused):
        yield Store(OutputConfig(uri=f"s3://{s3_bucket}/pre", storage_options={"endpoint_url": url})), refused  # fmt: skip


def _status(method: str, url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method)) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_trusted_side_signs_and_a_grant_store_reads_and_writes_only_its_keys(checked):
    store, refused = checked
    store.write_bytes(store.path("runs/r/plan/s1.parquet"), b"prompts")  # header-signed: passes
    store.write_bytes(store.path("runs/r/_commits/s0.json"), b"{}")
    sign = Presigner(store).url
    src, staged = store.path("runs/r/plan/s1.parquet"), store.path("runs/r/staging/s1.1.ab.parquet")
    grant = Grant("s1", 1, store.root, staged, get={src: sign("GET", src)},
                  put={staged: sign("PUT", staged)})  # fmt: skip
    gs = GrantStore(grant)
    assert gs.read_bytes(src) == b"prompts"
    size, sha = gs.write_table(staged, pa.table({"prompt_id": ["a"]}))
    assert store.read_bytes(staged)[:4] == b"PAR1" and size > 0 and len(sha) == 64
    assert gs.written[staged]["sha256"] == sha
    # not granted: refused before any request
    other = store.path("runs/r/_commits/s0.json")
    for op in (
        lambda: gs.read_bytes(other),
        lambda: gs.write_bytes(other, b"x"),
        lambda: gs.write_bytes(store.path("dataset/x"), b"x"),
        lambda: gs.rm(src),
        lambda: gs.ls(store.path("runs")),
        lambda: gs.exists(src),
        lambda: gs.fs,
    ):
        with pytest.raises(GrantRefused, match="not granted|no filesystem"):
            op()
    assert not refused  # the trusted side's and the granted requests all verified


def test_the_store_refuses_a_url_used_for_another_method_or_key_or_after_expiry(checked):
    store, refused = checked
    path = store.path("runs/r/plan/s1.parquet")
    store.write_bytes(path, b"prompts")
    get, put = Presigner(store).url("GET", path), Presigner(store).url("PUT", path)
    assert _status("GET", get) == 200
    assert _status("PUT", get, b"overwrite") == 403  # a GET URL for a PUT
    assert _status("GET", put) == 403  # a PUT URL for a GET
    assert _status("GET", get.replace("s1.parquet", "s2.parquet")) == 403  # another key
    assert _status("DELETE", put) == 403
    assert _status("GET", get.split("?")[0]) == 403  # no signature at all
    assert store.read_bytes(path) == b"prompts"
    assert len(refused) == 5, refused
    # a URL lives EXPIRES_S (6 h): the same check 6 h 1 min later refuses it
    target = get[get.index("/", len("http://")) :]
    later = datetime.now(UTC) + timedelta(seconds=EXPIRES_S + 60)
    assert verify("GET", target, {"host": _host(get)}, KEYS(), datetime.now(UTC)) is None
    assert verify("GET", target, {"host": _host(get)}, KEYS(), later) == "expired"
    # a GrantStore turns the store's 403 into GrantRefused
    grant = Grant("s1", 1, store.root, path, put={path: get})
    with pytest.raises(GrantRefused, match="refused by the store"):
        GrantStore(grant).write_bytes(path, b"x")


def test_a_worker_config_holds_no_credentials():
    from synthgen.config import config_from_dict
    from synthgen.config.secrets import config_secrets

    cfg = config_from_dict(
        {
            "output": {
                "uri": "s3://b/p",
                "storage_options": {"key": "AKIDSECRETKEYID", "secret": "s3cr3t-value-xyz"},
            },
            "cluster": {
                "address": "tls://10.0.0.1:8786",
                "tls": {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"},
            },
        }
    )
    assert cfg.untrusted_workers()  # auto: TLS and s3://
    data = worker_config(cfg.model_dump(mode="json"))
    text = repr(data)
    assert "AKIDSECRETKEYID" not in text and "s3cr3t" not in text and "/k.pem" not in text
    again = config_from_dict(data)  # still a valid config on the worker
    assert again.run_id == cfg.run_id and not config_secrets(again)
    assert again.output.storage_options == {} and again.output.credentials_block is None


def test_urls_are_signed_for_the_buckets_own_region(s3_server, monkeypatch):
    """No region configured: the trusted side asks the store where the bucket is and signs
    for that region (a URL signed for us-east-1 is refused by S3 for a bucket elsewhere)."""
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="eu-west-1")
    s3.create_bucket(
        Bucket="in-ireland", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    store = Store(
        OutputConfig(uri="s3://in-ireland/pre", storage_options={"endpoint_url": s3_server})
    )
    presigner = Presigner(store)
    assert presigner.region == "eu-west-1"
    assert "%2Feu-west-1%2Fs3%2Faws4_request" in presigner.url("PUT", "in-ireland/pre/x.bin")
    s3.put_object(Bucket="in-ireland", Key="pre/y.bin", Body=b"abc")
    with urllib.request.urlopen(presigner.url("GET", "in-ireland/pre/y.bin"), timeout=30) as r:
        assert r.read() == b"abc"
