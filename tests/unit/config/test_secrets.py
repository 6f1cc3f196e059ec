"""Credentials given by config or environment never appear in logs, Prefect parameters or
logs or artifacts, the dataset, the manifest, the ledger or anything under runs/: plant
recognisable secrets, run, and search everything (stdout/stderr: the CLI test)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import s3fs
from pydantic import BaseModel, SecretStr

from synthgen.config import OutputConfig, RunConfig, config_from_dict
from synthgen.config.secret_rule import (
    is_credential_key,
    reveal,
    unwrap_credentials,
    wrap_credentials,
)
from synthgen.config.secrets import (
    FREE_MAPPINGS,
    MASK,
    SecretMasker,
    check_overrides,
    config_secrets,
    env_secrets,
    restore_secrets,
    stash_secrets,
)
from synthgen.errors import ConfigError
from synthgen.io.store import Store
from tests.conftest import REPO
from tests.crash_helpers import child_env
from tests.helpers import fake_config, write_config


def _planted(tag: str) -> str:
    return f"PLANTED{tag}{uuid.uuid4().hex}"


def _bucket_text(endpoint: str, bucket: str) -> dict[str, bytes]:
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    return {p: fs.cat_file(p) for p in fs.find(bucket)}


def _assert_absent(secrets: list[str], where: str, blob: bytes | str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for s in secrets:
        assert s.encode() not in data, f"secret {s[:12]}... found in {where}"


# --------------------------------------------------------------------------- units
def test_masker_masks_messages_args_and_tracebacks():
    secret = _planted("unit")
    masker = SecretMasker()
    masker.add([secret, "abc"])  # too short to mask safely: ignored
    masker.install()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = logging.getLogger("synthgen.test.secrets")
    logger.addHandler(handler)
    try:
        logger.warning("connecting with %s", secret)
        try:
            raise RuntimeError(f"boom {secret}")
        except RuntimeError:
            logger.exception("failed")
        logger.warning("abc stays")
    finally:
        logger.removeHandler(handler)
        masker.uninstall()
    text = buf.getvalue()
    assert secret not in text
    assert text.count(MASK) == 2 and "abc stays" in text and "RuntimeError: boom ***" in text


def test_config_secrets_and_stash_roundtrip():
    secret = _planted("cfg")
    config = {"name": "x", "run_id": "r", "output": {"storage_options": {"secret": secret}}}
    assert config_secrets(config) == {secret}
    public = stash_secrets(config)
    assert public["output"]["storage_options"]["secret"] == MASK
    assert restore_secrets(public) == config
    with pytest.raises(ConfigError, match="through the environment"):
        restore_secrets({**public, "run_id": "another"})


def test_redact_masks_only_inside_free_mappings_and_copies_the_rest():
    secret, nested = _planted("deep"), _planted("nested")
    config = {
        "name": "x",
        "token": "not-a-free-mapping-value",  # credential-like key outside a free mapping
        "prompts": {"topics": ["a", "b"], "secret": "kept-as-is"},
        "output": {
            "storage_options": {
                "secret": secret,
                "client_kwargs": {"aws_session_token": nested, "region": "eu"},
                "tokens": [{"api_key": nested}],
                "max_new_tokens": "64",
            }
        },
        "model": {"vllm": {"extra": {"seed": 1}}},
    }
    public = stash_secrets(config)
    opts = public["output"]["storage_options"]
    assert opts["secret"] == MASK and opts["client_kwargs"]["aws_session_token"] == MASK
    assert opts["tokens"] == [{"api_key": MASK}] and opts["max_new_tokens"] == "64"
    assert public["token"] == config["token"] and public["prompts"] == config["prompts"]
    assert config_secrets(config) == {secret, nested}
    # the result shares no container with the input
    public["prompts"]["topics"].append("c")
    assert config["prompts"]["topics"] == ["a", "b"]


def test_secret_overrides_are_refused_without_echoing_them():
    secret = _planted("ovr")
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY") as err:
        check_overrides([f"output.storage_options.secret={secret}"])
    assert secret not in str(err.value)
    with pytest.raises(ConfigError):
        check_overrides([f"output.storage_options={{key: AKIA, secret: {secret}}}"])
    check_overrides(["sampling.max_new_tokens=8", "output.uri=s3://b/p"])  # fine
    check_overrides(["output.credentials_block=secret/prod", "cluster.tls.key_file=/k.pem"])
    with pytest.raises(ConfigError, match="credentials may not be passed"):
        check_overrides([f"model.vllm.extra.hf_token={secret}"])


def test_one_rule_names_credentials_by_key_words():
    for key in ("key", "secret", "token", "aws_secret_access_key", "AWS_ACCESS_KEY_ID",
                "HF_TOKEN", "password", "secretAccessKey", "api_key", "PREFECT_API_KEY"):  # fmt: skip
        assert is_credential_key(key), key
    for key in ("max_new_tokens", "tokenizer", "endpoint_url", "region_name", "monkey",
                "TOKENIZERS_PARALLELISM", "profile"):  # fmt: skip
        assert not is_credential_key(key), key
    env = {"HF_TOKEN": "hf_planted_value", "AWS_ACCESS_KEY_ID": "AKIAPLANTED", "HOME": "/root/x"}
    assert env_secrets(env) == {"hf_planted_value", "AKIAPLANTED"}


def test_storage_option_credentials_are_secret_in_every_dump_but_reveal():
    secret, token = _planted("dump"), _planted("tok")
    cfg = config_from_dict(
        {
            "output": {
                "uri": "s3://b/p",
                "storage_options": {
                    "key": "AKIAPLANTED1",
                    "secret": secret,
                    "endpoint_url": "http://x",
                    "client_kwargs": {"aws_session_token": token, "region_name": "eu-1"},
                },
            },
            "sampling": {"max_new_tokens": 9},
        }
    )
    so = cfg.output.storage_options
    assert isinstance(so["secret"], SecretStr) and so["endpoint_url"] == "http://x"
    for dumped in (
        cfg.model_dump(mode="json"),
        cfg.public_dict(),
        json.loads(cfg.model_dump_json()),
    ):
        text = json.dumps(dumped)
        assert secret not in text and token not in text and "AKIAPLANTED1" not in text
        assert dumped["output"]["storage_options"]["secret"] == MASK
        assert dumped["output"]["storage_options"]["client_kwargs"]["region_name"] == "eu-1"
    assert secret not in repr(cfg) and secret not in str(cfg.model_dump())
    full = reveal(cfg)
    assert full["output"]["storage_options"]["secret"] == secret
    assert full["output"]["storage_options"]["client_kwargs"]["aws_session_token"] == token
    assert config_secrets(cfg) == {secret, token, "AKIAPLANTED1"}
    # the flow's hand-over: parameters carry ***, tasks get the real values back
    public = stash_secrets(cfg)
    assert public == cfg.model_dump(mode="json")
    again = RunConfig.model_validate(restore_secrets(public))
    assert again.output.storage_options["secret"].get_secret_value() == secret
    assert again.run_id == cfg.run_id
    assert unwrap_credentials(again.output.storage_options)["client_kwargs"] == {
        "aws_session_token": token,
        "region_name": "eu-1",
    }


def test_free_mappings_are_exactly_the_free_form_fields():
    """`redact` (on dicts) must know every place a key can name a credential; of those,
    only output.storage_options keeps them (typed CredentialMapping: SecretStr values)."""
    free, kept = [], []

    def walk(model, path):
        for name, field in model.model_fields.items():
            tp = field.annotation
            if get_origin(tp) is dict and get_args(tp)[1] is Any:
                free.append((*path, name))
            if wrap_credentials in [getattr(m, "func", None) for m in field.metadata]:
                kept.append((*path, name))
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                walk(tp, (*path, name))

    walk(RunConfig, ())
    assert sorted(free) == sorted(FREE_MAPPINGS)
    assert kept == [("output", "storage_options")]


def test_credentials_are_refused_in_vllm_extra_without_echoing_them():
    with pytest.raises(ConfigError, match="'hf_token' looks like a credential") as err:
        config_from_dict({"model": {"vllm": {"extra": {"hf_token": "hf_plantedvalue"}}}})
    assert "hf_plantedvalue" not in str(err.value)
    ok = config_from_dict(
        {"model": {"vllm": {"extra": {"tokenizer": "t", "max_num_batched_tokens": 9}}}}
    )
    assert ok.model.vllm.extra["tokenizer"] == "t"


def test_store_gets_the_real_credentials_at_the_fsspec_boundary(s3_server, s3_bucket):
    secret = _planted("store")
    output = OutputConfig(
        uri=f"s3://{s3_bucket}/sec",
        storage_options={"endpoint_url": s3_server, "key": "AKIASTORE", "secret": secret},
    )
    store = Store(output)
    assert (store.fs.key, store.fs.secret) == ("AKIASTORE", secret)  # str, not SecretStr
    store.write_json(store.path("j.json"), {"k": 1})
    assert store.read_json(store.path("j.json")) == {"k": 1}


# --------------------------------------------------------------------------- a real run
def _search_prefect_and_bucket(secrets, run_id, s3_server, s3_bucket):
    """Every object in the bucket, and every flow run, task run, log and artifact of the run
    in the Prefect API: none may hold any of `secrets`."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter

    from flows.prefect_env import _flush_logs

    _flush_logs()
    objects = _bucket_text(s3_server, s3_bucket)
    assert any(p.endswith("/manifest.json") for p in objects)
    assert any(p.endswith("/dataset/README.md") for p in objects)
    assert any("/runs/" in p for p in objects) and any("/dataset/" in p for p in objects)
    for path, blob in objects.items():
        _assert_absent(secrets, path, blob)

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(limit=200) if run_id in (r.name or "")]
        assert {r.name.split("/")[0] for r in runs} >= {"generate"}
        ids = [r.id for r in runs]
        for r in runs:
            _assert_absent(secrets, f"flow run {r.name} parameters", repr(r.parameters))
            _assert_absent(secrets, f"flow run {r.name}", r.model_dump_json())
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": ids}), limit=200)
        assert tasks
        for t in tasks:
            _assert_absent(secrets, f"task run {t.name}", t.model_dump_json())
        logs = client.read_logs(LogFilter(flow_run_id={"any_": ids}), limit=200)
        assert logs
        for log in logs:
            _assert_absent(secrets, "run log", log.message)
        for art in client.read_artifacts(limit=200):
            _assert_absent(secrets, f"artifact {art.key}", art.model_dump_json())


@pytest.mark.slow
def test_planted_secrets_reach_no_output_log_or_prefect_record(
    tmp_path, s3_server, s3_bucket, prefect_api, monkeypatch
):
    from flows.run import synthgen_run

    cfg_secret = _planted("cfgsecret")
    cfg_key = _planted("cfgkey")
    env_token = _planted("envtoken")
    monkeypatch.setenv("HF_TOKEN", env_token)
    secrets = [cfg_secret, cfg_key, env_token]
    data = fake_config(
        f"s3://{s3_bucket}/out",
        output__storage_options={"endpoint_url": s3_server, "key": cfg_key, "secret": cfg_secret},
    )
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", data))
    assert res["status"] == "complete"
    buf = io.StringIO()
    probe = logging.getLogger("synthgen.test.probe")
    handler = logging.StreamHandler(buf)
    probe.addHandler(handler)
    probe.warning("env token is %s", env_token)  # the environment's secrets are masked too
    probe.removeHandler(handler)
    assert buf.getvalue() == "env token is ***\n"
    _search_prefect_and_bucket(secrets, res["run_id"], s3_server, s3_bucket)


@pytest.mark.slow
def test_planted_block_secret_reaches_no_output_log_or_prefect_record(
    tmp_path, s3_server, s3_bucket, prefect_api
):
    from prefect.blocks.system import Secret

    from flows.run import synthgen_run

    block_secret = _planted("blocksecret")
    block_key = _planted("blockkey")
    name = f"robust-{uuid.uuid4().hex[:8]}"
    Secret(value={"key": block_key, "secret": block_secret}).save(name, overwrite=True)
    data = fake_config(
        f"s3://{s3_bucket}/out",
        output__storage_options={"endpoint_url": s3_server},
        output__credentials_block=f"secret/{name}",
    )
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", data))
    assert res["status"] == "complete"
    secrets = [block_secret, block_key]
    _search_prefect_and_bucket(secrets, res["run_id"], s3_server, s3_bucket)


@pytest.mark.slow
def test_cli_keeps_secrets_out_of_its_output_and_its_prefect_database(
    tmp_path, s3_server, s3_bucket
):
    cfg_secret = _planted("clisecret")
    env_secret = _planted("clienvsecret")
    data = fake_config(
        f"s3://{s3_bucket}/out",
        output__storage_options={"endpoint_url": s3_server, "secret": cfg_secret, "key": "AKIAX1"},
    )
    cfg_path = write_config(tmp_path / "c.yaml", data)
    home = tmp_path / "prefect-home"
    env = child_env(PREFECT_HOME=str(home), AWS_SESSION_TOKEN=env_secret)
    env.pop("PREFECT_API_URL", None)  # its own temporary server and database under PREFECT_HOME

    refused = subprocess.run(
        [sys.executable, "-m", "synthgen.cli", "run", cfg_path,
         "--set", f"output.storage_options.secret={cfg_secret}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        refused.returncode == 2
        and "credentials may not be passed as run parameters" in refused.stderr
    )
    _assert_absent([cfg_secret], "refused CLI output", refused.stdout + refused.stderr)

    proc = subprocess.run(
        [sys.executable, "-m", "synthgen.cli", "run", cfg_path],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "synthgen run summary" in proc.stdout
    secrets = [cfg_secret, env_secret]
    _assert_absent(secrets, "CLI stdout/stderr", proc.stdout + proc.stderr)
    for path, blob in _bucket_text(s3_server, s3_bucket).items():
        _assert_absent(secrets, path, blob)
    db_files = [p for p in Path(home).rglob("*") if p.is_file()]
    assert any(p.name.startswith("prefect.db") for p in db_files), db_files
    for p in db_files:
        _assert_absent(secrets, str(p), p.read_bytes())
    assert os.environ.get("AWS_SESSION_TOKEN") != env_secret
