"""What every synthgen flow entry point shares: the flow's name, the Prefect API requirement,
config references as the UI's custom-run form passes them, and the summary artifact's key."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.runtime import deployment

from synthgen.errors import ConfigError

SUMMARY_ARTIFACT_PREFIX = "synthgen-summary"

FLOW_NAME = "synthgen-run"


def require_prefect_api(what: str) -> str:
    """PREFECT_API_URL, or a clear error: without it Prefect silently starts a throw-away server."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        raise ConfigError(
            f"{what}: PREFECT_API_URL is not set; export the Prefect server's API URL, e.g. "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (infra/start-prefect-server.sh)"
        )
    return url


def resolve_config_ref(ref: str, default_path: str | None) -> str:
    """A run's `config` parameter: a path, or the name of a config next to the deployment's own.

    In the UI's custom-run form an operator may type `weekly` instead of a full path: it is
    looked up as `weekly.yaml`/`weekly.yml`, then by the `name:` inside, among the YAML files
    in the directory of the deployment's default config.
    """
    if "/" in ref or ref.endswith((".yaml", ".yml")) or not default_path:
        return ref
    folder = Path(default_path).parent
    for suffix in (".yaml", ".yml"):
        if (folder / f"{ref}{suffix}").is_file():
            return str(folder / f"{ref}{suffix}")
    names: dict[str, Path] = {}
    for candidate in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            data = yaml.safe_load(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            names.setdefault(data["name"], candidate)
    if ref in names:
        return str(names[ref])
    raise ConfigError(
        f"config {ref!r}: no such file, and no config named {ref!r} in {folder} "
        f"(available: {', '.join(sorted(names)) or 'none'})"
    )


def deployment_default_config() -> str | None:
    """The `config` default of the deployment running this flow run (None outside one)."""
    dep_id = deployment.id
    if not dep_id:
        return None
    with get_client(sync_client=True) as client:
        value = (client.read_deployment(dep_id).parameters or {}).get("config")
    return value if isinstance(value, str) else None
