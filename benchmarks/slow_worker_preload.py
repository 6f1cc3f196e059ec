"""Benchmark-only Dask worker preload: this worker's engine runs `SYNTHGEN_BENCH_SLOWDOWN`
times slower (a throttled card, a 3090 among 4090s). Every worker of a benchmark gets the same
preload; only the environment variable differs, so nothing in the run config asks for it.

    SYNTHGEN_BENCH_SLOWDOWN=3 dask worker ADDRESS --preload benchmarks/slow_worker_preload.py

Each `generate` call sleeps (factor - 1) x its own duration after it returns, in slices that
stop when the call is superseded (as the engines' own steps do: synthgen.engines.abort)."""

from __future__ import annotations

import os
import time
from typing import Any

from synthgen.engines import abort
from synthgen.engines.cache import set_engine_wrapper

FACTOR = float(os.environ.get("SYNTHGEN_BENCH_SLOWDOWN", "1") or 1)


class SlowEngine:
    def __init__(self, inner: Any, factor: float) -> None:
        self.inner = inner
        self.factor = factor

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self.inner.generate(*args, **kwargs)
        abort.sleep((self.factor - 1.0) * (time.perf_counter() - t0))  # stops when superseded
        return out

    def __getattr__(self, name: str) -> Any:  # info, score, close: the inner engine's
        return getattr(self.inner, name)


def dask_setup(worker: Any) -> None:
    if FACTOR > 1.0:
        set_engine_wrapper(lambda engine: SlowEngine(engine, FACTOR))
