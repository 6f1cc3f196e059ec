"""Test hook: make the fake engine's guided attempts come out invalid (word salad), to drive
validate-and-resample and `schema_invalid` through a run. Installed like the other test-only
engine behaviours, through the engine cache's one extension point
(`synthgen.engines.cache.set_engine_wrapper`), e.g. on a Dask worker with
`client.run(install_invalid_guided, 3)`."""

from __future__ import annotations

from synthgen.engines.base import InferenceEngine
from synthgen.engines.cache import set_engine_wrapper


def _hook(attempts: int):
    def wrap(engine: InferenceEngine) -> InferenceEngine:
        if engine.info.engine != "fake":
            raise ValueError(f"install_invalid_guided: engine {engine.info.engine!r} is not fake")
        engine.invalid_first_attempts = attempts  # type: ignore[attr-defined]
        return engine

    return wrap


def install_invalid_guided(attempts: int) -> int:
    """From now on, the first `attempts` tries of every guided sample of this process's fake
    engines are invalid (>= guided.max_attempts: every guided sample is schema_invalid)."""
    set_engine_wrapper(_hook(attempts))
    return attempts


def remove() -> None:
    set_engine_wrapper(None)
