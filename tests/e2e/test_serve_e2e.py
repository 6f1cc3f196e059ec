"""`synthgen serve` against a real `prefect server start` (SQLite), runs triggered from shells.

One Prefect server and one `synthgen serve` process (two configs: a local-output one with a
cron schedule, and an S3 one whose credentials come only from a Prefect Secret block) are
started for the module; runs are triggered through Prefect's own CLI and `synthgen trigger`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import s3fs

from tests._procs import VENV_BIN, Proc, child_env, start_prefect_server, wait_until
from tests.helpers import fake_config, published_manifest, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SENTINEL = "sentinel-secret-value-7f3a91"  # the S3 secret key; must never show up in Prefect


@dataclass
class Served:
    api_url: str
    env: dict[str, str]
    local_cfg: Path
    local_out: Path
    s3_url: str
    s3_endpoint: str


def _synthgen() -> list[str]:
    script = VENV_BIN / "synthgen"
    return [str(script)] if script.exists() else [str(VENV_BIN / "python"), "-m", "synthgen.cli"]


def _client_settings(url: str):  # noqa: ANN202 - prefect's context manager type
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: url})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, s3_server: str) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve-e2e")
    server, url = start_prefect_server(tmp)
    procs = [server]
    try:
        bucket = "serve-e2e-bucket"
        s3fs.S3FileSystem(
            key="setup", secret="setup", client_kwargs={"endpoint_url": s3_server}
        ).mkdir(bucket)
        with _client_settings(url):
            from prefect.blocks.system import Secret

            Secret(value={"key": "e2e-key-id", "secret": SENTINEL}).save("e2e-s3", overwrite=True)

        local_out = tmp / "out"
        local = fake_config(str(local_out), name="nightly-e2e", shards__size=4)
        local["prompts"] = {"type": "builtin", "limit": 8}
        local["schedule"] = {"cron": "0 3 * * *", "timezone": "Europe/Berlin"}
        local_cfg = Path(write_config(tmp / "nightly.yaml", local))
        remote = fake_config(f"s3://{bucket}/runs", name="s3-e2e", shards__size=4)
        remote["prompts"] = {"type": "builtin", "limit": 8}
        remote["output"]["storage_options"] = {"endpoint_url": s3_server}
        remote["output"]["credentials_block"] = "secret/e2e-s3"
        remote_cfg = Path(write_config(tmp / "s3.yaml", remote))

        env = child_env(
            PREFECT_API_URL=url,
            PREFECT_HOME=str(tmp / "client-home"),
            PREFECT_RUNNER_POLL_FREQUENCY="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            AWS_EC2_METADATA_DISABLED="true",
        )
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(var, None)  # the S3 run can only succeed with the block's credentials
        serve = Proc(
            "synthgen-serve", [*_synthgen(), "serve", str(local_cfg), str(remote_cfg)], env, tmp
        )
        procs.append(serve)

        def registered() -> bool:
            with _client_settings(url):
                from prefect.client.orchestration import get_client

                with get_client(sync_client=True) as c:
                    names = {d.name for d in c.read_deployments()}
            return {"nightly-e2e", "s3-e2e"} <= names and "being served" in serve.log()

        wait_until(registered, 120, "synthgen serve to register its deployments", procs)
        yield Served(url, env, local_cfg, local_out, f"s3://{bucket}/runs", s3_server)
    finally:
        for p in reversed(procs):
            p.stop()


def _read_deployment(served: Served, name: str):  # noqa: ANN202
    with _client_settings(served.api_url):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as c:
            return c.read_deployment_by_name(f"synthgen-run/{name}")


def test_deployment_listed_with_cron_schedule_and_ui_parameters(served: Served) -> None:
    dep = _read_deployment(served, "nightly-e2e")
    assert len(dep.schedules) == 1
    sched = dep.schedules[0].schedule
    assert sched.cron == "0 3 * * *"
    assert sched.timezone == "Europe/Berlin"
    assert dep.schedules[0].active is True
    assert dep.parameters == {"config": str(served.local_cfg.resolve()), "overrides": []}
    props = dep.parameter_openapi_schema["properties"]
    assert props["config"]["type"] == "string"
    assert props["overrides"]["anyOf"][0] == {"items": {"type": "string"}, "type": "array"}
    assert "synthgen" in dep.tags and "config:nightly-e2e" in dep.tags
    # the other config has no cron: on demand only
    assert _read_deployment(served, "s3-e2e").schedules == []
    # and the UI that shows them is served by the same server
    import urllib.request

    with urllib.request.urlopen(served.api_url.removesuffix("/api") + "/", timeout=10) as resp:
        assert resp.status == 200 and b"<html" in resp.read(4096).lower()


def _prefect_cli(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "prefect"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=served.env,
    )


def _latest_run(served: Served, deployment: str):  # noqa: ANN202
    with _client_settings(served.api_url):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.sorting import FlowRunSort

        dep = _read_deployment(served, deployment)
        with get_client(sync_client=True) as c:
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

            runs = c.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=20,
            )
    return [r for r in runs if r.state and r.state.is_final()][0]


def test_prefect_cli_run_completes_and_dataset_exists(served: Served) -> None:
    done = _prefect_cli(
        served,
        "deployment",
        "run",
        "synthgen-run/nightly-e2e",
        "--param",
        'overrides=["sampling.seed=99"]',
        "--watch",
        "--watch-timeout",
        "240",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = _latest_run(served, "nightly-e2e")
    assert run.state.type.value == "COMPLETED"
    assert run.parameters["overrides"] == ["sampling.seed=99"]
    assert run.name.startswith("nightly-e2e/nightly-e2e-")  # config name / run id
    table = pads.dataset(served.local_out / "dataset" / "data", format="parquet").to_table()
    assert table.num_rows == 8
    assert published_manifest(served.local_out)["rows"] == 8


def test_bad_override_fails_the_run_with_the_cli_message(served: Served) -> None:
    done = _prefect_cli(
        served,
        "deployment",
        "run",
        "synthgen-run/nightly-e2e",
        "--param",
        'overrides=["shards.size=0"]',
        "--watch",
        "--watch-timeout",
        "240",
    )
    assert done.returncode != 0
    run = _latest_run(served, "nightly-e2e")
    assert run.state.type.value == "FAILED"
    assert "shards.size" in run.state.message
    assert "greater than 0" in run.state.message
    assert run.name.startswith("invalid-config/")

    # the custom-run form's `config` may name another config next to the served one
    unknown = _prefect_cli(
        served,
        "deployment",
        "run",
        "synthgen-run/nightly-e2e",
        "--param",
        "config=nope",
        "--watch",
        "--watch-timeout",
        "240",
    )
    assert unknown.returncode != 0
    run = _latest_run(served, "nightly-e2e")
    assert run.state.type.value == "FAILED"
    assert "no config named 'nope'" in run.state.message
    assert "nightly-e2e" in run.state.message and "s3-e2e" in run.state.message


def _trigger(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_synthgen(), "trigger", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=served.env,
    )


def test_synthgen_trigger_waits_and_prints_state_and_summary(served: Served) -> None:
    # another run id than the module's earlier runs into the same output: replacing their
    # dataset must be asked for (one owner per output)
    done = _trigger(
        served,
        "nightly-e2e",
        "--set",
        "sampling.max_new_tokens=8",
        "--set",
        "output.replace=true",
        "--poll",
        "0.5",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ": COMPLETED" in done.stdout
    assert "rows published | 8" in done.stdout  # the summary artifact, printed
    assert "/runs/flow-run/" in done.stdout

    bad = _trigger(served, "nightly-e2e", "--set", "shards.size=0")
    assert bad.returncode == 2
    assert "shards.size" in bad.stderr and "greater than 0" in bad.stderr
    leak = _trigger(served, "nightly-e2e", "--set", "output.storage_options.secret=x")
    assert leak.returncode == 2 and "credentials may not be passed" in leak.stderr
    missing = _trigger(served, "no-such-config")
    assert missing.returncode == 2 and "synthgen-run/nightly-e2e" in missing.stderr


def test_credentials_from_secret_block_never_leak(served: Served) -> None:
    done = _trigger(served, "s3-e2e", "--poll", "0.5")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fs = s3fs.S3FileSystem(key="k", secret="s", client_kwargs={"endpoint_url": served.s3_endpoint})
    parquet = [p for p in fs.find(f"{served.s3_url}/dataset") if p.endswith(".parquet")]
    assert parquet, "no dataset files in S3"
    assert SENTINEL not in done.stdout + done.stderr

    run = _latest_run(served, "s3-e2e")
    with _client_settings(served.api_url):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            LogFilter,
            LogFilterFlowRunId,
        )

        with get_client(sync_client=True) as c:
            runs = c.read_flow_runs()  # the run and its generate subflow
            logs = c.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs]))
            )
            arts = c.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
    assert logs, "expected run logs to search"
    assert any(a.key and a.key.startswith("synthgen-summary-") for a in arts)
    haystack = json.dumps(
        [
            [r.model_dump(mode="json") for r in runs],
            [log.message for log in logs],
            [a.model_dump(mode="json") for a in arts],
        ]
    )
    assert "secret/e2e-s3" in haystack  # the block's name travels ...
    assert SENTINEL not in haystack  # ... its value does not
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") not in (None, SENTINEL)


def test_s3_run_without_the_block_has_no_credentials(served: Served) -> None:
    """Control: the serving host has no AWS_* credentials, so the block is what made it work."""
    done = _trigger(served, "s3-e2e", "--set", "output.credentials_block=null", "--poll", "0.5")
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert ": FAILED" in done.stdout
    assert "StorageError" in done.stdout
