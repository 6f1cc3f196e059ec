"""Gopher-style quality and repetition rules (Rae et al. 2021, as in datatrove)."""

from __future__ import annotations

import re
from collections import Counter

from synthgen.config import GopherQualityConfig, GopherRepetitionConfig
from synthgen.stages.quality.base import Doc, Filter

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "*", "‣", "⁃", "◦", "●", "▪")
_ALPHA = re.compile(r"[^\W\d_]")
_PARAS = re.compile(r"\n{2,}")


class GopherQualityFilter(Filter):
    name = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig) -> None:
        self.cfg = cfg

    def keep(self, doc: Doc) -> bool | tuple[bool, str]:
        c = self.cfg
        words = doc.words
        n = len(words)
        if n == 0:
            return False, "gopher_no_words"
        mean_len = sum(len(w) for w in words) / n
        if mean_len < c.min_avg_word_length:
            return False, "gopher_short_words"
        if mean_len > c.max_avg_word_length:
            return False, "gopher_long_words"
        text = doc.text
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > c.max_symbol_word_ratio:
            return False, "gopher_symbol_ratio"
        lines = doc.lines
        if lines:
            bullets = sum(1 for ln in lines if ln.lstrip().startswith(BULLETS))
            if bullets / len(lines) > c.max_bullet_lines_ratio:
                return False, "gopher_bullet_lines"
            ell = sum(1 for ln in lines if ln.rstrip().endswith(("...", "…")))
            if ell / len(lines) > c.max_ellipsis_lines_ratio:
                return False, "gopher_ellipsis_lines"
        alpha = sum(1 for w in words if _ALPHA.search(w))
        if alpha / n < c.min_alpha_words_ratio:
            return False, "gopher_alpha_words"
        stop = sum(1 for w in words if w.lower() in STOP_WORDS)
        if stop < c.min_stop_words:
            return False, "gopher_stop_words"
        return True


def _dup_stats(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, characters in those items)."""
    seen: set[str] = set()
    dup, dup_chars = 0, 0
    for x in items:
        if x in seen:
            dup += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return dup, dup_chars


def top_ngram_char_frac(words: list[str], n: int, lens: list[int] | None = None) -> float:
    """Characters covered by the most frequent word n-gram (times its count) / all word chars."""
    if len(words) < n:
        return 0.0
    lens = lens if lens is not None else [len(w) for w in words]
    total = sum(lens)
    if total == 0:
        return 0.0
    grams = Counter(zip(*(words[i:] for i in range(n)), strict=False))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    return sum(len(w) for w in gram) * count / total


def dup_ngram_char_frac(words: list[str], n: int, lens: list[int] | None = None) -> float:
    """Characters of words inside an n-gram that occurred earlier / all word chars
    (overlapping repeats counted once)."""
    if len(words) < n:
        return 0.0
    lens = lens if lens is not None else [len(w) for w in words]
    total = sum(lens)
    if total == 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    marked = bytearray(len(words))
    for i, g in enumerate(zip(*(words[i:] for i in range(n)), strict=False)):
        if g in seen:
            marked[i : i + n] = b"\x01" * n
        else:
            seen.add(g)
    if not any(marked):
        return 0.0
    return sum(ln for ln, m in zip(lens, marked, strict=True) if m) / total


class GopherRepetitionFilter(Filter):
    name = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig) -> None:
        self.cfg = cfg

    def keep(self, doc: Doc) -> bool | tuple[bool, str]:
        c = self.cfg
        text = doc.text
        n_chars = max(len(text), 1)
        paras = [p.strip() for p in _PARAS.split(text.strip()) if p.strip()]
        if paras:
            dup, dup_chars = _dup_stats(paras)
            if dup / len(paras) > c.dup_para_frac:
                return False, "dup_para_frac"
            if dup_chars / n_chars > c.dup_para_char_frac:
                return False, "dup_para_char_frac"
        lines = [ln.strip() for ln in doc.lines]
        if lines:
            dup, dup_chars = _dup_stats(lines)
            if dup / len(lines) > c.dup_line_frac:
                return False, "dup_line_frac"
            if dup_chars / n_chars > c.dup_line_char_frac:
                return False, "dup_line_char_frac"
        words = [w.lower() for w in doc.words]
        lens = [len(w) for w in words]
        for n, limit in sorted(c.top_n_grams.items()):
            if top_ngram_char_frac(words, n, lens) > limit:
                return False, f"top_{n}_gram"
        for n, limit in sorted(c.dup_n_grams.items()):
            frac = dup_ngram_char_frac(words, n, lens)
            if frac > limit:
                return False, f"dup_{n}_gram"
            if frac == 0.0:
                break  # no repeated n-gram: no repeated longer one either
        return True
