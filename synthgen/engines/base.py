"""The inference-engine contract every engine (fake, transformers, vLLM) implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from synthgen.config import SamplingConfig
from synthgen.config.stages import GuidedConfig

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
    # set when finish_reason == "rejected" (e.g. prompt too long), and on a guided sample
    # that still fails its constraint ("schema_invalid: ...", finish_reason unchanged)
    error: str | None = None
    sample_index: int = 0  # which of the request's `sampling.n` samples (seed: sample_seed)
    attempts: int = 1  # guided sampling without constrained decoding: tries it took
    # the sampled token ids (stop token included), where the engine has them: verification
    # of a guided stage scores these, since re-tokenising the text gives other tokens
    token_ids: list[int] | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """Teacher-forced scoring of an existing completion (verification, issue 8)."""

    prompt_id: str
    messages: list[dict[str, str]]
    completion: str
    # the completion's sampled token ids (Completion.token_ids), scored instead of the
    # re-tokenised text when given (required to verify a guided stage on vLLM)
    completion_ids: list[int] | None = None


@dataclass
class Score:
    """Teacher-forced score of one completion under the engine's model.

    `expected_logprob` / `logprob_std`: the mean token log-prob an honest sampler with the
    given sampling parameters would get on average at these positions, and the standard
    deviation of that mean (None when the engine cannot compute them). `outside_fraction`:
    fraction of tokens the claimed sampling could not have produced (outside top-k/top-p).
    """

    prompt_id: str
    mean_logprob: float
    topk_fraction: float
    tokens: int
    expected_logprob: float | None = None
    logprob_std: float | None = None
    outside_fraction: float | None = None


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
        self,
        requests: Sequence[GenRequest],
        sampling: SamplingConfig,
        guided: GuidedConfig | None = None,
    ) -> list[Completion]:
        """Complete every request `sampling.n` times: `len(requests) * n` Completions,
        request-major (request 0's samples 0..n-1, then request 1's, ...), each with its
        `sample_index`. Sample i of a request uses `sample_seed(request.seed, i)`, so it is
        stable across runs and independent of its batch-mates; with n == 1 that is the
        request's own seed.

        Token accounting: every sample's `completion_tokens` are its own; `prompt_tokens`
        is the prompt's length on sample 0 and 0 on samples 1..n-1 (one prompt, one prefill
        billed once, whether or not the engine shares it), so the caller's sums stay honest.

        `guided`: every sample satisfies the constraint (`synthgen.engines.guided.validate`)
        or carries `error` starting with "schema_invalid: " (its finish_reason unchanged).

        A per-prompt problem (an over-long prompt) yields finish_reason="rejected" with
        `error` set, for each of its samples, never an exception for the whole batch.
        """
        ...

    def close(self) -> None: ...


@runtime_checkable
class ScoringEngine(Protocol):
    """An engine that can also score given completions (verification, issue 8)."""

    info: EngineInfo

    def score(
        self,
        requests: Sequence[ScoreRequest],
        sampling: SamplingConfig | None = None,
        top_k: int = 10,
        guided: GuidedConfig | None = None,
    ) -> list[Score]:
        """Teacher-forced (prefill only) score per request, same chat template as generate.

        With `sampling`, also the expected log-prob under that sampling distribution; with
        `guided`, under the distribution this engine samples from when generating under
        that constraint (docs/verify.md, "Guided stages").
        """
        ...


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """The per-prompt seed: stable across runs, shards and workers; independent of batching."""
    import hashlib

    digest = hashlib.sha256(f"{base_seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a request seeded `seed`: `seed + index`, what vLLM gives
    the i-th child of one seeded request with n > 1, so every engine agrees with it."""
    return seed + index


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of retry `attempt` (>= 1) of a guided sample seeded `seed` (engines that
    validate and resample); attempt 0 is the sample's own seed."""
    if attempt == 0:
        return seed
    return prompt_seed(seed, f"guided-attempt-{attempt}")


def sampling_dict(sampling: SamplingConfig) -> dict[str, Any]:
    return sampling.model_dump(mode="json")
