"""Per-process engine cache: a worker process loads its model once and reuses it.

Dask runs every shard task of a worker process in that process, so a module-level cache
is the worker's model for its whole life. `stats()` lets tests prove one load per process.
"""

from __future__ import annotations

import json
import os
import threading
import time

from synthgen.config import ModelConfig
from synthgen.engines.base import InferenceEngine

_LOCK = threading.Lock()
_ENGINES: dict[str, InferenceEngine] = {}
_LOADS: list[dict[str, object]] = []


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
