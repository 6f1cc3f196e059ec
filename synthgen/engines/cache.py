"""Per-process engine cache: a worker process loads its model once and reuses it.

Dask runs every shard task of a worker process in that process, so a module-level cache
is the worker's model for its whole life. `stats()` lets tests prove one load per process.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable

from synthgen.config import ModelConfig
from synthgen.engines.base import InferenceEngine

_LOCK = threading.Lock()
_ENGINES: dict[str, InferenceEngine] = {}
_LOADS: list[dict[str, object]] = []
_WRAPPER: Callable[[InferenceEngine], InferenceEngine] | None = None


def set_engine_wrapper(wrapper: Callable[[InferenceEngine], InferenceEngine] | None) -> None:
    """Extension point: `wrapper(engine)` replaces every engine this process builds from now
    on (`None` removes it; one wrapper at a time, a new one replaces the old). Clears the
    cache, so the next shard gets a freshly built, wrapped engine.

    The wrapped engine must keep the engine contract (`info`, `generate`, `close`, and
    `score` when the inner engine scores). Nothing in synthgen sets one: it is how tests inject
    test-only engine behaviour (a stuck GPU call, a dishonest worker: `tests/support/`) into a
    worker process, through `client.run(...)` or a Dask worker preload module; an operator
    can use it the same way (e.g. instrumentation from a preload)."""
    global _WRAPPER
    clear()
    with _LOCK:
        _WRAPPER = wrapper


def _key(cfg: ModelConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


def build_engine(cfg: ModelConfig) -> InferenceEngine:
    if cfg.engine == "fake":
        from synthgen.engines.fake import FakeEngine

        return FakeEngine(cfg)
    if cfg.engine == "transformers":
        from synthgen.engines.transformers import TransformersEngine

        return TransformersEngine(cfg)
    if cfg.engine == "vllm":
        from synthgen.engines.vllm import VllmEngine

        return VllmEngine(cfg)
    raise ValueError(f"model.engine: unknown engine {cfg.engine!r}")


def get_engine(cfg: ModelConfig) -> InferenceEngine:
    """The engine for `cfg` in this process, loading it on first use."""
    key = _key(cfg)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            started = time.perf_counter()
            engine = build_engine(cfg)
            if _WRAPPER is not None:
                engine = _WRAPPER(engine)
            _ENGINES[key] = engine
            _LOADS.append(
                {
                    "pid": os.getpid(),
                    "engine": cfg.engine,
                    "load_id": engine.info.load_id,
                    "seconds": time.perf_counter() - started,
                    "at": time.time(),
                }
            )
        return engine


def stats() -> dict[str, object]:
    return {"pid": os.getpid(), "loads": list(_LOADS), "cached": len(_ENGINES)}


def clear() -> None:
    with _LOCK:
        for engine in _ENGINES.values():
            engine.close()
        _ENGINES.clear()


def worker_identity() -> tuple[str, str]:
    """(worker address, host name) of the Dask worker running this code, else the process."""
    import socket

    host = socket.gethostname()
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.address), host
    except (ImportError, ValueError):
        return f"local-{os.getpid()}", host
