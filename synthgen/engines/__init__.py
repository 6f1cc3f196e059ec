"""Inference engines behind one contract (`base.InferenceEngine`), cached per process."""

from synthgen.engines.base import (
    Completion,
    EngineInfo,
    GenRequest,
    InferenceEngine,
    prompt_seed,
)
from synthgen.engines.cache import build_engine, get_engine

__all__ = [
    "Completion",
    "EngineInfo",
    "GenRequest",
    "InferenceEngine",
    "build_engine",
    "get_engine",
    "prompt_seed",
]
