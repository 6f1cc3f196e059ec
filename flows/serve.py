"""`synthgen serve`: one Prefect deployment per run config, served by this process.

Each config becomes a deployment of the `synthgen-run` flow named after the config
(`schedule.deployment`, else `name`), with the config's cron schedule and time zone and
default parameters `{"config": <absolute path>, "overrides": schedule.overrides}`.

Why Prefect's `serve` rather than a work pool + worker: a synthgen run's flow only
coordinates; the heavy work runs on the Dask cluster named in the config. One long-lived
`serve` process (a systemd unit) is all the infrastructure a scheduled run needs, with no
work pool to create or worker type to pick. Stopping `serve` pauses its deployments; starting
it again resumes them.

Run this module, or `synthgen serve`, as a program: runs are started in child processes that
re-import the entry module, so the call to `serve` sits behind the `__main__` guard below.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect import serve
from prefect.schedules import Cron

from flows.refs import FLOW_NAME, require_prefect_api
from flows.run import synthgen_run
from synthgen.config import load_config
from synthgen.errors import ConfigError

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment


@dataclass(frozen=True)
class DeploymentSpec:
    """What `serve` registers for one config (pure data, testable without Prefect)."""

    name: str
    config_path: str
    cron: str | None
    timezone: str
    active: bool
    parameters: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def full_name(self) -> str:
        return f"{FLOW_NAME}/{self.name}"


def deployment_spec(path: str | Path) -> DeploymentSpec:
    """Load and validate the config at `path` (errors name the file and key)."""
    cfg = load_config(path)
    sched = cfg.schedule
    abs_path = str(Path(path).resolve())
    name = sched.deployment or cfg.name
    when = f"cron '{sched.cron}' ({sched.timezone})" if sched.cron else "on demand"
    return DeploymentSpec(
        name=name,
        config_path=abs_path,
        cron=sched.cron,
        timezone=sched.timezone,
        active=sched.active,
        parameters={"config": abs_path, "overrides": list(sched.overrides)},
        tags=sorted({"synthgen", f"config:{cfg.name}", *sched.tags}),
        description=(
            f"synthgen run config {abs_path}, {when}. Parameters: `config` (path of a run "
            "config on the serving host, or the name of one in the same directory) and "
            "`overrides` (`key.path=value`, as `--set`)."
        ),
    )


def deployment_specs(paths: Sequence[str | Path]) -> list[DeploymentSpec]:
    if not paths:
        raise ConfigError("synthgen serve: no run configs given")
    specs: dict[str, DeploymentSpec] = {}
    for path in paths:
        spec = deployment_spec(path)
        if spec.name in specs:
            raise ConfigError(
                f"{path}: deployment name {spec.name!r} is already used by "
                f"{specs[spec.name].config_path}; set schedule.deployment or name to tell them apart"
            )
        specs[spec.name] = spec
    return list(specs.values())


def to_runner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    schedules = [Cron(spec.cron, timezone=spec.timezone, active=spec.active)] if spec.cron else None
    deployment = synthgen_run.to_deployment(
        name=spec.name,
        schedules=schedules,
        parameters=spec.parameters,
        tags=spec.tags,
        description=spec.description,
        # one run per config at a time: a scheduled run waits for a still-running one
        concurrency_limit=1,
    )
    return cast("RunnerDeployment", deployment)  # sync call: never a coroutine here


def serve_configs(paths: Sequence[str | Path], *, limit: int | None = None) -> None:
    """Register every config's deployment and serve them until interrupted."""
    require_prefect_api("synthgen serve")
    specs = deployment_specs(paths)
    for spec in specs:
        when = f"cron '{spec.cron}' {spec.timezone}" if spec.cron else "no schedule"
        paused = "" if spec.active else " (paused)"
        print(
            f"synthgen serve: {spec.full_name} <- {spec.config_path} [{when}{paused}]", flush=True
        )
    serve(*[to_runner_deployment(s) for s in specs], limit=limit, print_starting_message=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    p.add_argument("configs", nargs="+", help="run config YAML files")
    args = p.parse_args(argv)
    try:
        serve_configs(args.configs)
    except ConfigError as exc:
        print(f"synthgen serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
