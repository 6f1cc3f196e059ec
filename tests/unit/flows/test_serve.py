"""Deployment specs from configs, schedule validation, trigger override checks, credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.credentials import (
    merge_storage_options,
    parse_block_ref,
    resolve_output_options,
    storage_options_from_block_data,
)
from flows.refs import require_prefect_api
from flows.serve import deployment_specs
from flows.trigger import deployment_name
from synthgen.config import config_from_dict
from synthgen.config.secrets import check_overrides
from synthgen.errors import ConfigError


def _write(tmp: Path, name: str, body: str) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(body)
    return p


def test_specs_carry_cron_timezone_and_default_parameters(tmp_path: Path) -> None:
    nightly = _write(
        tmp_path,
        "nightly",
        "name: nightly\nschedule:\n  cron: '30 2 * * mon-fri'\n  timezone: Europe/Berlin\n"
        "  overrides: ['sampling.seed=7']\n  tags: [team-a]\n",
    )
    adhoc = _write(tmp_path, "adhoc", "name: adhoc\nschedule:\n  active: false\n")
    specs = deployment_specs([nightly, adhoc])
    by = {s.name: s for s in specs}
    n = by["nightly"]
    assert n.full_name == "synthgen-run/nightly"
    assert (n.cron, n.timezone, n.active) == ("30 2 * * mon-fri", "Europe/Berlin", True)
    assert n.parameters == {"config": str(nightly.resolve()), "overrides": ["sampling.seed=7"]}
    assert n.tags == ["config:nightly", "synthgen", "team-a"]
    a = by["adhoc"]
    assert a.cron is None and a.active is False
    assert a.parameters["overrides"] == []


def test_specs_refuse_duplicate_names_and_bad_configs(tmp_path: Path) -> None:
    one = _write(tmp_path, "one", "name: same\n")
    two = _write(tmp_path, "two", "name: other\nschedule:\n  deployment: same\n")
    with pytest.raises(
        ConfigError, match=r"two\.yaml: deployment name 'same' is already used by .*one\.yaml"
    ):
        deployment_specs([one, two])
    bad = _write(tmp_path, "bad", "name: bad\nschedule:\n  cron: '0 25 * * *'\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: schedule\.cron: .*hour field '25'"):
        deployment_specs([bad])
    with pytest.raises(ConfigError, match="no run configs"):
        deployment_specs([])


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"cron": "0 3 * *"}, "needs 5 fields"),
        ({"cron": "*/0 * * * *"}, r"minute field '\*/0' is invalid"),
        ({"cron": "0 3 31 2 *"}, "day-of-month field '31' is invalid"),  # no 31 February
        ({"cron": "0 3 * * 1 0"}, r"needs 5 fields .*got 6"),  # no seconds field
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"overrides": ["no-equals"]}, "expected key.path=value"),
        ({"deployment": "has space"}, "schedule.deployment"),
    ],
)
def test_schedule_validation(schedule: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"schedule": schedule})


def test_schedule_accepts_macros_and_names() -> None:
    assert config_from_dict({"schedule": {"cron": "@daily"}}).schedule.cron == "@daily"
    cfg = config_from_dict({"schedule": {"cron": "0  6 1 jan,jul sun", "timezone": "Asia/Tokyo"}})
    assert cfg.schedule.cron == "0 6 1 jan,jul sun"


def test_require_prefect_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ConfigError, match="synthgen serve: PREFECT_API_URL is not set"):
        require_prefect_api("synthgen serve")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert require_prefect_api("x") == "http://127.0.0.1:4200/api"


@pytest.mark.parametrize(
    "item",
    [
        "output.storage_options.secret=abc",
        "output.storage_options.key=AKIA",
        "output.storage_options.client_kwargs.aws_secret_access_key=x",
        "output.storage_options.password=x",
        "output.storage_options={key: AKIA, secret: x}",
        "output={storage_options: {client_kwargs: {aws_secret_access_key: x}}}",
    ],
)
def test_trigger_refuses_credentials_in_overrides(item: str) -> None:
    with pytest.raises(ConfigError, match="credentials may not be passed as run parameters"):
        check_overrides([item])


def test_trigger_accepts_ordinary_overrides() -> None:
    ok = [
        "shards.size=4",
        "sampling.max_new_tokens=32",
        "model.fake.tokens_per_completion=8",
        "output.credentials_block=secret/prod-s3",
        "output.storage_options.client_kwargs.endpoint_url=http://127.0.0.1:9000",
        "output={uri: s3://b/p, credentials_block: secret/prod-s3}",
    ]
    assert check_overrides(ok) == ok
    with pytest.raises(ConfigError, match="expected key.path=value"):
        check_overrides(["shards.size"])
    assert deployment_name("nightly") == "synthgen-run/nightly"
    assert deployment_name("other-flow/x") == "other-flow/x"


def test_block_data_maps_to_s3fs_options() -> None:
    aws = {
        "aws_access_key_id": "AKIA1",
        "aws_secret_access_key": "s3cr3t",
        "aws_session_token": None,
        "region_name": None,
        "aws_client_parameters": {"endpoint_url": "http://127.0.0.1:9000", "verify": True},
    }
    assert storage_options_from_block_data("aws-credentials", aws, "aws-credentials/x") == {
        "key": "AKIA1",
        "secret": "s3cr3t",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
    }
    secret = {"value": '{"key": "k", "secret": "s", "token": "t"}'}
    assert storage_options_from_block_data("secret", secret, "secret/x") == {
        "key": "k",
        "secret": "s",
        "token": "t",
    }
    with pytest.raises(ConfigError, match="secret/x.*JSON object"):
        storage_options_from_block_data("secret", {"value": "plain-password"}, "secret/x")
    with pytest.raises(ConfigError, match="no access key id"):
        storage_options_from_block_data("secret", {"value": {"key": "k"}}, "secret/x")


def test_block_ref_and_merge_rules() -> None:
    assert parse_block_ref("secret/prod-s3") == ("secret", "prod-s3")
    with pytest.raises(ConfigError, match="expected 'aws-credentials/NAME'"):
        parse_block_ref("json/prod")
    with pytest.raises(ConfigError, match="output.credentials_block"):
        config_from_dict({"output": {"credentials_block": "prod"}})
    merged = merge_storage_options(
        {"client_kwargs": {"endpoint_url": "http://mine"}},
        {
            "key": "k",
            "secret": "s",
            "client_kwargs": {"endpoint_url": "http://block", "region_name": "eu"},
        },
    )
    assert merged == {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"endpoint_url": "http://mine", "region_name": "eu"},
    }
    plain = config_from_dict({})
    assert resolve_output_options(plain.output) == {}  # no block: no Prefect call


def test_config_ref_resolves_names_next_to_the_deployment_config(tmp_path: Path) -> None:
    from flows.refs import resolve_config_ref

    default = _write(tmp_path, "nightly", "name: nightly\n")
    weekly = _write(tmp_path, "weekly", "name: weekly\n")
    named = _write(tmp_path, "big-file", "name: big-run\n")
    assert resolve_config_ref("weekly", str(default)) == str(weekly)
    assert resolve_config_ref("big-run", str(default)) == str(named)
    assert resolve_config_ref("/abs/x.yaml", str(default)) == "/abs/x.yaml"
    assert resolve_config_ref("other.yaml", str(default)) == "other.yaml"
    assert resolve_config_ref("weekly", None) == "weekly"  # not a deployment run: as given
    with pytest.raises(
        ConfigError, match=r"no config named 'nope' .*available: big-run, nightly, weekly"
    ):
        resolve_config_ref("nope", str(default))


def test_shard_retries_back_off_exponentially_and_artifact_keys_are_valid() -> None:
    from flows.run import _backoff, summary_artifact_key

    cfg = config_from_dict({"cluster": {"task_retries": 4, "retry_delay_s": 2.0}})
    assert _backoff(cfg) == [2.0, 4.0, 8.0, 16.0]
    capped = config_from_dict({"cluster": {"task_retries": 12, "retry_delay_s": 1.0}})
    assert max(_backoff(capped)) == 300.0
    assert _backoff(config_from_dict({"cluster": {"task_retries": 0}})) == [0.0]
    key = summary_artifact_key("Nightly_Run.v2-abc123")
    assert key == "synthgen-summary-nightly-run-v2-abc123"
