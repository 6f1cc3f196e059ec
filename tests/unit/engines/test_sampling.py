"""The claimed sampling distribution (temperature, top-k, top-p) and the vectorised draw the
transformers engine uses: same nucleus as a full sort, rows independent of each other,
draws that follow the claimed probabilities."""

from __future__ import annotations

import platform

import pytest
import torch

from synthgen.config import SamplingConfig
from synthgen.engines.sampling import candidates, claimed_probs, draw


def _reference(logits: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """Textbook version: full sort of the whole vocabulary."""
    scaled = logits.float() / s.temperature
    if s.top_k is not None:
        kth = torch.topk(scaled, s.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(-1)
    if s.top_p < 1.0:
        top, idx = torch.sort(probs, descending=True, dim=-1)
        remove = top.cumsum(-1) - top > s.top_p
        keep = torch.zeros_like(probs).scatter(-1, idx, (~remove).float())
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(temperature=0.7, top_p=0.95),
        SamplingConfig(temperature=1.0, top_p=0.5),
        SamplingConfig(temperature=0.8, top_p=0.9, top_k=40),
        SamplingConfig(temperature=1.2, top_p=1.0, top_k=5),
        SamplingConfig(temperature=1.0, top_p=1.0),
    ],
)
def test_claimed_distribution_matches_a_full_sort(sampling: SamplingConfig) -> None:
    gen = torch.Generator().manual_seed(0)
    peaked = torch.randn(4, 5000, generator=gen) * 4  # nucleus within the first candidates
    flat = torch.randn(4, 5000, generator=gen) * 0.1  # nucleus needs thousands of tokens
    logits = torch.cat([peaked, flat])
    got = claimed_probs(logits, sampling)
    want = _reference(logits, sampling)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(8), atol=1e-5)
    if sampling.top_p < 1.0 and sampling.top_k is None:
        # the flat rows really did need more than the first partial sort
        assert int((want[4:] > 0).sum(-1).min()) > 256


def test_candidates_are_sorted_and_cut() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    vals, idx = candidates(logits.softmax(-1), SamplingConfig(top_p=0.7))
    assert idx[0, :2].tolist() == [0, 1]
    assert vals[0, 2:].sum() == 0  # 0.665 after the first token: the second is kept, then cut
    assert float(vals.sum()) == pytest.approx(1.0)


def test_draw_depends_only_on_the_row_and_its_uniform() -> None:
    s = SamplingConfig(temperature=0.7, top_p=0.95)
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(1)) * 3
    u = torch.rand(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    together = draw(logits, s, u)
    alone = torch.cat([draw(logits[i : i + 1], s, u[i : i + 1]) for i in range(6)])
    reversed_batch = draw(logits.flip(0), s, u.flip(0)).flip(0)
    assert together.tolist() == alone.tolist() == reversed_batch.tolist()


def test_draws_follow_the_claimed_probabilities() -> None:
    s = SamplingConfig(temperature=1.0, top_p=0.9)
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -3.0, -4.0]])
    q = claimed_probs(logits, s)[0]
    n = 20000
    u = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    picks = draw(logits.expand(n, -1), s, u)
    freq = torch.bincount(picks, minlength=7).double() / n
    assert freq[q == 0].sum() == 0  # never a token outside the nucleus
    # each kept token within 5 standard errors of its claimed probability
    se = (q.double() * (1 - q.double()) / n).sqrt()
    assert bool(((freq - q.double()).abs() <= 5 * se + 1e-9).all()), (freq, q)


def test_greedy_is_argmax() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    u = torch.tensor([0.99, 0.01], dtype=torch.float64)
    assert draw(logits, SamplingConfig(temperature=0), u).tolist() == [1, 0]


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_malloc_tuning_applies_on_glibc() -> None:
    from synthgen.engines.transformers import tune_malloc_for_tensors

    assert tune_malloc_for_tensors() is True
