"""The sampling distribution synthgen's engines claim: temperature, then top-k, then top-p.

One definition serves the transformers engine's sampler and verification's "what would an
honest sampler score here" (`synthgen.engines.tokenstats`), so the two cannot drift apart.

Sorting the whole vocabulary at every step (what transformers' `TopPLogitsWarper` does) costs
~50 ms for a 32 x 49k batch on 2 CPU cores, about as much as the forward pass of a 135M
model. The nucleus is almost always among the few hundred most likely tokens, so a partial
sort (`topk`) that widens only when a row's candidates hold less than `top_p` gives the same
set for a fraction of the cost.
"""

from __future__ import annotations

from typing import Any

import torch

from synthgen.config import SamplingConfig

_FIRST_CANDIDATES = 256
_WIDEN = 8


def candidates(probs: Any, sampling: SamplingConfig) -> tuple[Any, Any | None]:
    """(probabilities, token ids) of the claimed distribution, given temperature-scaled
    `probs` ([..., V], rows summing to 1).

    The probabilities come sorted in descending order and renormalised, with zeros after the
    top-k / top-p cut; `token ids` gives each column's vocabulary id. With neither top-k nor
    top-p there is nothing to cut: `probs` itself is returned, in vocabulary order, and the
    ids are None.
    """
    vocab = probs.shape[-1]
    if sampling.top_k is not None and sampling.top_k < vocab:
        vals, idx = torch.topk(probs, sampling.top_k, dim=-1)
        vals = vals / vals.sum(dim=-1, keepdim=True)
    elif sampling.top_p < 1.0:
        head = min(_FIRST_CANDIDATES, vocab)
        while True:
            vals, idx = torch.topk(probs, head, dim=-1)
            if head == vocab or bool((vals.sum(dim=-1) >= sampling.top_p).all()):
                break
            head = min(head * _WIDEN, vocab)
    else:
        return probs, None
    if sampling.top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p (a token is kept if the mass
        # before it is still <= top_p)
        vals = vals.masked_fill(vals.cumsum(dim=-1) - vals > sampling.top_p, 0.0)
        vals = vals / vals.sum(dim=-1, keepdim=True)
    return vals, idx


def claimed_probs(logits: Any, sampling: SamplingConfig) -> Any:
    """The claimed sampling distribution over the vocabulary ([..., V]) for `logits`."""
    logits = logits.float()
    if sampling.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    probs = (logits / sampling.temperature).softmax(dim=-1)
    vals, idx = candidates(probs, sampling)
    if idx is None:
        return vals
    return torch.zeros_like(probs).scatter(-1, idx, vals)


def draw(logits: Any, sampling: SamplingConfig, uniforms: Any | None) -> Any:
    """One token id per row of `logits` ([B, V]), by inverse CDF with `uniforms` ([B], each
    in [0, 1)) over the claimed distribution: the row's token depends only on its logits and
    its own uniform, never on the other rows. Greedy (temperature 0) takes the argmax and
    needs no uniforms."""
    logits = logits.float()
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = (logits / sampling.temperature).softmax(dim=-1)
    vals, idx = candidates(probs, sampling)
    cum = vals.double().cumsum(dim=-1)
    target = uniforms.to(device=cum.device, dtype=cum.dtype) * cum[:, -1]
    pos = torch.searchsorted(cum, target.view(-1, 1), right=True).view(-1)
    pos = pos.clamp(max=cum.shape[-1] - 1)
    return pos if idx is None else idx.gather(-1, pos.view(-1, 1)).view(-1)
