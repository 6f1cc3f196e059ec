"""Filter contract: `keep(doc) -> bool | (bool, reason)`; the base counts drop reasons."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

_PUNCT_ONLY = re.compile(r"^\W+$")


@dataclass
class Doc:
    """One record as the filters see it; derived views are computed once and shared."""

    text: str
    finish_reason: str = "stop"
    meta: dict = field(default_factory=dict)

    @cached_property
    def tokens(self) -> list[str]:
        """Whitespace tokens (punctuation attached)."""
        return self.text.split()

    @cached_property
    def words(self) -> list[str]:
        """Tokens stripped of surrounding punctuation; punctuation-only tokens removed."""
        out = []
        for t in self.tokens:
            w = t.strip(".,;:!?\"'()[]{}<>«»“”‘’*_`")
            if w and not _PUNCT_ONLY.match(w):
                out.append(w)
        return out

    @cached_property
    def lines(self) -> list[str]:
        return [ln for ln in self.text.split("\n") if ln.strip()]


class Filter:
    """A quality filter. Subclasses implement `keep`, returning True to keep, False to
    drop with the filter's `name` as reason, or (False, reason) for a finer reason."""

    name: str = "filter"

    def keep(self, doc: Doc) -> bool | tuple[bool, str]:
        raise NotImplementedError

    def reason(self, doc: Doc) -> str | None:
        """None when kept, else the drop reason."""
        verdict = self.keep(doc)
        if isinstance(verdict, tuple):
            ok, why = verdict
            return None if ok else why
        return None if verdict else self.name


class FilterSet:
    """Runs filters in order; the first that drops a record names its reason."""

    def __init__(self, filters: Sequence[Filter]) -> None:
        self.filters = list(filters)
        self.counts: Counter[str] = Counter()

    def reason(self, doc: Doc) -> str | None:
        for f in self.filters:
            why = f.reason(doc)
            if why is not None:
                self.counts[why] += 1
                return why
        return None

    def reasons(self, docs: Sequence[Doc]) -> list[str | None]:
        return [self.reason(d) for d in docs]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.filters]
