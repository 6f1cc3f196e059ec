"""Shard deadlines: how long an attempt of a unit may run on a worker before it runs elsewhere.

A frozen or partitioned host keeps its Dask connections open and answers nothing; Dask waits
for it until the scheduler's worker TTL. The flow does not: each attempt gets a deadline

    deadline = max(cluster.deadline_floor_s, cluster.deadline_factor x expected)
               + cluster.deadline_load_s   (the worker's first attempt of the run only)

and an attempt past it is re-run on another worker (`flows.timeouts`). `expected` is the
unit's expected time on that worker:

    expected = plan prompts of the shard x completion tokens per plan prompt / tokens/s

- tokens/s: measured on this run's committed attempts of the same stage, on that worker
  (completion tokens / wall seconds of the attempt, engine load excluded); a worker not yet
  measured gets the slowest measured worker's rate; before any commit, the engine's prior
  (`PRIOR_TOKENS_PER_S`; the fake engine: its simulated `seconds_per_token` and
  `seconds_per_shard`, exactly);
- completion tokens per plan prompt: measured on the stage's committed attempts; before any,
  `sampling.n x max_new_tokens` (an upper bound; the fake engine: its completion length).

`cluster.shard_timeout_s`, when set, is every attempt's deadline instead.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from synthgen.config import ModelConfig, RunConfig, SamplingConfig
from synthgen.io.layout import split_key
from synthgen.stages.units import stage_config, stage_names

# conservative completion tokens/s per worker before anything is measured (low = long
# deadlines: a wrong prior must not re-run healthy shards; measurements replace it after
# the first commit)
PRIOR_TOKENS_PER_S = {
    ("transformers", "cpu"): 20.0,
    ("transformers", "gpu"): 200.0,
    ("vllm", "cpu"): 50.0,
    ("vllm", "gpu"): 500.0,
}
# engine load allowance for a worker's first attempt of the run (model download, weights to
# the GPU, vLLM's CUDA graphs); `cluster.deadline_load_s` overrides
LOAD_ALLOWANCE_S = {"fake": 0.0, "transformers": 300.0, "vllm": 900.0}
# a worker the scheduler has not heard from for this long (it heartbeats every 0.5-2 s) is
# silent: after a missed deadline the flow removes it from the cluster (frozen, cut off), and
# the flow asks nothing of it (a request to it would wait for its worker TTL)
SILENT_S = 15.0


def _gpu(model: ModelConfig) -> bool:
    return model.needs_gpu or model.device == "cuda"


@dataclass
class _Rate:
    tokens: float = 0.0
    seconds: float = 0.0

    @property
    def per_s(self) -> float | None:
        return self.tokens / self.seconds if self.tokens > 0 and self.seconds > 0 else None


@dataclass
class DeadlinePolicy:
    """Deadlines of a run's attempts, learning from its committed ones (`observe`)."""

    cfg: RunConfig
    prompts: dict[str, int]  # plan shard id -> prompts
    rates: dict[tuple[str, str], _Rate] = field(default_factory=lambda: defaultdict(_Rate))
    per_prompt: dict[str, _Rate] = field(default_factory=lambda: defaultdict(_Rate))
    warm: set[tuple[str, str]] = field(default_factory=set)  # (stage, worker) with a result

    @property
    def fixed(self) -> float | None:
        return self.cfg.cluster.shard_timeout_s

    def _stage(self, stage: str) -> tuple[ModelConfig, SamplingConfig]:
        sc = stage_config(self.cfg, stage) if self.cfg.stages else None
        if sc is None:
            return self.cfg.model, self.cfg.sampling
        sampling = self.cfg.sampling.model_copy(
            update={k: v for k, v in sc.sampling.model_dump().items() if v is not None}
        )
        return sc.model or self.cfg.model, sampling

    def observe(self, unit: str, result: dict[str, Any]) -> None:
        """A unit's attempt returned: a generated one ("done") is a measurement."""
        if result.get("status") != "done":
            return
        stage, shard = split_key(unit)
        worker = result.get("worker", "")
        tokens = float(result.get("completion_tokens", 0))
        wall = float(result.get("wall_seconds", 0.0))
        self.warm.add((stage, worker))
        if wall > 0:
            r = self.rates[(stage, worker)]
            r.tokens += tokens
            r.seconds += wall
        p = self.per_prompt[stage]
        p.tokens += tokens
        p.seconds += self.prompts.get(shard, 0)  # here: plan prompts, not seconds

    def tokens_per_s(self, stage: str, worker: str) -> float | None:
        """Measured tokens/s of `worker` on `stage`, else the slowest measured worker's."""
        own = self.rates[(stage, worker)].per_s if (stage, worker) in self.rates else None
        if own is not None:
            return own
        measured = [r.per_s for (s, _), r in self.rates.items() if s == stage and r.per_s]
        return min(measured) if measured else None  # type: ignore[type-var]

    def expected_s(self, unit: str, worker: str) -> float:
        """Expected seconds of one attempt of `unit` on `worker` (engine load excluded)."""
        stage, shard = split_key(unit)
        model, sampling = self._stage(stage)
        prompts = self.prompts.get(shard) or max(self.prompts.values(), default=1)
        measured = self.per_prompt.get(stage)
        if measured is not None and measured.seconds > 0:
            tokens = prompts * measured.tokens / measured.seconds
        elif model.engine == "fake":
            tokens = (
                prompts
                * sampling.n
                * min(model.fake.tokens_per_completion, sampling.max_new_tokens)
            )
        else:
            tokens = prompts * sampling.n * sampling.max_new_tokens
        rate = self.tokens_per_s(stage, worker)
        if rate is not None:
            return tokens / rate
        if model.engine == "fake":
            return model.fake.seconds_per_shard + model.fake.seconds_per_token * tokens
        kind = "gpu" if _gpu(model) else "cpu"
        return tokens / PRIOR_TOKENS_PER_S[(model.engine, kind)]

    def load_allowance_s(self, unit: str, worker: str) -> float:
        stage, _ = split_key(unit)
        if (stage, worker) in self.warm:
            return 0.0
        if self.cfg.cluster.deadline_load_s is not None:
            return self.cfg.cluster.deadline_load_s
        return LOAD_ALLOWANCE_S.get(self._stage(stage)[0].engine, 0.0)

    def deadline_s(self, unit: str, worker: str) -> float:
        """How long an attempt of `unit` on `worker` may run (from its start marker)."""
        if self.fixed is not None:
            return self.fixed
        c = self.cfg.cluster
        base = max(c.deadline_floor_s, c.deadline_factor * self.expected_s(unit, worker))
        return base + self.load_allowance_s(unit, worker)

    def describe(self) -> dict[str, Any]:
        """The measured rates (for the run summary)."""
        return {
            "mode": "fixed" if self.fixed is not None else "derived",
            "tokens_per_s": {
                f"{stage}/{worker}" if len(stage_names(self.cfg)) > 1 else worker: round(r, 2)
                for (stage, worker), rate in sorted(self.rates.items())
                if (r := rate.per_s) is not None
            },
        }
