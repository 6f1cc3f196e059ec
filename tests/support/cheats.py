"""Simulated dishonest workers, for tests and benchmarks only (not in the package; no config
can select one).

A `CheatingEngine` wraps a worker's real engine: it claims the same model (same `info`) but
returns text that did not come from that model with the claimed sampling. Scoring is passed
through honestly: the cheater is the generator, the verifier is another worker. Install one
on a chosen Dask worker with `install_cheat` (through `client.run`): it sets the engine cache's
one extension point, `synthgen.engines.cache.set_engine_wrapper`.

Strategies:
- `hot`: the right model, much hotter sampling (temperature 1.6, no top-p): a stand-in for a
  cheaper, worse model whose text the claimed model finds unlikely;
- `small`: a smaller model, built from the claimed one by keeping only its first layers
  (run with transformers; for a vLLM worker, on the same weights directory);
- `pool`: a fixed pool of canned texts, whatever the prompt;
- `shuffle`: honest completions with their tokens (words, for the fake engine) shuffled;
- `replay`: honest completions handed to the wrong prompts (cached text from other prompts);
- `partial`: honest, except every third completion, which comes from the text pool.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from typing import Any

from synthgen.config import RunConfig, SamplingConfig
from synthgen.engines.base import Completion, GenRequest, InferenceEngine, Score, ScoreRequest
from synthgen.engines.cache import set_engine_wrapper
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import write_plan
from tests.helpers import fake_config

STRATEGIES = ("hot", "small", "pool", "shuffle", "replay", "partial")

TEXT_POOL = [
    "Sure! Here is a short answer. The topic you asked about is important and has many "
    "aspects that experts discuss in detail.",
    "The quick brown fox jumps over the lazy dog. It was a sunny day and everyone was happy.",
    "In conclusion, there are several factors to consider, and each of them matters for a "
    "good outcome in the long run.",
    "Thank you for your question. This is a complex subject, so let me explain the basics "
    "first and then give an example.",
]


class CheatingEngine:
    def __init__(self, inner: InferenceEngine, strategy: str, seed: int = 0) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"cheat strategy {strategy!r}: expected one of {STRATEGIES}")
        self.inner = inner
        self.strategy = strategy
        self.rng = random.Random(seed)
        self.info = inner.info  # claims to be the honest engine
        self._small: Any = None

    def _small_engine(self) -> Any:
        if self._small is None:
            base: Any = self.inner
            if self.inner.info.engine == "vllm":  # same weights, loaded by transformers
                from synthgen.config import ModelConfig
                from synthgen.engines.transformers import TransformersEngine

                path = self.inner.model_cfg.path  # type: ignore[attr-defined]
                base = TransformersEngine(ModelConfig(path=path, device="cpu", batch_size=8))
            model = getattr(base, "model", None)
            if model is None or not hasattr(model, "model"):
                raise ValueError("cheat strategy 'small' needs a transformers or vLLM engine")
            small: Any = copy.copy(base)
            m = copy.deepcopy(model)
            keep = max(1, (2 * m.config.num_hidden_layers) // 3)
            m.model.layers = m.model.layers[:keep]
            m.config.num_hidden_layers = keep
            small.model = m
            self._small = small
        return self._small

    def _shuffle(self, text: str) -> str:
        tok = getattr(self.inner, "tokenizer", None)
        if tok is None:
            words = text.split()
            self.rng.shuffle(words)
            return " ".join(words)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        self.rng.shuffle(ids)
        return str(tok.decode(ids, skip_special_tokens=True)).strip()

    def generate(
        self, requests: Sequence[GenRequest], sampling: SamplingConfig, guided: Any = None
    ) -> list[Completion]:
        """Cheats the same way with a guided stage: `hot` and `small` decode under the
        constraint too (valid output, wrong distribution); the others replace the text."""
        s = self.strategy
        if s == "hot":
            hot = sampling.model_copy(update={"temperature": 1.6, "top_p": 1.0, "top_k": None})
            return self.inner.generate(requests, hot, guided)
        if s == "small":
            return list(self._small_engine().generate(requests, sampling, guided))
        honest = self.inner.generate(requests, sampling, guided)
        if s in ("pool", "partial"):
            for i, c in enumerate(honest):
                if c.finish_reason != "rejected" and (s == "pool" or i % 3 == 0):
                    c.text = self.rng.choice(TEXT_POOL)
            return honest
        if s == "shuffle":
            for c in honest:
                c.text = self._shuffle(c.text)
            return honest
        # replay: every completion moves to the next prompt
        texts = [c.text for c in honest]
        for i, c in enumerate(honest):
            c.text = texts[(i + 1) % len(texts)] if len(texts) > 1 else TEXT_POOL[0]
        return honest

    def score(
        self,
        requests: Sequence[ScoreRequest],
        sampling: SamplingConfig | None = None,
        top_k: int = 10,
        guided: Any = None,
    ) -> list[Score]:
        return self.inner.score(requests, sampling, top_k=top_k, guided=guided)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.inner.close()


def install_cheat(strategy: str, seed: int = 0, models: Sequence[str] | None = None) -> str:
    """Make this process's engines cheat from now on; run it on one Dask worker with
    `client.run(install_cheat, "pool", workers=[address])`. `models`: cheat only with the
    engines of these models (`info.model`; e.g. one stage's model of a multi-stage run),
    honest with the others. Returns the strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"cheat strategy {strategy!r}: expected one of {STRATEGIES}")

    def wrap(engine: Any) -> Any:
        if models is not None and engine.info.model not in models:
            return engine
        return CheatingEngine(engine, strategy, seed)

    set_engine_wrapper(wrap)
    return strategy


def remove_cheat() -> None:
    set_engine_wrapper(None)


class SlowEngine(CheatingEngine):
    """An honest engine that sleeps `seconds` before each generate call: installed on the
    honest workers, it leaves a test's cheater idle first when a stage's units come, so the
    cheater surely runs some of them (which worker Dask picks is otherwise chance)."""

    def __init__(self, inner: InferenceEngine, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds
        self.info = inner.info  # scoring and closing: CheatingEngine's pass-through

    def generate(
        self, requests: Sequence[GenRequest], sampling: SamplingConfig, guided: Any = None
    ) -> list[Completion]:
        time.sleep(self.seconds)
        return self.inner.generate(requests, sampling, guided)


def install_slowdown(seconds: float, models: Sequence[str]) -> float:
    """Make this process's engines of `models` slow honest ones (`SlowEngine`); run it on
    Dask workers with `client.run(install_slowdown, 1.0, ["m"], workers=[...])`."""

    def wrap(engine: Any) -> Any:
        return SlowEngine(engine, seconds) if engine.info.model in models else engine

    set_engine_wrapper(wrap)
    return seconds


def committed_shard(out: str, cheat: str | None = None, **overrides: Any) -> tuple[RunConfig, Store, str]:  # fmt: skip
    """A fake-engine run planned under `out` (6-prompt shards, sample seed 3, `overrides` as
    `fake_config` takes them) whose first shard was generated and committed by a worker
    cheating as `cheat` (None: an honest one): (config, store, shard id)."""
    cfg = RunConfig.model_validate(
        fake_config(out, shards__size=6, verify__sample_seed=3, **overrides)
    )
    store = Store(cfg.output)
    sid = write_plan(cfg, store).shards[0].shard_id
    try:
        if cheat:
            install_cheat(cheat)
        run_shard(ShardTask(cfg.model_dump(mode="json"), sid))
    finally:
        remove_cheat()
    return cfg, store, sid
