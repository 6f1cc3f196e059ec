"""Loading a run config from YAML or a mapping, with overrides; every error names the file
and the dotted key (and the YAML line for syntax errors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from synthgen.config.overrides import apply_overrides, overrides_at
from synthgen.config.run import RunConfig
from synthgen.errors import ConfigError


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    # drop discriminator tags pydantic inserts for unions (e.g. prompts.jsonl.path)
    if len(parts) >= 2 and parts[0] == "prompts" and parts[1] in _SOURCE_TAGS:
        parts.pop(1)
    return ".".join(parts) or "<root>"


_SOURCE_TAGS = {"jsonl", "parquet", "template", "builtin"}


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>"
) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(json.loads(json.dumps(data)), overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _loc(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            if key == "<root>":  # a check across sections names its keys itself
                lines.append(f"{source}: {msg.removeprefix('Value error, ')}")
                continue
            by = overrides_at(key.split("."), overrides)
            where = ", ".join(f"--set {o!r}" for o in by) if by else source
            lines.append(f"{where}: {key}: {msg}")
        raise ConfigError("invalid config\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a YAML run config; errors name the file and key (and YAML line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return config_from_dict(data, overrides, source=str(p))
