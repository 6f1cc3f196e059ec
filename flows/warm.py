"""The embedded cluster, started before the flow run and warmed while Prefect starts it.

A fresh worker process's first unit used to pay, inside the generate phase, for importing
the units' code (Prefect, pyarrow, s3fs: ~1 s), opening the output store (the S3 client's
set-up and first connection) and loading the engine: 1.9 s of an 11 s generate phase in
`benchmarks/bench_gpu_speed.py --size 8`, seconds to minutes with a real model. Prefect's
own start of the flow run takes a few seconds too (3.7 s there), and it came first: the
task runner started the cluster only once the flow run had started.

So an embedded run (no `cluster.address`) starts its LocalCluster itself, before calling
the flow (`embedded_cluster`), and gives the task runner its address; each worker, as it
joins, warms up in a background thread (`WarmPlugin`): it imports `flows.run` (and
`pyarrow.dataset`, with pandas, which the first Parquet read imports), opens the output
store in each of its task threads (fsspec keeps one filesystem per thread) and, when every
unit of the run uses the same model, loads it into the process's engine cache
(`synthgen.engines.cache`: the first unit then finds it there, or waits on the cache's lock
for the same load). A warm-up that fails only logs a warning: the unit then does the same
work, and fails with its own clear error if it must.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin
from prefect.utilities.importtools import from_qualified_name

from synthgen.config import ModelConfig, OutputConfig
from synthgen.config.secret_rule import reveal
from synthgen.engines.cache import get_engine
from synthgen.io.store import Store

log = logging.getLogger("synthgen.warm")

PLUGIN_NAME = "synthgen-warm"


class WarmPlugin(WorkerPlugin):
    """Warms each worker once, in a daemon thread (the worker joins the cluster at once).
    `output`: the run's OutputConfig as JSON, credentials in clear (the embedded cluster's
    workers are this machine's processes, which the units' configs reach the same way);
    `model`: the ModelConfig JSON to load, or None."""

    idempotent = True

    def __init__(self, output: dict[str, Any], model: dict[str, Any] | None) -> None:
        self.output = output
        self.model = model
        self.thread: threading.Thread | None = None

    def setup(self, worker: Any) -> None:
        executor = getattr(worker, "executors", {}).get("default")
        threads = int(getattr(getattr(worker, "state", None), "nthreads", 0) or 0)
        self.thread = threading.Thread(
            target=self.warm, args=(executor, threads), name="synthgen-warm", daemon=True
        )
        self.thread.start()

    def warm(self, executor: Any, threads: int) -> None:
        try:
            import pyarrow.dataset  # noqa: F401 - pq.read_table's first call imports it (pandas)

            # the units' module, by name: flows.run imports this module to start the cluster
            importlib.import_module("flows.run")

            if executor is not None and threads > 0:
                # fsspec keeps a filesystem per thread: open the store in every thread that
                # will run units (each holds one of these until all have started)
                barrier = threading.Barrier(threads, timeout=WARM_WAIT_S)
                for _ in range(threads):
                    executor.submit(self._open_store, barrier)
            if self.model is not None:
                get_engine(ModelConfig.model_validate(self.model))
        except Exception as exc:  # the first unit does it again, with its own error
            log.warning("worker warm-up failed: %s: %s", type(exc).__name__, exc)

    def _open_store(self, barrier: threading.Barrier) -> None:
        try:
            store = Store(OutputConfig.model_validate(self.output))
            store.exists(store.root)  # the client's set-up and its first connection
            barrier.wait()
        except threading.BrokenBarrierError:  # fewer threads than counted: no matter
            pass
        except Exception as exc:
            log.warning("worker warm-up (output store) failed: %s: %s", type(exc).__name__, exc)


WARM_WAIT_S = 10.0  # the most a warm-up holds a worker thread waiting for the others


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
                plugin = WarmPlugin(reveal(cfg.output), warm_model(cfg))
                client.register_plugin(plugin, name=PLUGIN_NAME)
        except Exception as exc:  # a run without the warm-up is slower, not wrong
            log.warning("worker warm-up not started: %s: %s", type(exc).__name__, exc)
        yield {**rest, "address": cluster.scheduler_address}
