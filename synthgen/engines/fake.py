"""A deterministic engine for orchestration tests and benchmarks: no model, optional sleep.

Unguided, a completion is seeded word salad. Guided, it is a deterministic instance of the
constraint built from the sample's seed (`synthgen.engines.fakeguided`), validated like any
engine's output; `invalid_first_attempts` (a test hook, set through
`synthgen.engines.cache.set_engine_wrapper`: `tests/support/fakeguided.py`) makes the first
attempts of every sample word salad instead, to exercise validate-and-resample.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections.abc import Sequence

from synthgen.config import ModelConfig, SamplingConfig
from synthgen.config.stages import GuidedConfig
from synthgen.engines import abort
from synthgen.engines.base import (
    Completion,
    EngineInfo,
    GenRequest,
    Score,
    ScoreRequest,
    attempt_seed,
    sample_seed,
)
from synthgen.engines.devices import detect_device
from synthgen.engines.fakeguided import instance
from synthgen.engines.guided import SCHEMA_INVALID, validate

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
        self.invalid_first_attempts = 0  # test hook: guided attempts that come out invalid

    def _salad(self, seed: int, sampling: SamplingConfig) -> tuple[str, int, str]:
        rng = random.Random(seed)
        n = min(self.cfg.fake.tokens_per_completion, sampling.max_new_tokens)
        words = [rng.choice(_WORDS) for _ in range(n)]
        text = " ".join(words).capitalize() + "."
        return text, n, "length" if n >= sampling.max_new_tokens else "stop"

    def _guided(
        self, seed: int, sampling: SamplingConfig, guided: GuidedConfig, attempt: int
    ) -> tuple[str, int, str]:
        if attempt < self.invalid_first_attempts:
            return self._salad(seed, sampling)
        try:
            value = instance(guided, random.Random(seed))
            text = value if isinstance(value, str) else json.dumps(value)
        except ValueError as exc:  # a constraint it cannot instantiate: fail honestly
            text = f"<fake engine: {exc}>"
        words = text.split()
        if len(words) > sampling.max_new_tokens:  # cut at the limit, like a model would
            return " ".join(words[: sampling.max_new_tokens]), sampling.max_new_tokens, "length"
        return text, max(1, len(words)), "stop"

    def _sample(
        self, seed: int, sampling: SamplingConfig, guided: GuidedConfig | None
    ) -> tuple[str, int, str, str | None, int]:
        """(text, tokens, finish reason, error, attempts) of one sample."""
        if guided is None:
            return (*self._salad(seed, sampling), None, 1)
        error = None
        for attempt in range(guided.max_attempts):
            text, n, reason = self._guided(attempt_seed(seed, attempt), sampling, guided, attempt)
            ok, _, error = validate(text, guided)
            if ok:
                return text, n, reason, None, attempt + 1
        return text, n, reason, f"{SCHEMA_INVALID}{error}", guided.max_attempts

    def generate(
        self,
        requests: Sequence[GenRequest],
        sampling: SamplingConfig,
        guided: GuidedConfig | None = None,
    ) -> list[Completion]:
        opts = self.cfg.fake
        out: list[Completion] = []
        total_tokens = 0
        for req in requests:
            prompt_tokens = sum(len(m["content"].split()) for m in req.messages) + 4
            ctx = self.cfg.max_model_len
            if ctx is not None and prompt_tokens + sampling.max_new_tokens > ctx:
                error = (
                    f"prompt has {prompt_tokens} tokens; with max_new_tokens="
                    f"{sampling.max_new_tokens} it exceeds max_model_len={ctx}"
                )
                for i in range(sampling.n):
                    out.append(
                        Completion(
                            req.prompt_id,
                            "",
                            prompt_tokens if i == 0 else 0,
                            0,
                            "rejected",
                            error=error,
                            sample_index=i,
                        )
                    )
                continue
            for i in range(sampling.n):
                text, n, reason, error, attempts = self._sample(
                    sample_seed(req.seed, i), sampling, guided
                )
                out.append(
                    Completion(
                        req.prompt_id,
                        text,
                        prompt_tokens if i == 0 else 0,
                        n,
                        reason,  # type: ignore[arg-type]
                        error=error,
                        sample_index=i,
                        attempts=attempts,
                    )
                )
                total_tokens += n
        delay = opts.seconds_per_shard + opts.seconds_per_token * total_tokens
        abort.sleep(delay)  # the simulated device time: a superseded call stops early
        return out

    def score(
        self,
        requests: Sequence[ScoreRequest],
        sampling: SamplingConfig | None = None,
        top_k: int = 10,
        guided: GuidedConfig | None = None,
    ) -> list[Score]:
        """Score under the fake engine's own model: each word is uniform over its vocabulary.

        A word from the vocabulary has log-prob -log(V) (what the generator would produce);
        any other word is impossible (log-prob -log(1e9)). An honest completion's mean
        log-prob equals the expectation exactly (variance 0). With `guided`, the engine's
        guided outputs are instances of the constraint or (failed attempts) word salad: a
        completion that satisfies the constraint scores as honest, anything else as above.
        """
        vocab = set(_WORDS)
        lp_in = -math.log(len(_WORDS))
        lp_out = -math.log(1e9)
        out = []
        for req in requests:
            if guided is not None and validate(req.completion, guided)[0]:
                n = max(1, len(req.completion.split()))
                out.append(Score(req.prompt_id, lp_in, 1.0, n, lp_in, 0.0, 0.0))
                continue
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
