"""The worker plugin that warms an embedded cluster's workers (`flows.warm`), in a module of
its own that imports nothing heavy.

`Client.register_plugin` returns once every worker has unpickled the plugin and run its
`setup`, and a worker unpickles it on its event loop by importing the plugin's module. When
the plugin lived in `flows.warm`, that import pulled in Prefect, pyarrow and s3fs through
the module's own imports: the flow's process waited 2-7 s (more on a busy machine) for the
warm-up's imports before it could even start the flow run, which is the wait the warm-up
was meant to hide. Here the module imports only what a Dask worker has already loaded; the
units' code is imported in the warm-up's thread (`WarmPlugin.warm`), while Prefect starts
the flow run."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import threading
import time
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger("synthgen.warm")

PLUGIN_NAME = "synthgen-warm"
WARM_WAIT_S = 10.0  # the most a warm-up holds a worker thread waiting for the others
WARM_POLL_S = 0.02  # how often `warmed` looks whether the warm-up ended


class WarmPlugin(WorkerPlugin):
    """Warms each worker once, in a daemon thread (the worker joins the cluster at once):
    imports the units' code (`flows.units`, and `pyarrow.dataset` with pandas, which the first
    Parquet read imports), opens the output store in each of its task threads (fsspec keeps
    one filesystem per thread) and, when `model` is set, loads it into the process's engine
    cache. `output`: the run's OutputConfig as JSON, credentials in clear (the embedded
    cluster's workers are this machine's processes, which the units' configs reach the same
    way); `model`: the ModelConfig JSON to load, or None; `config`: the run's config, which
    each unit validates (the first validation in a process costs 0.1-0.3 s). A warm-up that fails only logs a
    warning: the first unit then does the same work, and fails with its own clear error."""

    idempotent = True

    def __init__(
        self,
        output: dict[str, Any],
        model: dict[str, Any] | None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.output = output
        self.model = model
        self.config = config
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

            from synthgen.config import ModelConfig, RunConfig
            from synthgen.engines.cache import get_engine

            # the units' module (by name: it imports the library, this module must not)
            units = importlib.import_module("flows.units")
            units.credentials_resolver({"output": self.output})
            if self.config is not None:  # the first validation builds what later ones reuse
                RunConfig.model_validate(self.config)

            if executor is not None and threads > 0:
                # fsspec keeps a filesystem per thread: open the store in every thread that
                # will run units (each holds one of these until all have started)
                barrier = threading.Barrier(threads, timeout=WARM_WAIT_S)
                opened = [executor.submit(self._open_store, barrier) for _ in range(threads)]
            else:
                opened = []
            if self.model is not None:
                get_engine(ModelConfig.model_validate(self.model))
            # the warm-up ends when the task threads are free again (`warmed` waits for it)
            concurrent.futures.wait(opened, timeout=WARM_WAIT_S)
        except Exception as exc:  # the first unit does it again, with its own error
            log.warning("worker warm-up failed: %s: %s", type(exc).__name__, exc)

    def _open_store(self, barrier: threading.Barrier) -> None:
        try:
            from synthgen.config import OutputConfig
            from synthgen.io.store import Store

            store = Store(OutputConfig.model_validate(self.output))
            store.exists(store.root)  # the client's set-up and its first connection
            barrier.wait()
        except threading.BrokenBarrierError:  # fewer threads than counted: no matter
            pass
        except Exception as exc:
            log.warning("worker warm-up (output store) failed: %s: %s", type(exc).__name__, exc)


async def warmed(timeout_s: float, dask_worker: Any = None) -> float | None:
    """Run on a worker (`Client.run`, on its event loop, which this does not block): wait up
    to `timeout_s` for the worker's warm-up to end; the seconds waited, or None where no
    warm-up was started (not an embedded cluster's worker)."""
    plugin = getattr(dask_worker, "plugins", {}).get(PLUGIN_NAME)
    thread = getattr(plugin, "thread", None)
    if thread is None:
        return None
    start = time.monotonic()
    while thread.is_alive() and time.monotonic() - start < timeout_s:
        await asyncio.sleep(WARM_POLL_S)
    return time.monotonic() - start
