"""Bad input not covered by test_prompts.py / test_config.py: unknown model path, missing or
wrong S3 credentials, unreachable scheduler, unwritable output (all caught before any GPU
time), over-long prompts (one record rejected, not the shard), and the bad-record tolerance
through a whole run."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pyarrow.dataset as ds
import pytest

from synthgen.cluster.preflight import check_model, check_output, check_scheduler, run_preflight
from synthgen.config import config_from_dict
from synthgen.errors import PreflightError, PromptError, StorageError
from tests.conftest import REPO, free_port
from tests.crash_helpers import child_env, wait_for
from tests.helpers import fake_config, write_config


def _cfg(tmp_path, **kw):
    return config_from_dict(fake_config(str(tmp_path / "out"), **kw))


# --------------------------------------------------------------------------- model path
def test_unknown_model_path_is_named(tmp_path):
    cfg = _cfg(tmp_path, model__engine="transformers", model__path=str(tmp_path / "nope"))
    with pytest.raises(PreflightError, match=r"model.path: '.*nope' does not exist"):
        check_model(cfg.model)
    (tmp_path / "empty").mkdir()
    cfg = _cfg(tmp_path, model__engine="transformers", model__path=str(tmp_path / "empty"))
    with pytest.raises(PreflightError, match="has no config.json"):
        check_model(cfg.model)
    cfg = _cfg(
        tmp_path,
        model__engine="transformers",
        model__path=str(tmp_path / "empty"),
        model__gguf_file="m.gguf",
    )
    with pytest.raises(PreflightError, match=r"model.gguf_file: .*m.gguf not found"):
        check_model(cfg.model)
    cfg = _cfg(tmp_path, model__engine="vllm", model__path="./no/such/dir")
    with pytest.raises(PreflightError, match="model.path"):
        check_model(cfg.model)


def test_cli_rejects_unknown_model_before_starting_anything(tmp_path):
    out = tmp_path / "out"
    data = fake_config(str(out), model__engine="transformers", model__path="/no/such/model")
    proc = subprocess.run(
        [sys.executable, "-m", "synthgen.cli", "run", write_config(tmp_path / "c.yaml", data)],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "model.path: '/no/such/model' does not exist" in proc.stderr
    assert "never downloaded" in proc.stderr
    assert not out.exists()  # no plan, no lease, nothing written
    assert "Starting temporary server" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- scheduler
def test_unreachable_scheduler_fails_fast_naming_the_address(tmp_path):
    port = free_port()  # nothing listens there
    cfg = _cfg(tmp_path, cluster__address=f"tcp://127.0.0.1:{port}", cluster__connect_timeout_s=2)
    with pytest.raises(PreflightError, match=rf"cluster.address: scheduler tcp://127.0.0.1:{port}"):
        run_preflight(cfg)
    with pytest.raises(PreflightError, match="not a scheduler address"):
        check_scheduler(_cfg(tmp_path, cluster__address="tcp://127.0.0.1").cluster)
    assert "local Dask cluster" in check_scheduler(_cfg(tmp_path).cluster)
    inproc = check_scheduler(_cfg(tmp_path, cluster__address="inproc://10.0.0.1/1/1").cluster)
    assert "not probed" in inproc


# --------------------------------------------------------------------------- output
def test_unwritable_local_output_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = config_from_dict(fake_config(str(tmp_path / "file" / "out")))
    with pytest.raises(StorageError, match=r"output.uri .*file/out.* is not writable"):
        run_preflight(cfg)


def test_missing_bucket_is_named(tmp_path, s3_server):
    cfg = config_from_dict(
        fake_config(
            "s3://no-such-bucket-abc/p", output__storage_options={"endpoint_url": s3_server}
        )
    )
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-abc' does not exist"):
        check_output(cfg.output)


def test_missing_s3_credentials_are_reported_with_the_fix(tmp_path, s3_server, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = config_from_dict(
        fake_config("s3://any-bucket/p", output__storage_options={"endpoint_url": s3_server})
    )
    with pytest.raises(StorageError, match="no S3 credentials found") as err:
        check_output(cfg.output)
    assert "AWS_ACCESS_KEY_ID" in str(err.value) and "output.storage_options" in str(err.value)


@pytest.fixture(scope="module")
def s3_with_auth(tmp_path_factory):
    """A moto server that checks access keys (after its first 3 requests, used for setup)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=child_env(INITIAL_NO_AUTH_ACTION_COUNT="3"), stdout=log, stderr=log,
    )  # fmt: skip
    try:
        import boto3

        def up() -> bool:
            try:
                boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(
                    Bucket="authed"
                )
                return True
            except Exception:
                return False

        wait_for(up, 30, "moto server with auth")
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1")
        iam.create_user(UserName="robot")
        key = iam.create_access_key(UserName="robot")["AccessKey"]
        yield url, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_wrong_s3_credentials_are_reported_without_echoing_the_secret(tmp_path, s3_with_auth):
    url, _, _ = s3_with_auth
    wrong_secret = f"wrong-{uuid.uuid4().hex}"
    cfg = config_from_dict(
        fake_config(
            "s3://authed/p",
            output__storage_options={
                "endpoint_url": url,
                "key": "AKIANOTAKEY",
                "secret": wrong_secret,
            },
        )
    )
    with pytest.raises(StorageError, match=r"access denied .*check the credentials") as err:
        check_output(cfg.output)
    assert "s3://authed/p" in str(err.value) and wrong_secret not in str(err.value)


# --------------------------------------------------------------------------- over-long prompts
def _long_prompt_file(tmp_path):
    lines = [{"id": f"ok-{i}", "prompt": f"Say something short number {i}."} for i in range(5)]
    lines.insert(2, {"id": "too-long", "prompt": " ".join(["word"] * 400)})
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


@pytest.mark.slow
def test_over_long_prompt_is_one_rejected_record_not_a_failed_shard(tmp_path, prefect_api):
    from flows.run import synthgen_run

    out = tmp_path / "out"
    data = fake_config(
        str(out),
        prompts={"type": "jsonl", "path": _long_prompt_file(tmp_path)},
        shards__size=6,
        model__max_model_len=128,
    )
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", data))
    assert res["status"] == "complete" and res["shards_total"] == 1
    assert res["drop_counts"] == {"rejected_prompt": 1}
    published = ds.dataset(out / "dataset" / "data", format="parquet").to_table()
    assert sorted(published["prompt_id"].to_pylist()) == [f"ok-{i}" for i in range(5)]
    raw = ds.dataset(out / "runs" / res["run_id"] / "shards", format="parquet").to_table()
    row = [r for r in raw.to_pylist() if r["prompt_id"] == "too-long"][0]
    assert row["drop_reason"] == "rejected_prompt"
    assert "exceeds max_model_len=128" in row["error"]


@pytest.mark.slow
def test_over_long_prompt_with_the_real_model_is_rejected_per_record():
    from synthgen.config import ModelConfig, SamplingConfig
    from synthgen.engines.base import GenRequest
    from synthgen.engines.transformers import TransformersEngine

    engine = TransformersEngine(ModelConfig(max_model_len=96, batch_size=4, cpu_threads=1))
    reqs = [
        GenRequest("short", [{"role": "user", "content": "Name a colour."}], 1),
        GenRequest("long", [{"role": "user", "content": "word " * 300}], 2),
    ]
    out = engine.generate(reqs, SamplingConfig(max_new_tokens=8))
    assert [c.prompt_id for c in out] == ["short", "long"]
    assert out[0].finish_reason in ("stop", "length") and out[0].text
    assert out[1].finish_reason == "rejected" and "exceeds the context of 96" in out[1].error


# --------------------------------------------------------------------------- tolerance, whole run
@pytest.mark.slow
def test_bad_records_within_tolerance_are_quarantined_and_the_run_completes(tmp_path, prefect_api):
    from flows.run import synthgen_run

    good = [json.dumps({"id": f"p{i}", "prompt": f"Question {i}?"}) for i in range(19)]
    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(good[:7] + ['{"prompt": "broken'] + good[7:]) + "\n")
    out = tmp_path / "out"
    data = fake_config(
        str(out), prompts={"type": "jsonl", "path": str(src)}, input__max_bad_fraction=0.1
    )
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", data))
    assert res["status"] == "complete" and res["rejects"] == 1
    rejects = (out / "runs" / res["run_id"] / "rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 1
    reject = json.loads(rejects[0])
    assert (
        reject["line"] == 8
        and reject["source"] == str(src)
        and "malformed JSON" in reject["reason"]
    )
    assert ds.dataset(out / "dataset" / "data", format="parquet").to_table().num_rows == 19


def test_bad_records_above_tolerance_stop_the_run_before_any_work(tmp_path, prefect_api):
    from flows.run import synthgen_run

    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "fine"}\n{"prompt": ""}\nnot json\n{"prompt": "also fine"}\n')
    out = tmp_path / "out"
    data = fake_config(
        str(out), prompts={"type": "jsonl", "path": str(src)}, input__max_bad_fraction=0.25
    )
    with pytest.raises(
        PromptError, match=r"2 of 4 records are bad .*first at line 2: empty prompt"
    ):
        synthgen_run(config=write_config(tmp_path / "c.yaml", data))
    assert not (out / "runs").exists() or not any((out / "runs").rglob("*.parquet"))
