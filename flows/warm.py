"""The embedded cluster, started before the flow run and warmed while Prefect starts it.

A fresh worker process's first unit used to pay, inside the generate phase, for importing
the units' code (Prefect, pyarrow, s3fs: ~1 s), opening the output store (the S3 client's
set-up and first connection) and loading the engine: 1.9 s of an 11 s generate phase in
`benchmarks/bench_gpu_speed.py --size 8`, seconds to minutes with a real model. Prefect's
own start of the flow run takes a few seconds too (3.7 s there), and it came first: the
task runner started the cluster only once the flow run had started.

So an embedded run (no `cluster.address`) starts its LocalCluster itself, before calling
the flow (`embedded_cluster`), and gives the task runner its address; each worker, as it
joins, warms up in a background thread (`WarmPlugin`, in `flows.warm_plugin`: a module
that imports nothing heavy, for `register_plugin` waits for every worker to import it): it
imports `flows.units` (and `pyarrow.dataset`, with pandas, which the first Parquet read
imports), opens the output store in each of its task threads (fsspec keeps one filesystem
per thread) and, when every unit of the run uses the same model, loads it into the
process's engine cache
(`synthgen.engines.cache`: the first unit then finds it there, or waits on the cache's lock
for the same load). A warm-up that fails only logs a warning: the unit then does the same
work, and fails with its own clear error if it must.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from distributed import Client
from prefect.utilities.importtools import from_qualified_name

from flows.warm_plugin import PLUGIN_NAME, WarmPlugin, warmed
from synthgen.cluster.client import run_on_workers
from synthgen.config.secret_rule import reveal

log = logging.getLogger("synthgen.warm")

__all__ = ["PLUGIN_NAME", "WarmPlugin", "embedded_cluster", "wait_warm", "warm_model"]

WARM_MAX_S = 900.0  # the most the flow waits for the workers' warm-up (model load included)


def warm_model(cfg: Any) -> dict[str, Any] | None:
    """The model every unit of the run uses (a run whose stages use another: None, so that a
    worker does not load a model its units may never use)."""
    if any(getattr(s, "model", None) is not None for s in cfg.stages):
        return None
    return cfg.model.model_dump(mode="json")


@contextlib.contextmanager
def embedded_cluster(cfg: Any, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`kwargs` for the task runner with the embedded cluster started here and warming
    (`address` in place of `cluster_class`), closed when the block ends (the workers' final
    ledger rows are then in); other kwargs (an external cluster) as they are."""
    if "cluster_class" not in kwargs:
        yield kwargs
        return
    make = kwargs["cluster_class"]
    if isinstance(make, str):
        make = from_qualified_name(make)
    rest = {k: v for k, v in kwargs.items() if k not in ("cluster_class", "cluster_kwargs")}
    with make(**kwargs.get("cluster_kwargs", {})) as cluster:
        try:
            with Client(cluster, set_as_default=False) as client:
                plugin = WarmPlugin(reveal(cfg.output), warm_model(cfg), reveal(cfg))
                client.register_plugin(plugin, name=PLUGIN_NAME)
        except Exception as exc:  # a run without the warm-up is slower, not wrong
            log.warning("worker warm-up not started: %s: %s", type(exc).__name__, exc)
        yield {**rest, "address": cluster.scheduler_address}


def wait_warm(client: Any, timeout_s: float = WARM_MAX_S) -> float | None:
    """Wait until every worker of an embedded cluster has warmed up (imports, output store,
    model), at most `timeout_s`; the seconds waited, None where nothing was waited for.

    The generate loop starts after this: a first unit sent to a worker still loading its
    model would wait inside its attempt, its shard deadline running, and the run's first
    tokens/s would count the load. Asked beside the call, with a timeout, so that a worker
    that never answers (frozen) holds nothing up for more than `timeout_s`."""
    started = time.perf_counter()
    try:
        answers = run_on_workers(client, warmed, timeout_s, timeout_s=timeout_s + 5.0)
    except Exception as exc:  # a slower first unit, not a failed run
        log.warning("waiting for the workers' warm-up: %s: %s", type(exc).__name__, exc)
        return None
    if all(a is None or isinstance(a, BaseException) for a in answers.values()):
        return None
    return time.perf_counter() - started
