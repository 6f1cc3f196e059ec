"""vLLM engine (GPU): one `LLM.generate` call per shard, so continuous batching sees it all.

vLLM is imported lazily; without it the error names `pip install 'synthgen[gpu]'`, and
without a CUDA device the error says so. Engine settings come from the worker's GPU
preset merged with pinned config (synthgen.engines.presets). Prompts are rendered with the
model's own chat template and checked one by one against the context: an over-long prompt
is rejected (finish_reason="rejected") or truncated per `model.long_prompts`,
never failing the shard.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from synthgen.config import ModelConfig, SamplingConfig
from synthgen.engines.base import (
    Completion,
    EngineInfo,
    FinishReason,
    GenRequest,
    Score,
    ScoreRequest,
)
from synthgen.engines.devices import DeviceInfo, detect_device
from synthgen.engines.presets import GpuPreset, VllmSettings, resolve_vllm_settings
from synthgen.errors import EngineError, MissingDependencyError

INSTALL_HINT = "pip install 'synthgen[gpu]'"
LLM_SEED = 0  # engine-wide seed; every request carries its own seed in SamplingParams
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}
SCORE_LOGPROBS = 20  # top log-probs per position for scoring (vLLM's default max_logprobs)


def import_vllm() -> ModuleType:
    try:
        import vllm
    except ImportError as exc:
        raise MissingDependencyError(
            f"model.engine=vllm needs the vllm package, which is not installed ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    return vllm


def require_cuda(device: DeviceInfo) -> None:
    if device.kind != "cuda":
        raise EngineError(
            f"model.engine=vllm needs a CUDA GPU, but this worker has none visible "
            f"(detected {device.label}); run it on a GPU worker or use model.engine=transformers"
        )


def llm_kwargs(settings: VllmSettings, model: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)`; `model.vllm.extra` wins over everything."""
    opts = model.vllm
    kwargs: dict[str, Any] = {
        "model": settings.model,
        "dtype": settings.dtype,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_seqs": settings.max_num_seqs,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "seed": LLM_SEED,
        "enforce_eager": opts.enforce_eager,
        "trust_remote_code": opts.trust_remote_code,
    }
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.quantization is not None:
        kwargs["quantization"] = settings.quantization
    kwargs.update(opts.extra)
    return kwargs


def sampling_kwargs(sampling: SamplingConfig, seed: int) -> dict[str, Any]:
    """Keyword arguments for one prompt's `vllm.SamplingParams(...)`."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
    }
    if sampling.top_k is not None:
        kwargs["top_k"] = sampling.top_k
    return kwargs


@dataclass(frozen=True)
class PromptFit:
    """A prompt's token ids after the length check; `note` explains a truncation/rejection."""

    token_ids: list[int]
    original_tokens: int
    rejected: bool = False
    note: str | None = None


KEEP_TAIL = 8  # tokens kept from the end on truncation: the assistant header of the template


def fit_prompt(ids: list[int], max_model_len: int, max_new_tokens: int, policy: str) -> PromptFit:
    """Check one prompt against `max_model_len - max_new_tokens`. Over it: rejected, or
    (policy "truncate") cut in the middle, keeping the head (system prompt, start of the
    question) and the last KEEP_TAIL tokens (the generation prompt), as the transformers
    engine does."""
    budget = max_model_len - max_new_tokens
    n = len(ids)
    if n <= budget and budget > 0:
        return PromptFit(ids, n)
    why = (
        f"{n} prompt tokens > {max(budget, 0)} allowed "
        f"(max_model_len {max_model_len} - max_new_tokens {max_new_tokens})"
    )
    if policy == "truncate" and budget > 2 * KEEP_TAIL:
        kept = ids[: budget - KEEP_TAIL] + ids[-KEEP_TAIL:]
        return PromptFit(kept, n, note=f"prompt_truncated: {why}; kept {budget}")
    return PromptFit(ids, n, rejected=True, note=f"prompt_too_long: {why}")


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat rendered with the model's chat template (plain text without one)."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, Mapping):  # transformers >= 5 may return a BatchEncoding
            out = out["input_ids"]
        return list(out)
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer.encode(text))


def to_completion(req: GenRequest, output: Any, fit: PromptFit) -> Completion:
    """Map one vLLM RequestOutput (outputs[0].text/token_ids/finish_reason) to a Completion."""
    if not getattr(output, "outputs", None):
        return Completion(
            req.prompt_id, "", len(fit.token_ids), 0, "rejected", error="vllm returned no output"
        )
    out = output.outputs[0]
    prompt_ids = getattr(output, "prompt_token_ids", None)
    prompt_tokens = len(prompt_ids) if prompt_ids is not None else len(fit.token_ids)
    reason = _FINISH.get(str(out.finish_reason))
    if reason is None:  # "abort" or unfinished: a per-prompt failure, not a shard failure
        return Completion(
            req.prompt_id,
            out.text or "",
            prompt_tokens,
            len(out.token_ids),
            "rejected",
            error=f"vllm finish_reason={out.finish_reason!r}",
        )
    return Completion(
        req.prompt_id, out.text, prompt_tokens, len(out.token_ids), reason, error=fit.note
    )


class VllmEngine:
    """InferenceEngine on vLLM's offline `LLM` API."""

    def __init__(
        self,
        model: ModelConfig,
        *,
        device: DeviceInfo | None = None,
        presets: list[GpuPreset] | None = None,
        vllm_module: ModuleType | Any | None = None,
    ) -> None:
        self._vllm = vllm_module if vllm_module is not None else import_vllm()
        self.device = device if device is not None else detect_device("cuda")
        require_cuda(self.device)
        if model.vllm.tensor_parallel_size > self.device.count:
            raise EngineError(
                f"model.vllm.tensor_parallel_size={model.vllm.tensor_parallel_size} but this "
                f"worker sees {self.device.count} CUDA device(s) ({self.device.label})"
            )
        self.model_cfg = model
        self.settings = resolve_vllm_settings(model, self.device, presets)
        self.llm_kwargs = llm_kwargs(self.settings, model)
        t0 = time.perf_counter()
        try:
            self.llm = self._vllm.LLM(**self.llm_kwargs)
        except Exception as exc:
            raise EngineError(
                f"vllm.LLM failed to load {self.settings.model} on {self.device.label} "
                f"(preset {self.settings.preset}): {exc}"
            ) from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self._context_len()
        self.stats = {"prompts": 0, "rejected": 0, "truncated": 0}
        self.info = EngineInfo(
            engine="vllm",
            model=self.settings.model,
            device=self.device.label,
            load_seconds=time.perf_counter() - t0,
            load_id=uuid.uuid4().hex,
            extra={
                "preset": self.settings.preset,
                "settings": self.settings.as_dict(),
                "compute_capability": self.device.compute_capability,
                "memory_gb": self.device.memory_gb,
                "deterministic": False,  # seeded, but batch composition can change numerics
            },
        )

    def _context_len(self) -> int:
        if self.settings.max_model_len is not None:
            return self.settings.max_model_len
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError as exc:
            raise EngineError(
                f"cannot read max_model_len from vLLM for {self.settings.model}; "
                "pin model.max_model_len"
            ) from exc

    def generate(
        self, requests: Sequence[GenRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        fits = [
            fit_prompt(
                render_prompt(self.tokenizer, r.messages),
                self.max_model_len,
                sampling.max_new_tokens,
                self.model_cfg.long_prompts,
            )
            for r in requests
        ]
        todo = [i for i, f in enumerate(fits) if not f.rejected]
        prompts = [{"prompt_token_ids": fits[i].token_ids} for i in todo]
        params = [
            self._vllm.SamplingParams(**sampling_kwargs(sampling, requests[i].seed)) for i in todo
        ]
        outputs: list[Any] = []
        if prompts:  # one call per shard: vLLM's scheduler batches the whole shard
            outputs = list(self.llm.generate(prompts, params, use_tqdm=False))
            if len(outputs) != len(prompts):
                raise EngineError(
                    f"vllm returned {len(outputs)} outputs for {len(prompts)} prompts "
                    f"(first prompt id {requests[todo[0]].prompt_id})"
                )
        by_index = dict(zip(todo, outputs, strict=True))
        result: list[Completion] = []
        for i, (req, fit) in enumerate(zip(requests, fits, strict=True)):
            if fit.rejected:
                result.append(
                    Completion(req.prompt_id, "", fit.original_tokens, 0, "rejected", fit.note)
                )
            else:
                result.append(to_completion(req, by_index[i], fit))
        self.stats["prompts"] += len(requests)
        self.stats["rejected"] += sum(f.rejected for f in fits)
        self.stats["truncated"] += sum(1 for f in fits if f.note and not f.rejected)
        return result

    def score(
        self,
        requests: Sequence[ScoreRequest],
        sampling: SamplingConfig | None = None,
        top_k: int = 10,
    ) -> list[Score]:
        """Teacher-forced scores (verification): prefill prompt + completion with
        `prompt_logprobs`, generate one throw-away token. The expectation under `sampling`
        is computed over the top SCORE_LOGPROBS tokens per position
        (`synthgen.engines.tokenstats.stats_from_top_logprobs`)."""
        from synthgen.engines.tokenstats import score_from_stats, stats_from_top_logprobs

        n_lp = max(top_k, SCORE_LOGPROBS)
        seqs: list[tuple[list[int], int]] = []
        for r in requests:
            prompt = render_prompt(self.tokenizer, r.messages)
            room = self.max_model_len - len(prompt) - 1
            if room <= 0:
                raise EngineError(
                    f"score: prompt {r.prompt_id} has {len(prompt)} tokens, over "
                    f"max_model_len {self.max_model_len}"
                )
            completion = list(self.tokenizer.encode(r.completion, add_special_tokens=False))
            seqs.append((prompt + completion[:room], len(prompt)))
        todo = [i for i, (ids, plen) in enumerate(seqs) if len(ids) > plen]
        outputs: list[Any] = []
        if todo:
            params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=n_lp)
            outputs = list(
                self.llm.generate(
                    [{"prompt_token_ids": seqs[i][0]} for i in todo],
                    [params] * len(todo),
                    use_tqdm=False,
                )
            )
            if len(outputs) != len(todo):
                raise EngineError(f"vllm returned {len(outputs)} outputs for {len(todo)} scores")
        by_index = dict(zip(todo, outputs, strict=True))
        scores = []
        for i, (r, (ids, plen)) in enumerate(zip(requests, seqs, strict=True)):
            if i not in by_index:
                scores.append(Score(r.prompt_id, 0.0, 1.0, 0))
                continue
            plp = by_index[i].prompt_logprobs
            positions = [
                (ids[j], {t: (lp.logprob, lp.rank) for t, lp in plp[j].items()})
                for j in range(plen, len(ids))
            ]
            stats = stats_from_top_logprobs(positions, top_k, sampling)
            scores.append(score_from_stats(r.prompt_id, stats))
        return scores

    def close(self) -> None:
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a core dependency
            pass
