"""Where prompts come from (`prompts`), how bad prompt records are handled (`input`) and how
prompts are cut into shards (`shards`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt

from synthgen.config.base import Section as _Section


class JsonlSource(_Section):
    type: Literal["jsonl"]
    path: str = Field(description="JSONL file: one object per line with `prompt` or `messages`.")
    id_field: str = Field("id", description="Field holding a stable prompt id (optional per line).")


class ParquetSource(_Section):
    type: Literal["parquet"]
    path: str = Field(description="Parquet file (local path or URL fsspec understands).")
    column: str = Field("prompt", description="Column holding the prompt text.")
    id_column: str | None = Field(None, description="Column holding a stable prompt id.")


class TemplateSource(_Section):
    type: Literal["template"]
    templates: list[str] = Field(
        min_length=1,
        description="Templates with {topic}, {audience} and {style} placeholders.",
    )
    topics: list[str] = Field(min_length=1, description="Values of {topic}.")
    audiences: list[str] = Field(
        default_factory=lambda: ["a general audience"],
        min_length=1,
        description="Values of {audience}.",
    )
    styles: list[str] = Field(
        default_factory=lambda: ["clear and concise"],
        min_length=1,
        description="Values of {style}.",
    )
    count: PositiveInt | None = Field(
        None, description="Sample this many prompts (seeded); unset = the full product."
    )
    seed: int = Field(
        0,
        description="Seed of the `count` sample.",
    )


class BuiltinSource(_Section):
    type: Literal["builtin"]
    name: Literal["default"] = Field(
        "default",
        description="The bundled prompt set (synthgen/data/).",
    )
    limit: PositiveInt | None = Field(None, description="Use only the first N prompts.")


PromptSource = Annotated[
    JsonlSource | ParquetSource | TemplateSource | BuiltinSource, Field(discriminator="type")
]


class InputConfig(_Section):
    """How bad prompt records are handled (counted, quarantined, or fatal)."""

    max_prompt_chars: PositiveInt = Field(
        32_000, description="Prompts longer than this (characters) are rejected."
    )
    max_bad_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of bad records tolerated (quarantined with line numbers); above it "
        "the run stops before generating.",
    )


class ShardsConfig(_Section):
    """How prompts are cut into shards, the unit of scheduling, commit, retry and cost."""

    size: PositiveInt | None = Field(
        None,
        description="Prompts per shard (the largest shard if guided); set, it pins the size. "
        "Unset: sized by work where the engine's speed is known (GPU engines: the slowest "
        "bundled preset's `tokens_per_s` or the slowest `cost.throughput_hints`; the fake "
        "engine: its simulated speed): `target_seconds` of engine time per shard, at most "
        "a quarter of the prompts per expected worker; elsewhere (CPU engines) 8.",
    )
    target_seconds: float = Field(
        180.0,
        gt=0.0,
        description="Engine seconds per shard when `size` is unset and the engine's speed is "
        "known (a few minutes: the per-shard orchestration cost is paid once per shard).",
    )
    sizing: Literal["uniform", "guided"] = Field(
        "uniform",
        description="uniform: every shard `size` prompts. guided: decreasing sizes so fast "
        "and slow GPUs finish together (benchmarks/hetero_sched.py).",
    )
    expected_workers: PositiveInt = Field(
        1,
        description="Workers the sizes are planned for (guided sizing; the cap on work-sized "
        "shards); part of the run's identity.",
    )
