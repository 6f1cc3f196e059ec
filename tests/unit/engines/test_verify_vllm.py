"""vLLM scoring through `prompt_logprobs`, against stand-in vLLM objects (no vllm install).

The stand-in "model" has a vocabulary of 16 tokens, so the top-20 log-probs vLLM returns per
position cover all of it and the result must equal the exact torch computation
(`token_stats`) on the same logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from synthgen.config import ModelConfig, SamplingConfig
from synthgen.engines.base import ScoreRequest, ScoringEngine
from synthgen.engines.devices import DeviceInfo
from synthgen.engines.tokenstats import stats_from_top_logprobs, token_stats
from synthgen.engines.vllm import SCORE_LOGPROBS, VllmEngine
from tests import vllm_standin

torch = pytest.importorskip("torch")
V = 16
GPU = DeviceInfo("cuda", "NVIDIA GeForce RTX 4090", 1, 23.6, (8, 9))


def toy_logits(prefix: list[int]) -> Any:
    g = torch.Generator().manual_seed(1000 + sum(prefix) * 7 + len(prefix))
    return torch.randn(V, generator=g) * 2.0


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    prompt_logprobs: int | None = None


@dataclass
class Logprob:
    logprob: float
    rank: int
    decoded_token: str | None = None


class Tokenizer(vllm_standin.Tokenizer):
    """Word tokenizer whose ids stay below V (ids wrap), with the HF `encode` signature."""

    def _id(self, word: str) -> int:
        return self.vocab.setdefault(word, len(self.vocab) % V)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self._id(w) for w in text.split()]


class LLM(vllm_standin.LLM):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tok = Tokenizer()

    def generate(self, prompts, sampling_params, **kw):
        self.calls.append((prompts, sampling_params))
        outs = []
        for p, sp in zip(prompts, sampling_params, strict=True):
            ids = p["prompt_token_ids"]
            plp: list[dict[int, Logprob] | None] = [None]
            for j in range(1, len(ids)):
                lp = toy_logits(ids[:j]).log_softmax(-1)
                order = torch.argsort(lp, descending=True).tolist()
                keep = order[: sp.prompt_logprobs]
                entry = {t: Logprob(float(lp[t]), order.index(t) + 1) for t in keep}
                entry[ids[j]] = Logprob(float(lp[ids[j]]), order.index(ids[j]) + 1)
                plp.append(entry)
            outs.append(SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=plp, outputs=[]))
        return outs


def engine(**kw: Any) -> VllmEngine:
    mod = SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)
    cfg = ModelConfig(engine="vllm", path="org/toy", **kw)
    return VllmEngine(cfg, device=GPU, vllm_module=mod)


def exact(eng: VllmEngine, req: ScoreRequest, sampling: SamplingConfig, k: int):
    from synthgen.engines.vllm import render_prompt

    prompt = render_prompt(eng.tokenizer, req.messages)
    ids = prompt + eng.tokenizer.encode(req.completion)
    logits = torch.stack([toy_logits(ids[:j]) for j in range(len(prompt), len(ids))])
    return token_stats(logits, torch.tensor(ids[len(prompt) :]), k, sampling)


def test_vllm_score_equals_exact_computation_when_top_logprobs_cover_the_vocab():
    eng = engine()
    assert isinstance(eng, ScoringEngine)
    sampling = SamplingConfig(temperature=0.7, top_p=0.9)
    msgs = [{"role": "user", "content": "tell me about rivers"}]
    req = ScoreRequest("p1", msgs, "the river runs down to the sea and back")
    (score,) = eng.score([req], sampling, top_k=3)
    ref = exact(eng, req, sampling, 3)
    assert score.tokens == ref.tokens == 9
    assert score.mean_logprob == pytest.approx(ref.sum_logprob / 9, rel=1e-5)
    assert score.topk_fraction == pytest.approx(ref.in_topk / 9)
    assert score.expected_logprob == pytest.approx(ref.sum_expected / 9, rel=1e-4)
    assert score.logprob_std == pytest.approx(math.sqrt(ref.sum_variance) / 9, rel=1e-3)
    assert score.outside_fraction == pytest.approx(ref.outside / 9)
    # one prefill call: a single throw-away token, prompt log-probs requested
    prompts, params = eng.llm.calls[-1]
    assert params[0].max_tokens == 1 and params[0].prompt_logprobs == SCORE_LOGPROBS
    assert len(prompts[0]["prompt_token_ids"]) == len(eng.tokenizer.encode(req.completion)) + 6


def test_vllm_score_empty_completion_and_over_long_prompt():
    eng = engine(max_model_len=128)
    assert eng.max_model_len == 128
    msgs = [{"role": "user", "content": "hi"}]
    (empty,) = eng.score([ScoreRequest("e", msgs, "")])
    assert empty.tokens == 0 and eng.llm.calls == []
    long = [{"role": "user", "content": "w " * 300}]
    with pytest.raises(Exception, match="score: prompt x has"):
        eng.score([ScoreRequest("x", long, "a b")])


def test_top_logprob_stats_handle_truncated_lists_and_missing_token():
    entries = {1: (math.log(0.5), 1), 2: (math.log(0.3), 2), 9: (math.log(0.01), 7)}
    st = stats_from_top_logprobs([(9, entries)], top_k=5, sampling=SamplingConfig(top_p=0.9))
    assert st.in_topk == 0 and st.outside == 1 and st.sum_logprob == pytest.approx(math.log(0.01))
    with pytest.raises(ValueError, match="token 4 has no log-prob entry"):
        stats_from_top_logprobs([(4, entries)], top_k=5)
