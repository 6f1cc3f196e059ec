"""The Dask cluster a run uses (`cluster`, with its TLS files)."""

from __future__ import annotations

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
        None, gt=0, description="A shard attempt running longer than this is abandoned and re-run."
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, description="Preflight: how long to wait for `address` to accept a connection."
    )

    @model_validator(mode="after")
    def _check_transport(self) -> ClusterConfig:

        problem = transport_problem(self)
        if problem:
            raise ValueError(problem)
        return self
