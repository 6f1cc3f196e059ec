"""Deterministic shards with stable ids: the same prompts always give the same shards."""

from __future__ import annotations

from dataclasses import dataclass

from synthgen.errors import ConfigError
from synthgen.stages.prompts import PromptRecord


@dataclass(frozen=True)
class Shard:
    shard_id: str  # "shard-00000"
    index: int
    prompt_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompt_ids)


def shard_id(index: int) -> str:
    return f"shard-{index:05d}"


def make_shards(prompts: list[PromptRecord], size: int) -> list[Shard]:
    """Cut prompts, in source order, into consecutive shards of `size` prompts.

    Source order (not a hash order) keeps shards stable when the source is unchanged and
    makes `shard-00003` easy to find in the input. Prompt ids must be unique.
    """
    if size < 1:
        raise ConfigError(f"shards.size must be >= 1, got {size}")
    out = []
    for start in range(0, len(prompts), size):
        chunk = prompts[start : start + size]
        idx = start // size
        out.append(Shard(shard_id(idx), idx, tuple(p.prompt_id for p in chunk)))
    return out
