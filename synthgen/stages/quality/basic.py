"""Word count, truncated output, refusal/boilerplate and language filters."""

from __future__ import annotations

import re

from synthgen.config import (
    LanguageFilterConfig,
    RefusalFilterConfig,
    TruncatedFilterConfig,
    WordCountFilterConfig,
)
from synthgen.errors import ConfigError, MissingDependencyError
from synthgen.stages.quality.base import Doc, Filter


class WordCountFilter(Filter):
    name = "word_count"

    def __init__(self, cfg: WordCountFilterConfig) -> None:
        if cfg.min_words > cfg.max_words:
            raise ConfigError(
                f"clean.filters.word_count: min_words={cfg.min_words} > max_words={cfg.max_words}"
            )
        self.cfg = cfg

    def keep(self, doc: Doc) -> bool | tuple[bool, str]:
        n = len(doc.words)
        if n < self.cfg.min_words:
            return False, "too_few_words"
        if n > self.cfg.max_words:
            return False, "too_many_words"
        return True


class TruncatedFilter(Filter):
    name = "truncated"

    def __init__(self, cfg: TruncatedFilterConfig) -> None:
        self.reasons = frozenset(cfg.finish_reasons)

    def keep(self, doc: Doc) -> bool:
        return doc.finish_reason not in self.reasons


class RefusalFilter(Filter):
    name = "refusal"

    def __init__(self, cfg: RefusalFilterConfig) -> None:
        try:
            self.pattern = re.compile("|".join(f"(?:{p})" for p in cfg.patterns), re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"clean.filters.refusal.patterns: invalid regex: {exc}") from None
        self.enabled = bool(cfg.patterns)

    def keep(self, doc: Doc) -> bool:
        if not self.enabled:
            return True
        return self.pattern.search(doc.text.replace("\u2019", "'")) is None


class LanguageFilter(Filter):
    """py3langid (its model ships inside the wheel: nothing is downloaded)."""

    name = "language"

    def __init__(self, cfg: LanguageFilterConfig) -> None:
        try:  # optional dependency, needed only by this filter
            import py3langid
        except ImportError as exc:
            raise MissingDependencyError(
                "clean.filters.language needs py3langid: pip install py3langid"
            ) from exc
        self.classify = py3langid.classify  # the model is loaded once per process
        self.languages = frozenset(cfg.languages)
        self.min_chars = cfg.min_chars

    def keep(self, doc: Doc) -> bool | tuple[bool, str]:
        text = doc.text.strip()
        if len(text) < self.min_chars:
            return True
        lang, _score = self.classify(text)
        return True if lang in self.languages else (False, "wrong_language")
