"""Which records of a shard are re-scored: a seeded random sample the worker cannot predict."""

from __future__ import annotations

import math
import random
import secrets

from synthgen.config import VerifyConfig


def sample_size(n_records: int, cfg: VerifyConfig) -> int:
    """max(min_per_shard, ceil(sample_rate * n)), capped by max_per_shard and by n."""
    if n_records <= 0:
        return 0
    n = max(cfg.min_per_shard, math.ceil(cfg.sample_rate * n_records))
    if cfg.max_per_shard is not None:
        n = min(n, cfg.max_per_shard)
    return min(n, n_records)


def new_sample_seed(cfg: VerifyConfig) -> int:
    """The configured seed (tests), else a fresh secret drawn by the verifier at check time."""
    return cfg.sample_seed if cfg.sample_seed is not None else secrets.randbits(63)


def choose_sample(n_records: int, cfg: VerifyConfig, seed: int) -> list[int]:
    """Sorted indexes of the records to re-score."""
    k = sample_size(n_records, cfg)
    return sorted(random.Random(seed).sample(range(n_records), k))
