"""Each quality filter on both sides of its threshold, and reason counting."""

from __future__ import annotations

import pytest

from synthgen.config import (
    FiltersConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageFilterConfig,
    RefusalFilterConfig,
    TruncatedFilterConfig,
    WordCountFilterConfig,
)
from synthgen.errors import ConfigError
from synthgen.stages.quality import Doc, FilterSet, build_filters
from synthgen.stages.quality.basic import (
    LanguageFilter,
    RefusalFilter,
    TruncatedFilter,
    WordCountFilter,
)
from synthgen.stages.quality.gopher import (
    GopherQualityFilter,
    GopherRepetitionFilter,
    dup_ngram_char_frac,
    top_ngram_char_frac,
)
from tests._cleanutil import text

GOOD = (
    "The history of the river shows that people have lived with the water for a long time. "
    "Farmers used the floods to grow food, and traders moved goods to the coast."
)


def why(f, t: str, finish: str = "stop") -> str | None:
    return f.reason(Doc(t, finish))


def test_good_text_passes_the_default_set() -> None:
    fs = build_filters(FiltersConfig())
    assert fs.names == ["truncated", "refusal", "word_count", "gopher_quality", "gopher_repetition"]
    assert fs.reason(Doc(GOOD)) is None
    assert all(fs.reason(Doc(text(s))) is None for s in range(50))


def test_word_count_bounds() -> None:
    f = WordCountFilter(WordCountFilterConfig(min_words=5, max_words=8))
    assert why(f, "one two three four") == "too_few_words"
    assert why(f, "one two three four five") is None
    assert why(f, "a b c d e f g h") is None
    assert why(f, "a b c d e f g h i") == "too_many_words"
    assert why(f, "a , b - c ; d ! e") is None  # punctuation-only tokens are not words
    with pytest.raises(ConfigError, match="min_words"):
        WordCountFilter(WordCountFilterConfig(min_words=9, max_words=8))


def test_truncated() -> None:
    f = TruncatedFilter(TruncatedFilterConfig())
    assert why(f, GOOD, "length") == "truncated"
    assert why(f, GOOD, "stop") is None
    assert (
        build_filters(FiltersConfig(truncated={"enabled": False})).reason(Doc(GOOD, "length"))
        is None
    )


@pytest.mark.parametrize(
    "t",
    [
        "As an AI language model, I do not have feelings about rivers.",
        "I'm sorry, but I cannot do that.",
        "I cannot help with that request.",
        "I’m an AI and so on",
    ],
)
def test_refusal_patterns_drop(t: str) -> None:
    assert why(RefusalFilter(RefusalFilterConfig()), t) == "refusal"


def test_refusal_keeps_normal_text_and_custom_patterns() -> None:
    f = RefusalFilter(RefusalFilterConfig())
    assert why(f, GOOD) is None
    assert why(f, "I cannot believe how large the ocean is.") is None
    custom = RefusalFilter(RefusalFilterConfig(patterns=[r"\bcertainly!"]))
    assert why(custom, "Certainly! Here is the answer.") == "refusal"
    with pytest.raises(ConfigError, match="refusal.patterns"):
        RefusalFilter(RefusalFilterConfig(patterns=["("]))


def _gq(**kw) -> GopherQualityFilter:
    return GopherQualityFilter(GopherQualityConfig(**kw))


def test_gopher_mean_word_length() -> None:
    assert why(_gq(), "the a of to an it is and be of at by the a it is") == "gopher_short_words"
    assert why(_gq(min_avg_word_length=2.0), "the a of to an it is and be of at by the a") is None
    long = "the and " + " ".join(["internationalisation"] * 10)
    assert why(_gq(), long) == "gopher_long_words"
    assert why(_gq(max_avg_word_length=20.0, max_symbol_word_ratio=1.0), long) is None


def test_gopher_symbol_ratio() -> None:
    t = GOOD + " # # #"
    assert why(_gq(), t) is None  # 3 symbols / 35 words < 0.1
    assert why(_gq(), GOOD + " #" * 5) == "gopher_symbol_ratio"


def test_gopher_bullets_and_ellipsis_lines() -> None:
    bullets = [f"- the point of item {i} and more" for i in range(9)]
    plain = "The end of the list and the story."
    assert why(_gq(), "\n".join(bullets)) == "gopher_bullet_lines"  # 9/9 > 0.9
    assert why(_gq(), "\n".join([*bullets, plain])) is None  # 9/10 = 0.9
    ell = [f"The story of the river {i} goes on..." for i in range(3)]
    rest = [f"The water of the lake {i} and the sea." for i in range(7)]
    ok = _gq(max_symbol_word_ratio=1.0)
    assert why(ok, "\n".join(ell + rest)) is None  # 3/10 = 0.3
    assert why(ok, "\n".join([*ell, ell[0]] + rest)) == "gopher_ellipsis_lines"  # 4/11


def test_gopher_alpha_words_and_stop_words() -> None:
    numeric = "the and of " + " ".join(str(1000 + i) for i in range(10))
    assert why(_gq(), numeric) == "gopher_alpha_words"
    assert why(_gq(min_alpha_words_ratio=0.2), numeric) is None
    no_stop = "Rivers carry water towards distant oceans through valleys between mountains"
    assert why(_gq(), no_stop) == "gopher_stop_words"
    assert why(_gq(min_stop_words=0), no_stop) is None
    assert why(_gq(), no_stop + " and the sea") is None


def _gr(**kw) -> GopherRepetitionFilter:
    cfg = {"top_n_grams": {}, "dup_n_grams": {}} | kw
    return GopherRepetitionFilter(GopherRepetitionConfig(**cfg))


def test_gopher_duplicate_lines_and_paragraphs() -> None:
    lines = [f"Line number {i} says something else entirely here." for i in range(7)]
    # 3 repeated of 10 lines: 0.3 is not above 0.3; 4 of 11 is
    three = "\n".join(lines + lines[:3])
    four = "\n".join(lines + lines[:4])
    loose = dict(dup_line_char_frac=1.0, dup_para_char_frac=1.0)
    assert why(_gr(**loose), three) is None
    assert why(_gr(**loose), four) == "dup_line_frac"
    assert why(_gr(dup_para_char_frac=1.0), three) == "dup_line_char_frac"
    paras = "\n\n".join(lines + lines[:4])
    assert why(_gr(**loose), paras) == "dup_para_frac"
    assert why(_gr(dup_para_frac=1.0, dup_line_frac=1.0, **loose), paras) is None


def test_top_and_duplicated_ngrams() -> None:
    rep = ("the big red fox " * 6).split()
    assert top_ngram_char_frac(rep, 2) > 0.2
    assert dup_ngram_char_frac(rep, 5) > 0.5
    fresh = text(3, 60).lower().split()
    assert dup_ngram_char_frac(fresh, 5) == 0.0
    assert top_ngram_char_frac(["a", "b"], 3) == 0.0
    f = GopherRepetitionFilter(GopherRepetitionConfig())
    assert why(f, " ".join(rep)) == "top_2_gram"
    assert why(GopherRepetitionFilter(GopherRepetitionConfig(top_n_grams={})), " ".join(rep)) == (
        "dup_5_gram"
    )
    assert why(f, GOOD) is None


def test_language_filter_offline() -> None:
    f = LanguageFilter(LanguageFilterConfig(languages=["en"]))
    assert why(f, GOOD) is None
    german = "Die Geschichte des Flusses zeigt, dass die Menschen schon lange mit dem Wasser leben."
    assert why(f, german) == "wrong_language"
    assert why(LanguageFilter(LanguageFilterConfig(languages=["de"])), german) is None
    assert why(f, "Hallo Welt") is None  # shorter than min_chars: not judged


def test_filter_set_counts_first_reason() -> None:
    fs = build_filters(FiltersConfig())
    docs = [
        Doc(GOOD),
        Doc(GOOD, "length"),
        Doc("As an AI language model I cannot help with that.", "length"),
        Doc("too short"),
        Doc("As an AI language model, the answer is that and the rest."),
    ]
    assert fs.reasons(docs) == [None, "truncated", "truncated", "too_few_words", "refusal"]
    assert dict(fs.counts) == {"truncated": 2, "too_few_words": 1, "refusal": 1}


def test_custom_filter_contract() -> None:
    from synthgen.stages.quality import Filter

    class NoDigits(Filter):
        name = "digits"

        def keep(self, doc: Doc) -> bool:
            return not any(c.isdigit() for c in doc.text)

    class Tuple(Filter):
        name = "tuple"

        def keep(self, doc: Doc) -> bool | tuple[bool, str]:
            return (False, "has_x") if "x" in doc.text else True

    fs = FilterSet([NoDigits(), Tuple()])
    assert fs.reasons([Doc("a1"), Doc("x"), Doc("ok")]) == ["digits", "has_x", None]
