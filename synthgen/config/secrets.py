"""The one secrets policy: what a credential is, where it may go, and how it is kept out
of logs, Prefect parameters and outputs.

What a credential is: one rule, `synthgen.config.secret_rule.is_credential_key`, applied to
the free-form `output.storage_options` (at validation: values become `SecretStr`), to config
dicts (`redact`, `config_secrets`, the override check) and to environment variable names
(`env_secrets`). No typed config field holds a credential; one added later is `SecretStr`.

What may travel as a Prefect parameter (flow-run parameters are stored in plain text by the
Prefect server): no credential, ever. A config dict passed to a (sub)flow is
`stash_secrets(cfg)` (credentials replaced by `***`), overrides pass `check_overrides`, and a
credentials block travels by name only. Real values reach the processes that need them only
as task arguments (`restore_secrets`, over TLS to Dask workers) or worker plugins
(`secret_rule.reveal`), from the environment, or from a Prefect block read where used.

- `SecretMasker` replaces every known secret value (from the config's credentials and from
  credential environment variables) with `***` in every log record this process creates,
  tracebacks included, whichever logger or handler (Prefect's API log handler too).
- `stash_secrets` / `restore_secrets`: the real values stay in this process's memory and are
  put back only in the arguments of tasks, which Prefect does not store.
- `check_overrides` refuses credentials given as `--set` overrides.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from synthgen.config.overrides import nest, parse_override
from synthgen.config.secret_rule import MASK, is_credential_key, reveal
from synthgen.errors import ConfigError

__all__ = [
    "MASK",
    "MASKER",
    "SecretMasker",
    "check_overrides",
    "config_secrets",
    "env_secrets",
    "protect",
    "redact",
    "restore_secrets",
    "stash_secrets",
]

MIN_SECRET_LEN = 6  # shorter values would mask ordinary words in every log line
# The free-form mappings of a config (its `dict[str, Any]` fields): the only places where a
# key can name a credential. In output.storage_options credentials are kept (SecretStr); in
# model.vllm.extra they are refused at validation (and so by the override check too).
FREE_MAPPINGS = (("output", "storage_options"), ("model", "vllm", "extra"))


_FREE = frozenset(FREE_MAPPINGS)
# the paths from the top down to a free mapping (where a credential may sit further down)
_ON_THE_WAY = frozenset(m[:i] for m in FREE_MAPPINGS for i in range(len(m)))


def redact(config: Any, path: tuple[str, ...] = ()) -> Any:
    """A config dict (a JSON dump of `RunConfig`, or a part of one given from the top, as an
    override's mapping) with every credential replaced by `***`: string values under a
    credential key inside a free-form mapping (`FREE_MAPPINGS`), at any depth."""
    inside = any(len(path) > len(m) and path[: len(m)] == m for m in FREE_MAPPINGS)
    return _redact(config, path, inside)


def _redact(node: Any, path: tuple[str, ...], inside: bool) -> Any:
    # `inside`: `path` lies strictly below a free mapping. Only the nodes inside a free
    # mapping or on the way to one need their path; the rest of the config (a template
    # source's topics can be thousands of strings) is copied without one.
    if isinstance(node, dict):
        below = inside or path in _FREE
        if not below and path not in _ON_THE_WAY:
            return _copy(node)
        return {k: _redact(v, (*path, str(k)), below) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v, path, inside) for v in node] if inside else _copy(node)
    if inside and isinstance(node, str) and node and is_credential_key(path[-1]):
        return MASK
    return node


def _copy(node: Any) -> Any:
    """The containers of `node` copied (as `redact` returns them), the leaves shared."""
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _as_dict(config: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return reveal(config) if isinstance(config, BaseModel) else config


def _walk_secrets(original: Any, redacted: Any, out: set[str]) -> None:
    if isinstance(original, dict) and isinstance(redacted, dict):
        for k, v in original.items():
            _walk_secrets(v, redacted.get(k), out)
    elif isinstance(original, list) and isinstance(redacted, list):
        for a, b in zip(original, redacted, strict=False):
            _walk_secrets(a, b, out)
    elif redacted == MASK and original != MASK and original is not None:
        out.add(str(original))


def config_secrets(config: BaseModel | dict[str, Any]) -> set[str]:
    """The credentials of a config (a model, or a dict with real values), by `redact`'s rule."""
    data = _as_dict(config)
    out: set[str] = set()
    # credentials sit only in the free mappings: walk those, not the whole config (this runs
    # in every generate task, and a config's prompt topics can be thousands of strings)
    for mapping in FREE_MAPPINGS:
        node: Any = data
        for key in mapping:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            _walk_secrets(node, redact(node, mapping), out)
    return {s for s in out if len(s) >= MIN_SECRET_LEN}


def env_secrets(environ: dict[str, str] | None = None) -> set[str]:
    """Values of environment variables whose names say they hold credentials."""
    env = os.environ if environ is None else environ
    return {v for k, v in env.items() if is_credential_key(k) and len(v) >= MIN_SECRET_LEN}


class SecretMasker:
    """Masks known secret values in every log record of this process once installed."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self._previous: Any = None

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            new = {v for v in values if v and len(v) >= MIN_SECRET_LEN} - self._values
            if not new:  # nothing new (protect runs in every task): keep the pattern
                return
            self._values.update(new)
            ordered = sorted(self._values, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def mask(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None and text else text

    def _factory(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._previous(*args, **kwargs)
        if self._pattern is None:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is logging's problem, not ours
            return record
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = self.mask(text).rstrip("\n")
        return record

    def install(self) -> None:
        """Wrap the log-record factory (idempotent)."""
        with self._lock:
            if self._previous is not None:
                return
            self._previous = logging.getLogRecordFactory()
            logging.setLogRecordFactory(self._factory)

    def uninstall(self) -> None:
        with self._lock:
            if self._previous is not None:
                logging.setLogRecordFactory(self._previous)
                self._previous = None


MASKER = SecretMasker()


def protect(config: BaseModel | dict[str, Any] | None = None) -> SecretMasker:
    """Install the process-wide masker with the config's and the environment's secrets
    (`config`: the model, or a dict with real values: a `model_dump` shows only `***`)."""
    MASKER.add(env_secrets())
    if config is not None:
        MASKER.add(config_secrets(config))
    MASKER.install()
    return MASKER


# --------------------------------------------------------------------------- flow parameters
_STASH: dict[str, dict[str, Any]] = {}
_STASH_LOCK = threading.Lock()


def _key(config: dict[str, Any]) -> str:
    return f"{config.get('name')}/{config.get('run_id')}"


def stash_secrets(config: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """`config` as a dict fit for Prefect parameters (credentials replaced by `***`); the
    real values are kept in memory for `restore_secrets` in this process. Given a model, its
    credentials are taken with `reveal` (its `model_dump` already shows only `***`)."""
    config = _as_dict(config)
    public = redact(config)
    if public != config:
        with _STASH_LOCK:
            _STASH[_key(config)] = copy.deepcopy(config)
    return public


def restore_secrets(config: dict[str, Any]) -> dict[str, Any]:
    """The full config for a `stash_secrets` copy (unchanged if it carries no placeholders)."""
    if not config_has_placeholders(config):
        return config
    with _STASH_LOCK:
        full = _STASH.get(_key(config))
    if full is None:
        raise ConfigError(
            f"run {config.get('run_id')}: the config reached this process with its credentials "
            "redacted; give them through the environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY) of the processes that run the flow and the workers"
        )
    return full


def config_has_placeholders(config: Any) -> bool:
    if isinstance(config, dict):
        return any(config_has_placeholders(v) for v in config.values())
    if isinstance(config, list):
        return any(config_has_placeholders(v) for v in config)
    return config == MASK


def check_overrides(overrides: Sequence[str], source: str = "--set") -> list[str]:
    """The one override check, for every way a run starts (CLI, trigger, flow parameters):
    each override parses, and none carries a credential (overrides are stored as Prefect
    flow-run parameters). What counts as a credential is the config's own rule (`redact`),
    applied to the override as the nested mapping it sets."""
    for item in overrides:
        path, value = parse_override(item)
        nested = nest(path, value)
        if redact(nested) != nested:
            raise ConfigError(
                f"{source} {'.'.join(path)}=…: credentials may not be passed as run parameters: "
                "overrides are stored as Prefect flow-run parameters; use "
                "output.credentials_block, the environment of the serving host and workers "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE) "
                "or the YAML config file (output.storage_options), which is never "
                "sent to Prefect"
            )
    return list(overrides)
