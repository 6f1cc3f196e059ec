"""Per-token statistics of a teacher-forced completion under a model (torch).

Given the model's logits at each completion position and the tokens actually present, this
computes what verification needs:

- `logprob`: log p(token) under the model's raw distribution (temperature 1, no truncation);
- `in_topk`: whether the token is among the model's k most likely tokens;
- `expected` / `variance`: mean and variance of log p(X) when X is drawn from the *claimed
  sampling distribution* q (temperature, top-k, top-p applied to the same logits): what an
  honest sampler would score at that position on average;
- `outside`: whether q gives the token zero probability (the claimed sampling could not have
  produced it).

Summed over tokens, `logprob - expected` has mean 0 and variance `sum(variance)` for an honest
sampler whatever the prompt, which makes a z-score that needs no per-model calibration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from synthgen.config import SamplingConfig
from synthgen.engines.base import Score
from synthgen.engines.sampling import claimed_probs


@dataclass
class TokenStats:
    tokens: int
    sum_logprob: float
    in_topk: int
    sum_expected: float | None = None
    sum_variance: float | None = None
    outside: int | None = None


def sampling_probs(logits: Any, sampling: SamplingConfig) -> Any:
    """The claimed sampling distribution q over the vocabulary at each position ([T, V])."""
    return claimed_probs(logits, sampling)


def token_stats(
    logits: Any, targets: Any, top_k: int, sampling: SamplingConfig | None = None
) -> TokenStats:
    """Statistics of `targets` ([T] token ids) given `logits` ([T, V]) predicting them."""
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"token_stats: {logits.shape[0]} logit rows for {targets.shape[0]} target tokens"
        )
    n = int(targets.shape[0])
    if n == 0:
        return TokenStats(0, 0.0, 0, 0.0 if sampling else None, 0.0 if sampling else None, 0)
    logits = logits.float()
    logp = logits.log_softmax(dim=-1)
    tok_logp = logp.gather(-1, targets.view(-1, 1)).squeeze(-1)
    target_logit = logits.gather(-1, targets.view(-1, 1))
    rank = (logits > target_logit).sum(dim=-1)  # 0 = the most likely token
    stats = TokenStats(n, float(tok_logp.sum()), int((rank < top_k).sum()))
    if sampling is not None:
        q = sampling_probs(logits, sampling)
        # q is 0 where p is tiny: use 0 * log p = 0 rather than 0 * -inf = nan
        safe = torch.where(q > 0, logp, torch.zeros_like(logp))
        exp = (q * safe).sum(dim=-1)
        var = (q * safe * safe).sum(dim=-1) - exp * exp
        q_tok = q.gather(-1, targets.view(-1, 1)).squeeze(-1)
        stats.sum_expected = float(exp.sum())
        stats.sum_variance = float(var.clamp(min=0).sum())
        stats.outside = int((q_tok <= 0).sum())
    return stats


def score_from_stats(prompt_id: str, st: TokenStats) -> Any:
    """A `Score` (engine contract) from summed token statistics."""
    n = st.tokens
    if n == 0:
        return Score(prompt_id, 0.0, 1.0, 0, st.sum_expected, st.sum_variance, st.outside)
    exp = st.sum_expected / n if st.sum_expected is not None else None
    std = (st.sum_variance**0.5) / n if st.sum_variance is not None else None
    out = st.outside / n if st.outside is not None else None
    return Score(prompt_id, st.sum_logprob / n, st.in_topk / n, n, exp, std, out)


def stats_from_top_logprobs(
    positions: list[tuple[int, dict[int, tuple[float, int]]]],
    top_k: int,
    sampling: SamplingConfig | None = None,
    allowed: list[Callable[[int], bool] | None] | None = None,
) -> TokenStats:
    """TokenStats from per-position top-N log-probs (what vLLM's `prompt_logprobs` returns).

    `positions`: for each completion token, (its id, {token id: (log-prob, 1-based rank)}),
    where the dict holds the N most likely tokens plus the token itself. The expectation
    under the claimed sampling is computed over those N tokens only (temperature, top-k and
    top-p applied to them, renormalised): exact when the nucleus lies within the top N, an
    approximation otherwise.

    `allowed` (guided decoding): per position, which tokens the constraint allows there
    (None: all). The honest sampler then draws from the claimed sampling over the allowed
    tokens only (what vLLM does: grammar mask, then temperature, top-k, top-p), so the
    expectation, the top-k rank and `outside` are taken among the allowed tokens; a token
    the constraint forbids counts as outside and not in the top-k.
    """
    st = TokenStats(len(positions), 0.0, 0)
    if sampling is not None:
        st.sum_expected, st.sum_variance, st.outside = 0.0, 0.0, 0
    for pos, (token, entries) in enumerate(positions):
        if token not in entries:
            raise ValueError(f"stats_from_top_logprobs: token {token} has no log-prob entry")
        ok = allowed[pos] if allowed is not None else None
        if ok is not None:  # rank among the tokens the constraint allows here
            forbidden = not ok(token)
            entries = {t: v for t, v in entries.items() if t == token or ok(t)}
            order = sorted(entries.items(), key=lambda kv: kv[1][1])
            entries = {t: (v[0], r) for r, (t, v) in enumerate(order, start=1)}
        else:
            forbidden = False
        lp, rank = entries[token]
        st.sum_logprob += lp
        st.in_topk += 1 if rank <= top_k and not forbidden else 0
        if sampling is None:
            continue
        ranked = sorted(entries.items(), key=lambda kv: kv[1][1])
        if forbidden:
            ranked = [kv for kv in ranked if kv[0] != token] or ranked
        if sampling.temperature == 0:
            support = {ranked[0][0]: 1.0}
        else:
            if sampling.top_k is not None:
                ranked = [kv for kv in ranked if kv[1][1] <= sampling.top_k]
            weights = [math.exp(v[0] / sampling.temperature) for _, v in ranked]
            total = sum(weights)
            support, cum = {}, 0.0
            for (tid, _), w in zip(ranked, weights, strict=True):
                if cum >= sampling.top_p:
                    break
                support[tid] = w / total
                cum += w / total
            norm = sum(support.values())
            support = {t: q / norm for t, q in support.items()}
        exp = sum(q * entries[t][0] for t, q in support.items())
        var = sum(q * entries[t][0] ** 2 for t, q in support.items()) - exp * exp
        st.sum_expected = (st.sum_expected or 0.0) + exp
        st.sum_variance = (st.sum_variance or 0.0) + max(0.0, var)
        st.outside = (st.outside or 0) + (0 if token in support and not forbidden else 1)
    return st
