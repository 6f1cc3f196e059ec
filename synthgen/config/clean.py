"""Cleaning (`clean`): exact and near-duplicate removal and the quality filters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synthgen.config.base import Section as _Section
from synthgen.errors import ConfigError
from synthgen.stages.dedup.lsh import exact_bands_rows, optimal_bands_rows


class ExactDedupConfig(_Section):
    """Exact-duplicate removal across the run."""

    enabled: bool = Field(
        True,
        description="Drop records whose normalised completion (NFKC, case-fold, "
        "collapsed whitespace) hashes equal to an earlier prompt_id's (xxhash64).",
    )


class NearDedupConfig(_Section):
    """Near-duplicate removal across the run (MinHash-LSH over completions)."""

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
        description="Jaccard of the shingle sets at or above which two records are near "
        "duplicates (exact; estimated from the signatures against a published index).",
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
        "OUTPUT/dataset/ (its band index is stored beside it, in OUTPUT/dedup_index/).",
    )

    @property
    def rows(self) -> int:
        return self.lsh_params()[1]

    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows): given `bands`, or the pair minimising false positives + negatives."""

        if self.bands is not None:
            if self.bands > self.num_perm:
                raise ConfigError(
                    f"clean.near.bands={self.bands} exceeds clean.near.num_perm={self.num_perm}"
                )
            return self.bands, self.num_perm // self.bands
        return optimal_bands_rows(self.threshold, self.num_perm)

    def exact_lsh_params(self) -> tuple[int, int]:
        """(bands, rows) where candidates are verified by exact Jaccard (in-shard, where
        the texts are at hand): given `bands`, or the most rows per band that still make
        a pair at the threshold a candidate with probability >= 0.999."""
        if self.bands is not None:
            return self.lsh_params()
        return exact_bands_rows(self.threshold, self.num_perm)


class WordCountFilterConfig(_Section):
    """Word-count bounds of a completion."""

    enabled: bool = Field(True, description="Drop completions with too few or too many words.")
    min_words: int = Field(5, ge=0, description="Fewer words than this: drop (too_few_words).")
    max_words: int = Field(
        100_000, ge=1, description="More words than this: drop (too_many_words)."
    )


class GopherQualityConfig(_Section):
    """Gopher quality heuristics (thresholds below)."""

    enabled: bool = Field(
        True,
        description="Gopher quality heuristics (Rae et al. 2021): word length, symbols, bullets, ellipses, letters, stop words.",
    )
    min_avg_word_length: float = Field(
        3.0, ge=0.0, description="Mean word length below this: drop (gopher_short_words)."
    )
    max_avg_word_length: float = Field(
        10.0, ge=0.0, description="Mean word length above this: drop (gopher_long_words)."
    )
    max_symbol_word_ratio: float = Field(0.1, ge=0.0, description="'#' and '...' per word.")
    max_bullet_lines_ratio: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Fraction of non-empty lines starting with a bullet above this: drop.",
    )
    max_ellipsis_lines_ratio: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Fraction of non-empty lines ending in an ellipsis above this: drop.",
    )
    min_alpha_words_ratio: float = Field(
        0.8, ge=0.0, le=1.0, description="Fraction of words with at least one letter."
    )
    min_stop_words: int = Field(2, ge=0, description="English stop words required (the, of, ...).")


class GopherRepetitionConfig(_Section):
    """Gopher repetition heuristics (thresholds below)."""

    enabled: bool = Field(
        True, description="Gopher repetition heuristics: duplicated lines, paragraphs and n-grams."
    )
    dup_line_frac: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Fraction of lines that repeat an earlier line above this: drop (dup_line_frac).",
    )
    dup_para_frac: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Fraction of paragraphs (blank-line separated) that repeat an earlier one above this: drop.",
    )
    dup_line_char_frac: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Fraction of characters in repeated lines above this: drop.",
    )
    dup_para_char_frac: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Fraction of characters in repeated paragraphs above this: drop.",
    )
    top_n_grams: dict[int, float] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="n -> max character fraction covered by the most frequent n-gram.",
    )
    dup_n_grams: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> max character fraction covered by duplicated n-grams.",
    )


class TruncatedFilterConfig(_Section):
    """Completions cut by the token limit."""

    enabled: bool = Field(True, description="Drop completions cut at max_new_tokens.")
    finish_reasons: list[str] = Field(
        default_factory=lambda: ["length"],
        description="Engine finish reasons that count as truncated (truncated).",
    )


class RefusalFilterConfig(_Section):
    """Completions that refuse the task."""

    enabled: bool = Field(
        True, description="Drop completions matching a refusal pattern (refusal)."
    )
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
    """Completions in another language than `languages`."""

    enabled: bool = Field(
        False, description="Language check with py3langid (model ships in the wheel)."
    )
    languages: list[str] = Field(
        default_factory=lambda: ["en"],
        min_length=1,
        description="ISO 639-1 codes kept; any other identified language is dropped (wrong_language).",
    )
    min_chars: int = Field(
        20, ge=0, description="Shorter texts are not checked (too short to identify)."
    )


class FiltersConfig(_Section):
    """Quality filters, cheapest first; the first that drops a record names the reason."""

    word_count: WordCountFilterConfig = Field(default_factory=WordCountFilterConfig)
    gopher_quality: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    truncated: TruncatedFilterConfig = Field(default_factory=TruncatedFilterConfig)
    refusal: RefusalFilterConfig = Field(default_factory=RefusalFilterConfig)
    language: LanguageFilterConfig = Field(default_factory=LanguageFilterConfig)


class BenchmarkFile(_Section):
    """One evaluation set that generated records must not overlap."""

    path: str = Field(
        description="JSONL or Parquet file (by extension: .jsonl/.json or .parquet), a local "
        "path or an fsspec URL; read once per run by the flow, never by the workers."
    )
    field: str = Field("text", description="The field (column) holding the benchmark text.")
    name: str | None = Field(
        None,
        description="Name written to `contaminated_by` and the manifest; unset = the file "
        "name without its extension.",
    )

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        base = self.path.rstrip("/").rsplit("/", 1)[-1]
        return base.split(".", 1)[0] or base


class DecontaminateConfig(_Section):
    """Drop records that share a word n-gram with a benchmark (evaluation) set."""

    benchmarks: list[BenchmarkFile] = Field(
        default_factory=list,
        description="Benchmark files to check against; empty = no decontamination. A record "
        "sharing one word n-gram (normalised text) with an item is flagged `contaminated`, "
        "the benchmark named in its `contaminated_by` column (raw shards only).",
    )
    ngram: int = Field(
        13, ge=1, le=64, description="n of the word n-grams (13, as in GPT-3's decontamination)."
    )
    columns: list[Literal["completion", "prompt"]] = Field(
        default_factory=lambda: ["completion"],
        min_length=1,
        description="Record columns checked: completion, prompt, or both.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.benchmarks)


class CleanConfig(_Section):
    """Quality filters and exact and near-duplicate removal (within each shard and across the run)."""

    enabled: bool = Field(
        True,
        description="false: no filters and no dedup (records are only hashed; nothing is dropped).",
    )
    stage: str | None = Field(
        None,
        description="Multi-stage runs: the stage whose text is filtered and deduplicated (on its "
        "workers, and run-wide; its rows dropped here go no further). Unset = the final stage. "
        "Set it when the final stage is a judge or an extractor (its JSON is not the text).",
    )
    exact: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    near: NearDedupConfig = Field(default_factory=NearDedupConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    global_partitions: int | None = Field(
        None,
        ge=1,
        description="Band-key partitions of the cross-shard stage; unset = 2 per worker.",
    )

    @model_validator(mode="after")
    def _check(self) -> CleanConfig:
        self.near.lsh_params()  # raises on bands > num_perm
        return self
