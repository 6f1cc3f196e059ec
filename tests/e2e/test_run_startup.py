"""One start-up per run (issue 13, point 4): the config is loaded, the overrides checked and
the preflight run once, whether the run enters through the CLI or the flow's parameters."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import flows.run
import synthgen.cluster.preflight
import synthgen.config
import synthgen.config.secrets
from synthgen.cli import main
from tests.helpers import fake_config, write_config


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts every load_config / check_overrides / run_preflight, wherever it is called."""
    seen: Counter[str] = Counter()

    def counting(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name, modules in {
        "load_config": (synthgen.config, flows.run),
        "check_overrides": (synthgen.config.secrets, flows.run),
        "run_preflight": (synthgen.cluster.preflight, flows.run),
    }.items():
        original = getattr(modules[0], name)
        for module in modules:
            monkeypatch.setattr(module, name, counting(name, original))
    return seen


def test_cli_run_starts_up_once(tmp_path, prefect_api, calls) -> None:
    cfg = write_config(tmp_path / "c.yaml", fake_config(str(tmp_path / "out")))
    assert main(["run", cfg, "--set", "shards.size=8"]) == 0
    assert calls == {"load_config": 1, "check_overrides": 1, "run_preflight": 1}
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 1


def test_flow_parameters_run_starts_up_once(tmp_path, prefect_api, calls) -> None:
    cfg = write_config(tmp_path / "c.yaml", fake_config(str(tmp_path / "out")))
    res = flows.run.synthgen_run(config=cfg, overrides=["shards.size=8"])
    assert res["status"] == "complete"
    assert calls == {"load_config": 1, "check_overrides": 1, "run_preflight": 1}
    assert not flows.run._named  # the config loaded for the run's name was taken by the run


def test_deployment_run_starts_up_once(tmp_path, prefect_api, calls) -> None:
    """A run of a served deployment, executed as `python -m prefect.engine` executes it in
    the runner's child process (the flow run read back from the API, its parameters the
    deployment's, `run_flow` with no parameters of its own), here in this process so that
    the loads can be counted: the run's name and the run itself share one load."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import load_flow_run, run_flow

    cfg = write_config(tmp_path / "c.yaml", fake_config(str(tmp_path / "out")))
    deployment = flows.run.synthgen_run.to_deployment(
        name=f"startup-{tmp_path.name}", parameters={"config": cfg, "overrides": ["shards.size=8"]}
    )
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        created = client.create_flow_run_from_deployment(deployment_id)
    flow_run = load_flow_run(flow_run_id=created.id)
    assert flow_run.deployment_id == deployment_id
    res = run_flow(flows.run.synthgen_run, flow_run=flow_run)
    assert res["status"] == "complete"
    assert calls == {"load_config": 1, "check_overrides": 1, "run_preflight": 1}
    assert not flows.run._named
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(created.id).name
    assert name == f"{res['name']}/{res['run_id']}"  # the name came from that one load
