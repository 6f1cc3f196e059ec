"""The one rule for what a credential is, and the type that applies it to the config.

A credential is a string value whose key names one: the key, split into words (at `_`,
`-`, `.` and camelCase humps, case ignored), contains one of `CREDENTIAL_WORDS` (`key`,
`secret`, `token`, `password`, ...). So `key`, `secret`, `token`, `aws_secret_access_key`,
`AWS_ACCESS_KEY_ID` and `HF_TOKEN` are credentials; `max_new_tokens`, `tokenizer` and
`endpoint_url` are not. Numbers are never credentials (they are settings).

The rule is applied where the config holds free-form options for a library: credentials
are refused in `model.vllm.extra` and kept in `output.storage_options` (fsspec/s3fs, typed
`CredentialMapping`), where they become `SecretStr` at validation, dump as `***` (`MASK`) in
every `model_dump`, and are unwrapped only at the fsspec boundary (`synthgen.io.store`) or
by `reveal`, the one deliberate way to serialise them (for task arguments and worker
plugins, never for Prefect parameters; see `synthgen.config.secrets`). The same rule picks
the environment variables whose values the log masker hides. No typed config field is a
credential (file paths and block names are not secrets); one added later must be a
`SecretStr` serialised like `CredentialMapping` (`***`, clear only under `reveal`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, PlainSerializer, SecretStr, SerializationInfo

MASK = "***"
CREDENTIAL_WORDS = frozenset(
    {"key", "apikey", "secret", "token", "password", "passwd", "credential", "credentials"}
)
REVEAL = "reveal_credentials"  # serialisation context flag of `reveal`
_HUMP = re.compile(r"([a-z0-9])([A-Z])")


def is_credential_key(key: str) -> bool:
    """True when `key` (a mapping key or an environment variable name) names a credential."""
    words = re.split(r"[^a-z0-9]+", _HUMP.sub(r"\1_\2", key).lower())
    return any(w in CREDENTIAL_WORDS for w in words)


def wrap_credentials(value: Any, key: str = "") -> Any:
    """`value` with every string under a credential key (any depth) made a `SecretStr`."""
    if isinstance(value, dict):
        return {k: wrap_credentials(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [wrap_credentials(v, key) for v in value]
    if isinstance(value, str) and value and key and is_credential_key(key):
        return SecretStr(value)
    return value


def unwrap_credentials(value: Any) -> Any:
    """`value` with every `SecretStr` replaced by its secret (for fsspec, at the boundary)."""
    if isinstance(value, dict):
        return {k: unwrap_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_credentials(v) for v in value]
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def _mask_credentials(value: Any, reveal: bool) -> Any:
    if isinstance(value, dict):
        return {k: _mask_credentials(v, reveal) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_credentials(v, reveal) for v in value]
    if isinstance(value, SecretStr):
        return value.get_secret_value() if reveal else MASK
    return value


def _serialize(value: dict[str, Any], info: SerializationInfo) -> dict[str, Any]:
    if info.mode_is_json():
        return _mask_credentials(value, bool(info.context and info.context.get(REVEAL)))
    return value  # python mode keeps the SecretStr objects (a round trip stays secret)


CredentialMapping = Annotated[
    dict[str, Any],
    AfterValidator(wrap_credentials),
    PlainSerializer(_serialize, return_type=dict[str, Any], when_used="always"),
]


def reveal(model: BaseModel) -> dict[str, Any]:
    """`model` as JSON-able data with its credentials in clear: for the arguments of tasks and
    worker plugins, which need them. Never a Prefect parameter, log line or output file."""
    return model.model_dump(mode="json", context={REVEAL: True})
