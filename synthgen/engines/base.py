"""The inference-engine contract every engine (fake, transformers, vLLM) implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from synthgen.config import SamplingConfig

FinishReason = Literal["stop", "length", "rejected"]


@dataclass(frozen=True)
class GenRequest:
    """One prompt to complete. `messages` is a chat; `seed` is this prompt's own seed."""

    prompt_id: str
    messages: list[dict[str, str]]
    seed: int


@dataclass
class Completion:
    prompt_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    error: str | None = None  # set when finish_reason == "rejected" (e.g. prompt too long)


@dataclass(frozen=True)
class ScoreRequest:
    """Teacher-forced scoring of an existing completion (verification, issue 8)."""

    prompt_id: str
    messages: list[dict[str, str]]
    completion: str


@dataclass
class Score:
    prompt_id: str
    mean_logprob: float
    topk_fraction: float
    tokens: int


@dataclass
class EngineInfo:
    engine: str  # "transformers" | "vllm" | "fake"
    model: str  # model name or path, as recorded in provenance
    device: str  # detected device name, e.g. "NVIDIA GeForce RTX 4090" or "cpu: AMD EPYC (2 cores)"
    load_seconds: float = 0.0
    load_id: str = ""  # unique per load: shards sharing it ran on the same loaded engine
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class InferenceEngine(Protocol):
    info: EngineInfo

    def generate(
        self, requests: Sequence[GenRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        """Complete every request; one Completion per request, in the same order.

        A per-prompt problem (an over-long prompt) yields finish_reason="rejected" with
        `error` set, never an exception for the whole batch.
        """
        ...

    def close(self) -> None: ...


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """The per-prompt seed: stable across runs, shards and workers; independent of batching."""
    import hashlib

    digest = hashlib.sha256(f"{base_seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def sampling_dict(sampling: SamplingConfig) -> dict[str, Any]:
    return sampling.model_dump(mode="json")
