"""Spot checks of untrusted workers (`verify`)."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from synthgen.config.base import Section as _Section


class VerifyConfig(_Section):
    """Spot checks: re-score a sample of each committed shard on another worker.

    Statistics are explained in docs/verify.md. Thresholds default to values
    calibrated on honest runs of the bundled model (`benchmarks/bench_verify.py`).
    """

    enabled: bool = Field(False, description="Verify committed shards on a different worker.")
    sample_rate: float = Field(
        0.02, gt=0.0, le=1.0, description="Fraction of each shard's records re-scored."
    )
    min_per_shard: PositiveInt = Field(3, description="Re-score at least this many records.")
    max_per_shard: PositiveInt | None = Field(None, description="Re-score at most this many.")
    top_k: PositiveInt = Field(
        10, description="A completion token counts as plausible if it is in the model's top-k."
    )
    min_z: float = Field(
        -6.0,
        description="Shard fails if its sample's log-prob z-score (observed vs. what an honest "
        "sampler with the claimed sampling parameters would get) is below this.",
    )
    min_record_z: float | None = Field(
        -5.0,
        description="Shard fails if any single sampled record's z-score is below this (catches "
        "a shard where only some records are fabricated); unset = shard-level test only.",
    )
    min_topk_fraction: float = Field(
        0.75, ge=0.0, le=1.0, description="Shard fails if fewer sampled tokens are in the top-k."
    )
    min_mean_logprob: float | None = Field(
        None, description="Optional absolute floor on the sample's mean token log-prob."
    )
    min_tokens: PositiveInt = Field(
        8, description="Samples with fewer completion tokens than this are inconclusive (pass)."
    )
    allow_same_worker: bool = Field(
        False,
        description="With a single worker, verify on the generating worker (weaker) instead "
        "of skipping verification with a warning.",
    )
    exclude_flagged_workers: bool = Field(
        True, description="A flagged worker gets no further shards for the rest of the run."
    )
    max_regenerations: int = Field(
        2, ge=0, description="Times a failed shard is regenerated on another worker."
    )
    sample_seed: int | None = Field(
        None,
        description="Seed for choosing the sample (tests). Unset: a fresh secret per check, "
        "so a worker cannot know which records will be checked.",
    )
