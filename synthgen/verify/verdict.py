"""Verdict statistics: do a shard's sampled scores look like the claimed model and sampling?

Three tests, any of which fails the shard (see docs/verify.md):

1. z-score. At every completion position the engine reports the model's log-prob of the
   token present (`o_t`) and the mean `e_t` and variance `v_t` of the log-prob of a token
   drawn from the claimed sampling distribution. For an honest sampler `sum(o_t - e_t)` has
   mean 0 and variance `sum(v_t)` (a martingale: each term has mean 0 given the prefix), so
   `z = sum(o - e) / sqrt(sum(v))` is approximately standard normal over the sample, whatever
   the prompts. Text from another model, a text pool, shuffled tokens or a hotter sampler
   has tokens the model finds unlikely: `z` is far below 0 (medians -10 to -52 on 3
   records of the bundled model, benchmarks/RESULTS-verify.md). One-sided: a *higher*
   log-prob than expected (greedy decoding) is cheaper for no one and is not flagged.
   The same statistic per sampled record (`min_record_z`) catches a shard where only some
   records are fabricated: one canned record among three honest ones dilutes the
   shard-level z but not its own.
2. top-k fraction: share of sampled tokens among the model's top-k; a model-free sanity
   bound that also works for engines that cannot compute expectations.
3. optional absolute floor on the mean log-prob (`min_mean_logprob`).

Samples with fewer than `min_tokens` tokens are inconclusive and pass (an empty completion
carries no evidence).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from synthgen.config import VerifyConfig
from synthgen.engines.base import Score

Z_CAP = 1e6  # keeps the record JSON finite when the variance is 0 (deterministic engines)


@dataclass
class Aggregate:
    records: int
    tokens: int
    mean_logprob: float
    topk_fraction: float
    expected_logprob: float | None = None
    z: float | None = None
    outside_fraction: float | None = None
    record_z: list[float] | None = None  # per sampled record, same statistic

    @property
    def min_record_z(self) -> float | None:
        return min(self.record_z) if self.record_z else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _z(diff: float, var: float, n: int) -> float:
    if var > 0:
        return max(-Z_CAP, min(Z_CAP, diff / math.sqrt(var)))
    # a deterministic sampler: the text must match the expectation exactly
    return 0.0 if abs(diff) <= 1e-6 * max(n, 1) else math.copysign(Z_CAP, diff)


def aggregate(scores: list[Score]) -> Aggregate:
    """Token-weighted totals over a sample, and its z-score when expectations are known."""
    n = sum(s.tokens for s in scores)
    if n == 0:
        return Aggregate(len(scores), 0, 0.0, 1.0)
    obs = sum(s.mean_logprob * s.tokens for s in scores)
    topk = sum(s.topk_fraction * s.tokens for s in scores) / n
    agg = Aggregate(len(scores), n, obs / n, topk)
    if all(s.expected_logprob is not None and s.logprob_std is not None for s in scores):
        exp = sum((s.expected_logprob or 0.0) * s.tokens for s in scores)
        var = sum(((s.logprob_std or 0.0) * s.tokens) ** 2 for s in scores)
        agg.expected_logprob = exp / n
        agg.z = _z(obs - exp, var, n)
        agg.record_z = [
            _z(
                (s.mean_logprob - (s.expected_logprob or 0.0)) * s.tokens,
                ((s.logprob_std or 0.0) * s.tokens) ** 2,
                s.tokens,
            )
            for s in scores
            if s.tokens > 0
        ]
    if all(s.outside_fraction is not None for s in scores):
        agg.outside_fraction = sum((s.outside_fraction or 0.0) * s.tokens for s in scores) / n
    return agg


@dataclass
class Verdict:
    status: str  # "pass" | "fail" | "inconclusive"
    reasons: list[str] = field(default_factory=list)
    stats: Aggregate | None = None

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "stats": self.stats.as_dict() if self.stats else None,
        }


def judge(scores: list[Score], cfg: VerifyConfig) -> Verdict:
    agg = aggregate(scores)
    if agg.tokens < cfg.min_tokens:
        return Verdict(
            "inconclusive",
            [f"only {agg.tokens} completion tokens sampled (< min_tokens={cfg.min_tokens})"],
            agg,
        )
    reasons = []
    if agg.z is not None and agg.z < cfg.min_z:
        reasons.append(
            f"log-prob z-score {agg.z:.1f} < min_z {cfg.min_z} (mean log-prob "
            f"{agg.mean_logprob:.2f}, an honest sampler averages {agg.expected_logprob:.2f})"
        )
    worst = agg.min_record_z
    if cfg.min_record_z is not None and worst is not None and worst < cfg.min_record_z:
        reasons.append(
            f"a sampled record's log-prob z-score is {worst:.1f} < min_record_z {cfg.min_record_z}"
        )
    if agg.topk_fraction < cfg.min_topk_fraction:
        reasons.append(
            f"top-{cfg.top_k} fraction {agg.topk_fraction:.3f} < min_topk_fraction "
            f"{cfg.min_topk_fraction}"
        )
    if cfg.min_mean_logprob is not None and agg.mean_logprob < cfg.min_mean_logprob:
        reasons.append(
            f"mean log-prob {agg.mean_logprob:.2f} < min_mean_logprob {cfg.min_mean_logprob}"
        )
    return Verdict("fail" if reasons else "pass", reasons, agg)
