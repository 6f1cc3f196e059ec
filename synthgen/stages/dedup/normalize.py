"""Text normalisation and the exact-duplicate hash."""

from __future__ import annotations

import unicodedata

import xxhash


def normalize(text: str) -> str:
    """Unicode NFKC, case-fold, collapse runs of whitespace to one space, strip."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash(text: str) -> int:
    """xxhash64 of the normalised text, as an unsigned 64-bit int."""
    return xxhash.xxh64_intdigest(normalize(text).encode("utf-8"))
