"""Object-store credentials from a Prefect block, resolved where they are used.

`output.credentials_block` names a block as `TYPE/NAME`:

- `aws-credentials/NAME`: a prefect-aws `AwsCredentials` block (access key id, secret key,
  session token, `aws_client_parameters.endpoint_url`). Read as a raw block document, so the
  prefect-aws package need not be installed where synthgen runs.
- `secret/NAME`: a Prefect `Secret` whose value is a JSON object with either the AWS names
  above or s3fs's `key`, `secret`, `token`, `endpoint_url`.

The run's parameters and the config passed between tasks carry only the block's *name*;
each process that opens a `synthgen.io.store.Store` (the flow, every Dask worker running a
synthgen task: importing flows.run imports this module, which installs the resolver)
resolves the block itself. Values never reach parameters, logs,
artifacts or manifests (those use `RunConfig.public_dict()`, which redacts them anyway).
Without a block, s3fs reads the usual AWS_* environment variables.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import TYPE_CHECKING, Any

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from synthgen.config.secrets import MASKER
from synthgen.errors import ConfigError
from synthgen.io import store as storage

if TYPE_CHECKING:
    from synthgen.config import OutputConfig

BLOCK_TYPES = ("aws-credentials", "secret")
_CACHE_TTL_S = 300.0
_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_lock = threading.Lock()


def parse_block_ref(ref: str) -> tuple[str, str]:
    slug, sep, name = ref.partition("/")
    if not sep or slug not in BLOCK_TYPES or not name:
        raise ConfigError(
            f"output.credentials_block {ref!r}: expected 'aws-credentials/NAME' or 'secret/NAME'"
        )
    return slug, name


def storage_options_from_block_data(slug: str, data: dict[str, Any], ref: str) -> dict[str, Any]:
    """Map a block document's data to s3fs storage options (pure)."""
    if slug == "secret":
        value = data.get("value")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(
                    f"output.credentials_block {ref!r}: the secret's value must be a JSON object "
                    "with key/secret (or aws_access_key_id/aws_secret_access_key)"
                ) from None
        if not isinstance(value, dict):
            raise ConfigError(
                f"output.credentials_block {ref!r}: the secret's value is not a JSON object"
            )
        data = value
    params = data.get("aws_client_parameters") or {}
    key = data.get("aws_access_key_id") or data.get("key")
    secret = data.get("aws_secret_access_key") or data.get("secret")
    if not key or not secret:
        raise ConfigError(
            f"output.credentials_block {ref!r}: no access key id and secret access key in the block"
        )
    out: dict[str, Any] = {"key": str(key), "secret": str(secret)}
    token = data.get("aws_session_token") or data.get("token")
    if token:
        out["token"] = str(token)
    client_kwargs: dict[str, Any] = {}
    endpoint = params.get("endpoint_url") or data.get("endpoint_url")
    if endpoint:
        client_kwargs["endpoint_url"] = str(endpoint)
    if data.get("region_name"):
        client_kwargs["region_name"] = str(data["region_name"])
    if client_kwargs:
        out["client_kwargs"] = client_kwargs
    return out


def load_block_storage_options(ref: str) -> dict[str, Any]:
    """Storage options from the block `ref` (cached per process for a few minutes)."""
    slug, name = parse_block_ref(ref)
    now = time.monotonic()
    with _lock:
        hit = _cache.get(ref)
        if hit and now - hit[0] < _CACHE_TTL_S:
            return copy.deepcopy(hit[1])
    with get_client(sync_client=True) as client:
        try:
            doc = client.read_block_document_by_name(
                name, block_type_slug=slug, include_secrets=True
            )
        except ObjectNotFound:
            raise ConfigError(
                f"output.credentials_block {ref!r}: no such block on the Prefect server"
            ) from None
    opts = storage_options_from_block_data(slug, dict(doc.data or {}), ref)
    with _lock:
        _cache[ref] = (now, opts)
    return copy.deepcopy(opts)


def merge_storage_options(base: dict[str, Any], creds: dict[str, Any]) -> dict[str, Any]:
    """Credentials fill what the config leaves unset; explicit config values win."""
    out = copy.deepcopy(base)
    for k, v in creds.items():
        if k == "client_kwargs":
            ck = out.setdefault("client_kwargs", {})
            for ck_key, ck_val in v.items():
                ck.setdefault(ck_key, ck_val)
        else:
            out.setdefault(k, v)
    return out


def resolve_output_options(output: OutputConfig) -> dict[str, Any]:
    """`output.storage_options` plus the block's credentials (for synthgen.io.store.Store)."""
    if not output.credentials_block:
        return dict(output.storage_options)
    creds = load_block_storage_options(output.credentials_block)
    if "endpoint_url" in output.storage_options:  # the config's own endpoint wins
        creds.get("client_kwargs", {}).pop("endpoint_url", None)
    return merge_storage_options(output.storage_options, creds)


def load_secret_token(ref: str) -> str:
    """The string held by the Prefect Secret block `ref` ('secret/NAME'), e.g. a Hub token
    (`output.hub.token_block`); masked in this process's logs from here on."""

    slug, _, name = ref.partition("/")
    if slug != "secret" or not name:
        raise ConfigError(f"output.hub.token_block {ref!r}: expected 'secret/NAME'")
    with get_client(sync_client=True) as client:
        try:
            doc = client.read_block_document_by_name(
                name, block_type_slug="secret", include_secrets=True
            )
        except ObjectNotFound:
            raise ConfigError(
                f"output.hub.token_block {ref!r}: no such block on the Prefect server"
            ) from None
    value = (doc.data or {}).get("value")
    if isinstance(value, dict):  # a JSON secret: {"token": ...}
        value = value.get("token") or value.get("HF_TOKEN")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"output.hub.token_block {ref!r}: the secret holds no token string")
    MASKER.add([value.strip()])
    return value.strip()


def install() -> None:
    """Let every `Store` in this process resolve `output.credentials_block` (import-time)."""
    storage.set_credentials_resolver(resolve_output_options)


install()
