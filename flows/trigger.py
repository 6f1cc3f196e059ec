"""`synthgen trigger NAME [--set k=v ...]`: start a served deployment's run, wait, report.

The deployment's default overrides come first, then the `--set` ones (later wins, as on the
command line). Overrides are checked here before anything is submitted: malformed ones and
ones that would put a credential into the run's parameters are refused. When the config file
is readable from this shell the whole config is validated too, with the CLI's messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_UI_URL

from flows.refs import FLOW_NAME, SUMMARY_ARTIFACT_PREFIX, require_prefect_api
from synthgen.config import load_config
from synthgen.config.secrets import check_overrides
from synthgen.errors import ConfigError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun


@dataclass
class TriggerResult:
    flow_run_id: UUID
    flow_run_name: str
    state: str  # COMPLETED | FAILED | CRASHED | CANCELLED | ... (not final after a timeout)
    final: bool
    message: str
    summary: str | None
    ui_url: str | None

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"

    def render(self) -> str:
        lines = [f"flow run {self.flow_run_name} ({self.flow_run_id}): {self.state}"]
        if self.ui_url:
            lines.append(f"  {self.ui_url}")
        if not self.final:
            lines.append("  still running (timeout reached); it continues on the server")
        if self.message and not self.ok:
            lines.append(f"  {self.message}")
        if self.summary:
            lines += ["", self.summary]
        return "\n".join(lines)


def deployment_name(name: str) -> str:
    return name if "/" in name else f"{FLOW_NAME}/{name}"


def _summary_for(client: Any, flow_run_id: UUID) -> str | None:

    artifacts = client.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )
    for art in artifacts:
        if (art.key or "").startswith(SUMMARY_ARTIFACT_PREFIX) and isinstance(art.data, str):
            return art.data
    return None


def _ui_url(flow_run_id: UUID) -> str | None:

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def trigger(
    name: str,
    overrides: Sequence[str] = (),
    *,
    timeout: float | None = None,
    poll_interval: float = 2.0,
) -> TriggerResult:
    """Create a run of deployment `name` with extra overrides; wait up to `timeout` seconds."""
    require_prefect_api("synthgen trigger")
    check_overrides(overrides)

    full = deployment_name(name)
    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(full)
        except ObjectNotFound:
            known = sorted(
                f"{FLOW_NAME}/{d.name}"
                for d in client.read_deployments()
                if d.name  # every synthgen deployment belongs to FLOW_NAME
            )
            raise ConfigError(
                f"no deployment {full!r} on {require_prefect_api('synthgen trigger')}; "
                f"known: {', '.join(known) or 'none (is `synthgen serve` running?)'}"
            ) from None
        params: dict[str, Any] = dict(dep.parameters or {})
        params["overrides"] = [
            *check_overrides(params.get("overrides") or [], "default"),
            *overrides,
        ]
        config_path = params.get("config")
        if isinstance(config_path, str) and Path(config_path).is_file():
            load_config(config_path, params["overrides"])  # same messages as `synthgen run`
        started = run_deployment(
            full,
            parameters=params,
            timeout=timeout,
            poll_interval=poll_interval,
            as_subflow=False,
        )
        run = client.read_flow_run(cast("FlowRun", started).id)  # sync call: not a coroutine
        state = run.state
        final = bool(state and state.is_final())
        return TriggerResult(
            flow_run_id=run.id,
            flow_run_name=run.name,
            state=state.type.value if state else "UNKNOWN",
            final=final,
            message=(state.message or "") if state else "",
            summary=_summary_for(client, run.id) if final else None,
            ui_url=_ui_url(run.id),
        )
