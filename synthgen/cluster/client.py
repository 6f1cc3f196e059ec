"""Which Dask cluster a run uses, how it is reached (TLS), and where tasks may run.

A run either starts a LocalCluster sized from config or joins an existing scheduler at
`cluster.address`. Across machines the transport is TLS with a CA-signed client
certificate (`cluster.tls`); plain `tcp://` is accepted only to a loopback host unless
`cluster.allow_insecure` says otherwise. Generate tasks that need a GPU ask for one unit
of the `cluster.gpu_resource` resource, which only GPU workers advertise; a multi-stage
run's stage may ask for its own resources (`stages[i].resources`, `unit_resources`).
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
from distributed import LocalCluster
from distributed.security import Security

from synthgen.cluster import roles
from synthgen.config.transport import transport_problem
from synthgen.errors import ConfigError
from synthgen.io.layout import split_key

if TYPE_CHECKING:
    from synthgen.config import ClusterConfig, ModelConfig, RunConfig

# What a GPU worker started by infra/start-gpu-workers.sh advertises in its environment.
# (Its price is not among it: prices are the operator's, cost.worker_prices.)
ENV_GPU_TYPE = "SYNTHGEN_GPU_TYPE"


def check_cluster(cfg: ClusterConfig) -> None:
    problem = transport_problem(cfg)
    if problem:
        raise ConfigError(problem)


def _readable(key: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist (make it with infra/make-certs.sh)")
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ConfigError(f"{key}: {path} is not readable: {exc.strerror}") from exc
    if b"-----BEGIN" not in head:
        raise ConfigError(f"{key}: {path} is not a PEM file")
    return str(path)


def security_from_config(cfg: ClusterConfig) -> Security | None:
    """distributed `Security` for the client side (the flow), or None without TLS; with TLS,
    certificate roles are enforced in this process too (`synthgen.cluster.roles`)."""
    check_cluster(cfg)
    if cfg.tls is None:
        return None
    # this process reads nothing pickled from a worker certificate's connections
    roles.install()
    return Security(
        tls_ca_file=_readable("cluster.tls.ca_file", cfg.tls.ca_file),
        tls_client_cert=_readable("cluster.tls.cert_file", cfg.tls.cert_file),
        tls_client_key=_readable("cluster.tls.key_file", cfg.tls.key_file),
        require_encryption=True,
    )


def workers_info(client: Any) -> dict[str, dict[str, Any]]:
    """Every worker's entry in the scheduler's identity (address -> info), fetched now.

    Not `client.scheduler_info(n_workers=-1)["workers"]`: that returns the client's cached
    identity, which the client's periodic refresh (every 2 s, asking for no per-worker
    entries) can replace between the fetch and the return, and which a fetch that fails
    with an OSError leaves as it was: an empty `workers` now and then, more often under
    load (a CI run failed a shard with "no worker left" on a 3-worker cluster that way)."""
    return dict(client.sync(client.scheduler.identity, n_workers=-1)["workers"])


def run_on_workers(client: Any, fn: Any, *args: Any, timeout_s: float) -> dict[str, Any]:
    """`client.run(fn, *args, on_error="return")` on every worker (address -> answer, an
    exception for a worker where `fn` raised), given up after `timeout_s` with
    `TimeoutError`. A frozen worker never answers `client.run`, whose own `timeout` bounds
    only the connection: the call is left in a thread of its own, which this call does not
    wait for (it ends when the worker answers or the client closes)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, "synthgen-run-on-workers")
    try:
        call = pool.submit(client.run, fn, *args, on_error="return")
        return dict(call.result(timeout=timeout_s))
    finally:
        pool.shutdown(wait=False)


def task_runner_kwargs(cfg: ClusterConfig) -> dict[str, Any]:
    """Keyword arguments for `prefect_dask.DaskTaskRunner` (address checks and TLS applied)."""
    check_cluster(cfg)
    if cfg.address:
        kwargs: dict[str, Any] = {"address": cfg.address}
        security = security_from_config(cfg)
        if security is not None:
            kwargs["client_kwargs"] = {"security": security}
        return kwargs
    return {
        "cluster_class": "synthgen.cluster.client.local_cluster",
        "cluster_kwargs": {
            "n_workers": cfg.n_workers,
            # a worker's engine calls take turns: the extra threads overlap I/O with them
            "threads_per_worker": max(cfg.threads_per_worker, cfg.overlap),
            "processes": True,
            "memory_limit": cfg.memory_limit,
            "dashboard_address": "127.0.0.1:0",
        },
    }


def generate_needs_gpu(cfg: RunConfig, model: ModelConfig | None = None) -> bool:
    """Whether generate tasks (of `model`, default the run's) must run on a GPU worker
    (`cluster.gpu_tasks`, else the engine)."""
    if cfg.cluster.gpu_tasks is not None:
        return cfg.cluster.gpu_tasks
    return (model or cfg.model).needs_gpu


def generate_resources(cfg: RunConfig, model: ModelConfig | None = None) -> dict[str, float] | None:
    """Dask resources for one generate task (of `model`, default the run's):
    `{gpu_resource: 1/cluster.overlap}` or None (any worker): a GPU worker
    (`--resources GPU=1 --nthreads N`) holds `overlap` shards at once, whose engine calls
    take turns (`synthgen.engines.turns`).

    Use as `with dask.annotate(resources=...)` around the task submission.
    """
    if not generate_needs_gpu(cfg, model):
        return None
    if cfg.cluster.address is None:
        # A LocalCluster's workers share this machine's devices and advertise no resources:
        # a constrained task would wait forever, so none is asked for.
        return None
    return {cfg.cluster.gpu_resource: 1.0 / cfg.cluster.overlap}


def unit_resources(cfg: RunConfig, unit: str | None = None) -> dict[str, float] | None:
    """Dask resources for one unit (`STAGE:SHARD`, or a one-step run's shard id) and for its
    verification, which loads the same engine: the stage's `resources` when set, else
    `generate_resources` for the stage's model (placement by resources: stages on
    different models may run on different workers)."""
    stage_name = split_key(unit)[0] if unit else None
    for stage in cfg.stages:
        if stage.name == stage_name:
            if stage.resources:
                return {k: float(v) for k, v in stage.resources.items()}
            return generate_resources(cfg, stage.model)
    return generate_resources(cfg)


def worker_advertised(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The GPU type this worker process was started with (worker side).

    Set by infra/start-gpu-workers.sh; empty on workers started otherwise. A worker does not
    advertise a price: the price is the operator's (`cost.worker_prices`, `cost.prices`).
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    gpu_type = env.get(ENV_GPU_TYPE, "").strip()
    if gpu_type:
        out["gpu_type"] = gpu_type
    return out


# A worker not heard from for this long is removed by the scheduler (Dask's default: 5
# minutes) and its shards run elsewhere. A LocalCluster's workers are this machine's
# processes: a minute without a heartbeat (sent every 0.5-2 s) is a frozen process, not a
# slow link. infra/start-scheduler.sh sets 120 s for workers on the internet.
LOCAL_WORKER_TTL = "60s"


def local_cluster(**kwargs: Any) -> Any:
    """A LocalCluster whose scheduler keeps no extra tasks queued on busy workers
    (`worker-saturation: 1.0`), so the last shards go to whichever worker frees up first,
    and removes a worker silent for `LOCAL_WORKER_TTL`."""
    settings = {
        "distributed.scheduler.worker-saturation": 1.0,
        "distributed.scheduler.worker-ttl": LOCAL_WORKER_TTL,
    }
    with dask.config.set(settings):
        return LocalCluster(**kwargs)
