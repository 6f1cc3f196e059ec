"""Where a run writes (`output`): URI, fsspec options, credentials block, retries, lease."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from synthgen.config.base import Section as _Section
from synthgen.config.hub import HubConfig
from synthgen.config.secret_rule import CredentialMapping


class OutputConfig(_Section):
    """Where the run writes: OUTPUT/runs/RUN_ID/ (shards, ledger, plan, manifests) and
    OUTPUT/dataset/ (a Hugging Face dataset repository: README.md + data/)."""

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
    stage: str | None = Field(
        None,
        description="Multi-stage runs: the stage whose conversation `sft` publishes (columns "
        "`NAME` and `NAME.messages`); unset = the last stage without `parse` (`generate` in a "
        "one-step run).",
    )
    splits: dict[str, float] = Field(
        default_factory=dict,
        description="Held-out splits as name: fraction of the prompts, e.g. `{test: 0.01}`; "
        "a prompt's split is decided by a hash of its prompt id (every sample of a prompt "
        "lands in the same split), the rest is `train`. Each split gets its own files and "
        "card entry.",
    )
    license: str = Field(
        "other",
        description="License id written to the dataset card (Hugging Face license ids, e.g. "
        "`apache-2.0`, `cc-by-4.0`); `other` (the default) says that none was chosen and the "
        "generating model's and the prompt source's terms apply.",
    )
    replace: bool = Field(
        False,
        description="Let this run replace a dataset another run published to the same "
        "output (or replace a dataset with zero rows); unset, such a publish is refused "
        "with both run ids named.",
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

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, v: dict[str, float]) -> dict[str, float]:
        for name, frac in v.items():
            if not _SPLIT_NAME.match(name) or name == "train":
                raise ValueError(
                    f"output.splits: split name {name!r}: lowercase letters, digits and '_' "
                    "(and not 'train', which holds the rest)"
                )
            if not 0.0 < frac < 1.0:
                raise ValueError(f"output.splits.{name}={frac}: a fraction between 0 and 1")
        if sum(v.values()) >= 1.0:
            raise ValueError(
                f"output.splits: fractions sum to {sum(v.values()):g}; leave some for train"
            )
        return v


_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
