"""Quality filters: each answers keep or (drop, reason); reasons are counted."""

from __future__ import annotations

from synthgen.config import FiltersConfig
from synthgen.stages.quality.base import Doc, Filter, FilterSet
from synthgen.stages.quality.basic import (
    LanguageFilter,
    RefusalFilter,
    TruncatedFilter,
    WordCountFilter,
)
from synthgen.stages.quality.gopher import GopherQualityFilter, GopherRepetitionFilter

__all__ = ["Doc", "Filter", "FilterSet", "build_filters"]


def build_filters(cfg: FiltersConfig) -> FilterSet:
    """The enabled filters, cheapest first (the first that drops names the reason)."""
    filters: list[Filter] = []
    if cfg.truncated.enabled:
        filters.append(TruncatedFilter(cfg.truncated))
    if cfg.refusal.enabled:
        filters.append(RefusalFilter(cfg.refusal))
    if cfg.word_count.enabled:
        filters.append(WordCountFilter(cfg.word_count))
    if cfg.gopher_quality.enabled:
        filters.append(GopherQualityFilter(cfg.gopher_quality))
    if cfg.gopher_repetition.enabled:
        filters.append(GopherRepetitionFilter(cfg.gopher_repetition))
    if cfg.language.enabled:
        filters.append(LanguageFilter(cfg.language))
    return FilterSet(filters)
