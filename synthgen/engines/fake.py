"""A deterministic engine for orchestration tests and benchmarks: no model, optional sleep."""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Sequence

from synthgen.config import ModelConfig, SamplingConfig
from synthgen.engines.base import Completion, EngineInfo, GenRequest, Score, ScoreRequest
from synthgen.engines.devices import detect_device

_WORDS = (
    "the a data model river light stone garden quiet system table market window music "
    "paper signal forest engine city cloud number letter story bridge winter summer road "
    "question answer simple careful bright slow rapid green blue ancient modern small large "
    "build follow notice carry measure explain describe travel gather open close write read"
).split()


class FakeEngine:
    """Completions are seeded word salad; token count = words. Sleeps to simulate work."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        started = time.perf_counter()
        self.info = EngineInfo(
            engine="fake",
            model=cfg.path or "fake",
            device=detect_device("cpu").label,
            load_id=uuid.uuid4().hex,
        )
        self.info.load_seconds = time.perf_counter() - started

    def generate(
        self, requests: Sequence[GenRequest], sampling: SamplingConfig
    ) -> list[Completion]:
        opts = self.cfg.fake
        out: list[Completion] = []
        total_tokens = 0
        for req in requests:
            prompt_tokens = sum(len(m["content"].split()) for m in req.messages) + 4
            ctx = self.cfg.max_model_len
            if ctx is not None and prompt_tokens + sampling.max_new_tokens > ctx:
                out.append(
                    Completion(
                        req.prompt_id,
                        "",
                        prompt_tokens,
                        0,
                        "rejected",
                        error=f"prompt has {prompt_tokens} tokens; with max_new_tokens="
                        f"{sampling.max_new_tokens} it exceeds max_model_len={ctx}",
                    )
                )
                continue
            rng = random.Random(req.seed)
            n = min(opts.tokens_per_completion, sampling.max_new_tokens)
            words = [rng.choice(_WORDS) for _ in range(n)]
            text = " ".join(words).capitalize() + "."
            reason = "length" if n >= sampling.max_new_tokens else "stop"
            out.append(Completion(req.prompt_id, text, prompt_tokens, n, reason))
            total_tokens += n
        delay = opts.seconds_per_shard + opts.seconds_per_token * total_tokens
        if delay > 0:
            time.sleep(delay)
        return out

    def score(
        self,
        requests: Sequence[ScoreRequest],
        sampling: SamplingConfig | None = None,
        top_k: int = 10,
    ) -> list[Score]:
        """Score under the fake engine's own model: each word is uniform over its vocabulary.

        A word from the vocabulary has log-prob -log(V) (what the generator would produce);
        any other word is impossible (log-prob -log(1e9)). An honest completion's mean
        log-prob equals the expectation exactly (variance 0).
        """
        vocab = set(_WORDS)
        lp_in = -math.log(len(_WORDS))
        lp_out = -math.log(1e9)
        out = []
        for req in requests:
            words = [w.strip(".,").lower() for w in req.completion.split()]
            words = [w for w in words if w]
            n = len(words)
            inside = sum(1 for w in words if w in vocab)
            if n == 0:
                out.append(Score(req.prompt_id, 0.0, 1.0, 0, lp_in, 0.0, 0.0))
                continue
            mean = (inside * lp_in + (n - inside) * lp_out) / n
            out.append(Score(req.prompt_id, mean, inside / n, n, lp_in, 0.0, (n - inside) / n))
        return out

    def close(self) -> None:
        pass
