"""`--set key.path=value` overrides: parsed as YAML and applied to the raw mapping before
validation, so they are checked exactly like the YAML file."""

from __future__ import annotations

from typing import Any

import yaml

from synthgen.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], parsed YAML value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key (expected key.path=value)")
    path = [p.strip() for p in key.strip().split(".")]
    if any(not p for p in path):
        raise ConfigError(
            f"--set {item!r}: malformed key {key.strip()!r} (an empty part between dots; "
            "expected key.path=value)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def nest(path: list[str], value: Any) -> dict[str, Any]:
    """(['a', 'b'], 1) -> {'a': {'b': 1}}: the mapping one override sets."""
    out: dict[str, Any] = {}
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return data


def overrides_at(loc: list[str], overrides: list[str] | None) -> list[str]:
    """The overrides that set the key at `loc` or a key inside or above it (to name them in
    a validation error)."""
    out = []
    for item in overrides or []:
        try:
            path, _ = parse_override(item)
        except ConfigError:
            continue
        n = min(len(path), len(loc))
        if n and path[:n] == loc[:n]:
            out.append(item)
    return out
