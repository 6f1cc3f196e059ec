"""The Dask cluster a run uses (`cluster`, with its TLS files)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from synthgen.config.base import Section as _Section
from synthgen.config.transport import transport_problem


class TLSConfig(_Section):
    """TLS files for an existing scheduler at tls://host:port (every path must be readable)."""

    ca_file: str = Field(
        description="CA certificate (PEM) that signed the scheduler's and workers' certificates."
    )
    cert_file: str = Field(description="This client's certificate (PEM), signed by the CA.")
    key_file: str = Field(description="Private key (PEM) of cert_file.")


class ClusterConfig(_Section):
    """The Dask cluster: a LocalCluster on this machine, or an existing scheduler."""

    address: str | None = Field(
        None, description="Existing scheduler (tls://host:port). Unset: start a LocalCluster."
    )
    n_workers: PositiveInt = Field(1, description="LocalCluster worker processes.")
    threads_per_worker: PositiveInt = Field(
        1,
        description="LocalCluster threads per worker process.",
    )
    overlap: PositiveInt = Field(
        2,
        description="Shard attempts a worker holds at once: one runs the engine while the "
        "others read their prompts or clean, write and commit theirs (a worker's engine calls "
        "take turns, one at a time). LocalCluster workers get at least this many threads; GPU "
        "tasks ask for 1/overlap of `gpu_resource`. 1: the engine waits for each shard's I/O.",
    )
    memory_limit: str | None = Field("auto", description="LocalCluster per-worker memory limit.")
    tls: TLSConfig | None = None
    allow_insecure: bool = Field(
        False, description="Allow plain tcp:// to a non-loopback scheduler (not recommended)."
    )
    gpu_resource: str = Field(
        "GPU",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Dask resource name GPU workers advertise (--resources GPU=1).",
    )
    gpu_tasks: bool | None = Field(
        None,
        description="Generate tasks ask for one `gpu_resource` on an existing cluster. "
        "Unset: when the engine needs a GPU (vllm, or device cuda).",
    )
    task_retries: int = Field(2, ge=0, description="Retries per shard task (transient failures).")
    retry_delay_s: float = Field(
        2.0,
        ge=0.0,
        description="Delay before a shard task's first retry; doubles per retry, capped at 300 s.",
    )
    shard_timeout_s: float | None = Field(
        None,
        gt=0,
        description="A shard attempt running longer than this is abandoned and re-run. "
        "Unset: each attempt's deadline is derived from its expected time (`deadlines`).",
    )
    deadlines: bool = Field(
        True,
        description="With shard_timeout_s unset: give each shard attempt a deadline of "
        "max(deadline_floor_s, deadline_factor x its expected time) (expected from the "
        "tokens/s measured on this run's committed shards, per worker; before any, from the "
        "engine: the fake engine's simulated times, a conservative tokens/s otherwise); an "
        "attempt past it is re-run on another worker (at most task_retries times).",
    )
    deadline_factor: float = Field(
        3.0, ge=1.0, description="Safety factor on a shard's expected time (`deadlines`)."
    )
    deadline_floor_s: float = Field(
        60.0,
        gt=0,
        description="Shortest derived deadline (`deadlines`): about how long a frozen or "
        "partitioned worker holds a shard before it runs elsewhere.",
    )
    deadline_load_s: float | None = Field(
        None,
        ge=0,
        description="Added to the deadline of a worker's first attempt of the run (its engine "
        "may still be loading). Unset: by engine (fake 0 s, transformers 300 s, vllm 900 s).",
    )
    flag_after_misses: int = Field(
        2,
        ge=0,
        description="A worker whose attempts miss their deadline this many times is flagged: "
        "no new shards for the rest of the run (never the last unflagged worker; 0: never).",
    )
    speculation: bool | None = Field(
        None,
        description="Once no unstarted shard remains, an idle worker runs a backup copy of a "
        "running shard expected to finish much later than the copy would (a straggler); the "
        "first commit wins, the loser's cost is on the ledger as speculation. Unset: on for "
        "GPU engines (vllm, device cuda), off otherwise.",
    )
    speculation_max_fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Most backup copies in a run, as a fraction of its shards (at least one "
        "when speculation is on): the cap on speculation's extra cost.",
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, description="Preflight: how long to wait for `address` to accept a connection."
    )
    untrusted_workers: Literal["auto"] | bool = Field(
        "auto",
        description="Workers hold no storage credentials: each shard attempt gets presigned "
        "URLs for its input (GET) and a staging key (PUT) only, and the flow checks the "
        "staged output (size, sha256, schema, rows, prompt ids) before it commits it. "
        "auto: on when `tls` is set and the output is on an object store (s3://). Needs "
        "an s3:// output. With `verify.enabled` the flow reads the committed shard and sends the "
        "verifier only the sampled records to score (plain data), then judges the scores.",
    )

    @model_validator(mode="after")
    def _check_transport(self) -> ClusterConfig:

        problem = transport_problem(self)
        if problem:
            raise ValueError(problem)
        return self
