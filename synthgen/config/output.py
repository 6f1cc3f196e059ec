"""Where a run writes (`output`): URI, fsspec options, credentials block, retries, lease."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from synthgen.config.base import Section as _Section
from synthgen.config.hub import HubConfig
from synthgen.config.secret_rule import CredentialMapping


class OutputConfig(_Section):
    """Where the run writes: OUTPUT/runs/RUN_ID/ (shards, ledger, plan) and OUTPUT/dataset/."""

    uri: str = Field("./data", description="Local path or s3://bucket/prefix.")
    storage_options: CredentialMapping = Field(
        default_factory=dict,
        description="fsspec options (endpoint_url, key, secret, client_kwargs...). Values under "
        "credential keys (key, secret, token, ...) are kept secret: `***` in every dump, log and "
        "manifest. Credentials may also come from the AWS_* environment variables.",
    )
    format: Literal["raw", "sft", "dpo"] = Field(
        "raw",
        description="Published columns: raw (every record with its provenance), sft (a "
        "`messages` conversation with the assistant turn, TRL's conversational format), dpo "
        "(`prompt`, `chosen`, `rejected`; needs `select.strategy: pairs`).",
    )
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field(
        "zstd",
        description="Parquet compression codec of the shard files.",
    )
    credentials_block: str | None = Field(
        None,
        pattern=r"^(aws-credentials|secret)/[a-z0-9][a-z0-9-]*$",
        description="Prefect block holding the object-store credentials "
        "('aws-credentials/NAME' or 'secret/NAME'); resolved by each process that writes, "
        "never passed as a parameter.",
    )
    retry_attempts: PositiveInt = Field(
        8, description="Tries per storage operation on transient errors (connection, 5xx)."
    )
    retry_base_delay_s: float = Field(0.25, gt=0.0, description="First backoff delay.")
    retry_max_delay_s: float = Field(8.0, gt=0.0, description="Cap of the exponential backoff.")
    lease_ttl_s: float = Field(
        60.0,
        ge=1.0,
        description="Run lease expiry (renewed every third of it while the flow runs); a crashed "
        "flow's lease can be taken over after this (at once on the same host).",
    )
    hub: HubConfig | None = Field(
        None,
        description="Push OUTPUT/dataset/ to the Hugging Face Hub as one commit when a run "
        "completes (`synthgen publish OUTPUT --hub ORG/NAME` does it by hand).",
    )
