"""A small stand-in for the parts of vLLM's offline API the engine uses (no vllm install).

Shapes follow vLLM's documented API: `LLM(**engine_args)`, `LLM.get_tokenizer()`,
`LLM.generate(prompts: list[TokensPrompt], sampling_params: list[SamplingParams],
use_tqdm=...) -> list[RequestOutput]`, `RequestOutput.prompt_token_ids`,
`RequestOutput.outputs[0].text / token_ids / finish_reason`. Unknown keyword arguments
raise TypeError, as the real classes do, so a misspelt argument fails the tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

# A subset of vllm.LLM / EngineArgs keyword arguments (vLLM >= 0.8).
LLM_ARGS = {
    "model",
    "tokenizer",
    "dtype",
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "tensor_parallel_size",
    "quantization",
    "seed",
    "enforce_eager",
    "trust_remote_code",
    "swap_space",
    "kv_cache_dtype",
    "enable_prefix_caching",
    "download_dir",
    "kv_cache_memory_bytes",
    "enable_chunked_prefill",
    "compilation_config",
    "max_logprobs",
}


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = 16
    seed: int | None = None
    logprobs: int | None = None
    structured_outputs: StructuredOutputsParams | None = None


@dataclass
class StructuredOutputsParams:
    """vllm.sampling_params.StructuredOutputsParams: exactly one constraint."""

    json: Any = None
    regex: str | None = None
    choice: list[str] | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.json, self.regex, self.choice)) != 1:
            raise ValueError("You must use exactly one kind of structured outputs constraint")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class Tokenizer:
    """Word-level toy tokenizer with a chat template marker: one token per word."""

    chat_template = "{% toy %}"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def _id(self, word: str) -> int:
        return self.vocab.setdefault(word, len(self.vocab) + 1)

    def encode(self, text: str) -> list[int]:
        return [self._id(w) for w in text.split()]

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool, tokenize: bool
    ) -> list[int]:
        if not (add_generation_prompt and tokenize):
            raise TypeError("the engine must ask for token ids with a generation prompt")
        ids: list[int] = []
        for m in messages:
            ids += [self._id(f"<{m['role']}>")] + self.encode(m["content"])
        return ids + [self._id("<assistant>")]


class Engine:
    """`LLM.llm_engine`: the public methods vLLM's offline loop (and synthgen's abort) use."""

    def __init__(self, max_model_len: int) -> None:
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        self.unfinished: list[str] = []
        self.aborted: list[str] = []

    def add_request(self, request_id: str, prompt: Any, params: Any, **kw: Any) -> str:
        self.unfinished.append(request_id)
        return request_id

    def step(self) -> list[Any]:
        return []

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        self.aborted += [r for r in request_ids if r in self.unfinished]
        self.unfinished = [r for r in self.unfinished if r not in request_ids]


class LLM:
    instances: list[LLM] = []

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - LLM_ARGS
        if unknown:
            raise TypeError(f"LLM() got unexpected keyword arguments {sorted(unknown)}")
        self.kwargs = kwargs
        self.calls: list[tuple[list[dict[str, list[int]]], list[SamplingParams]]] = []
        self._tok = Tokenizer()
        self.llm_engine = Engine(kwargs.get("max_model_len") or 64)
        LLM.instances.append(self)

    def get_tokenizer(self) -> Tokenizer:
        return self._tok

    def generate(
        self, prompts: list[dict[str, list[int]]], sampling_params: list[SamplingParams], **kw: Any
    ) -> list[RequestOutput]:
        if set(kw) - {"use_tqdm"}:
            raise TypeError(f"generate() got unexpected keyword arguments {sorted(kw)}")
        if len(prompts) != len(sampling_params):
            raise ValueError("one SamplingParams per prompt")
        limit = self.llm_engine.model_config.max_model_len
        self.calls.append((prompts, sampling_params))
        for i, (p, sp) in enumerate(zip(prompts, sampling_params, strict=True)):
            if len(p["prompt_token_ids"]) + (sp.max_tokens or 0) > limit:  # as vLLM: the call
                raise ValueError(f"prompt {i} too long for max_model_len {limit}")
        engine = self.llm_engine
        ids_added = [
            engine.add_request(str(i), p, sp)
            for i, (p, sp) in enumerate(zip(prompts, sampling_params, strict=True))
        ]
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, sampling_params, strict=True)):
            engine.step()  # a request finishes per step here
            engine.unfinished.remove(ids_added[i])
            ids = p["prompt_token_ids"]
            samples = []
            for k in range(sp.n):  # vLLM seeds the k-th child of a seeded request seed + k
                seed = None if sp.seed is None else sp.seed + k
                digest = hashlib.sha256(f"{ids}|{seed}|{sp.temperature}".encode()).digest()
                natural = 1 + digest[0] % 12  # a seeded "model" that stops after 1..12 tokens
                n = min(natural, sp.max_tokens or 16)
                toks = list(digest[1 : 1 + n])
                text = " ".join(f"w{t}" for t in toks)
                so = sp.structured_outputs
                if so is not None and so.choice:  # the only constraint this toy enforces
                    text = so.choice[digest[0] % len(so.choice)]
                    natural, n, toks = 1, 1, toks[:1]
                finish = "length" if n == sp.max_tokens and natural > n else "stop"
                samples.append(CompletionOutput(k, text, toks, finish))
            outs.append(
                RequestOutput(request_id=str(i), prompt_token_ids=list(ids), outputs=samples)
            )
        return outs


def module() -> SimpleNamespace:
    """An object that stands in for the `vllm` module."""
    LLM.instances.clear()
    return SimpleNamespace(
        LLM=LLM,
        SamplingParams=SamplingParams,
        sampling_params=SimpleNamespace(
            SamplingParams=SamplingParams, StructuredOutputsParams=StructuredOutputsParams
        ),
    )
