"""Decontamination against a small evaluation set written here: planted copies and
near-copies (a few words changed, one 13-gram still shared) are flagged `contaminated` with
the benchmark named; paraphrases without a shared 13-gram survive."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthgen.config import RunConfig, config_from_dict
from synthgen.io.store import Store
from synthgen.stages import decontam
from synthgen.stages.base import run_stages
from synthgen.stages.clean import CleanStage
from synthgen.stages.decontam import (
    DecontaminateStage,
    load_index,
    ngram_hashes,
    write_benchmark_index,
)
from tests.helpers import fake_config

QUESTION = (
    "A train leaves the station at nine in the morning travelling at sixty miles per hour "
    "toward a city that lies one hundred and eighty miles away. At what time does it arrive?"
)
OTHER = (
    "Name the chemical element whose atomic number is seventy nine and explain why it has "
    "been used as money by many different civilisations throughout recorded human history."
)
TRIVIA = "Which planet is known as the red planet in our solar system?"  # 12 words: too short

# near copy: words changed at the start and the end; the middle 13+ words are untouched
NEAR = (
    "Suppose a train departs the depot at nine in the morning travelling at sixty miles per "
    "hour toward a city that lies one hundred and eighty kilometres off. When will it get there?"
)
# paraphrase: the same problem, no 13 consecutive words in common
PARAPHRASE = (
    "At 9 am a train sets off at a steady 60 mph for a town 180 miles distant; work out the "
    "clock time at which the journey ends, showing every step of the calculation."
)


def _bench_jsonl(path):
    lines = [{"question": QUESTION, "id": 1}, {"question": TRIVIA, "id": 2}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


def _bench_parquet(path):
    pq.write_table(pa.table({"problem": [OTHER]}), path)
    return str(path)


def _cfg(tmp_path, **decontaminate) -> RunConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = fake_config(str(tmp_path / "out"))
    data["clean"] = {
        "enabled": True,
        "decontaminate": {
            "benchmarks": [
                {"path": _bench_jsonl(tmp_path / "gsm.jsonl"), "field": "question"},
                {"path": _bench_parquet(tmp_path / "x.parquet"), "field": "problem",
                 "name": "chem"},
            ],
            **decontaminate,
        },
    }  # fmt: skip
    return config_from_dict(data)


def _rows(completions, prompts=None):
    n = len(completions)
    return pa.table(
        {
            "prompt_id": [f"p{i}" for i in range(n)],
            "prompt": prompts or ["Write something."] * n,
            "completion": completions,
            "finish_reason": ["stop"] * n,
            "drop_reason": pa.array([None] * n, pa.string()),
        }
    )


def test_copies_and_near_copies_are_flagged_paraphrases_survive(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    store = Store(cfg.output)
    summary = write_benchmark_index(cfg, store)
    assert summary is not None
    by_name = {b["name"]: b for b in summary["benchmarks"]}
    assert by_name["gsm"]["items"] == 2 and by_name["gsm"]["too_short"] == 1
    assert by_name["chem"]["items"] == 1 and summary["ngram"] == 13

    completions = [
        f"Sure. {QUESTION} The answer is noon.",  # planted copy inside a longer text
        NEAR,  # near copy: a shared 13-gram
        PARAPHRASE,  # no shared 13-gram
        OTHER.upper().replace(" ", "   "),  # copy after normalisation (case, whitespace)
        "An unrelated answer about cooking pasta in salted boiling water for ten minutes.",
        TRIVIA,  # shorter than 13 words: not checkable
    ]
    stage = DecontaminateStage(cfg.clean, store, cfg.run_id or "")
    out, stats = run_stages([stage, CleanStage(cfg.clean.model_copy(update={"filters":
        cfg.clean.filters.model_copy(update={"word_count": cfg.clean.filters.word_count.model_copy(
            update={"enabled": False})})}))], _rows(completions))  # fmt: skip
    by = out.column("contaminated_by").to_pylist()
    assert by == ["gsm", "gsm", None, "chem", None, None]
    reasons = out.column("drop_reason").to_pylist()
    assert reasons[:2] == ["contaminated", "contaminated"] and reasons[3] == "contaminated"
    assert reasons[2] != "contaminated" and reasons[4] != "contaminated"
    assert stats[0].drops == {"contaminated": 3}  # counted once, by this stage
    assert "contaminated" not in stats[1].drops  # clean keeps the reason, never recounts it


def test_the_prompt_column_is_checked_when_asked(tmp_path) -> None:
    cfg = _cfg(tmp_path, columns=["completion", "prompt"])
    store = Store(cfg.output)
    write_benchmark_index(cfg, store)
    rows = _rows(["A harmless completion with nothing special in it at all today."],
                 prompts=[f"Solve: {QUESTION}"])  # fmt: skip
    out, _ = DecontaminateStage(cfg.clean, store, cfg.run_id or "")(rows)
    assert out.column("contaminated_by").to_pylist() == ["gsm"]
    cfg2 = _cfg(tmp_path / "b")
    store2 = Store(cfg2.output)
    write_benchmark_index(cfg2, store2)
    out2, _ = DecontaminateStage(cfg2.clean, store2, cfg2.run_id or "")(rows)
    assert out2.column("contaminated_by").to_pylist() == [None]  # default: completion only


def test_the_index_is_hashed_once_and_read_once_per_process(tmp_path, monkeypatch) -> None:
    cfg = _cfg(tmp_path / "b")
    store = Store(cfg.output)
    write_benchmark_index(cfg, store)
    calls = []
    monkeypatch.setattr(decontam, "_read_items", lambda *a: calls.append(a) or [])
    assert write_benchmark_index(cfg, store) is not None  # kept: same settings
    assert calls == []
    decontam._cache.clear()
    first = load_index(store, cfg.run_id or "")
    assert load_index(store, cfg.run_id or "") is first  # cached per process


def test_ngram_hashes_follow_the_normalised_words() -> None:
    a = ngram_hashes("One two three four", 2)
    b = ngram_hashes("  ONE   two\tthree four ", 2)
    assert len(a) == 3 and (a == b).all()
    assert len(ngram_hashes("one two", 3)) == 0
    assert not set(ngram_hashes("a b c", 2)) & set(ngram_hashes("c b a", 2))


def test_a_bad_benchmark_file_is_a_clear_error(tmp_path) -> None:
    from synthgen.errors import PromptError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n{"q": 1}\n')
    data = fake_config(str(tmp_path / "out"))
    data["clean"] = {"decontaminate": {"benchmarks": [{"path": str(bad), "field": "question"}]}}
    cfg = config_from_dict(data)
    with pytest.raises(PromptError, match=r"bad.jsonl:2: no field 'question'"):
        write_benchmark_index(cfg, Store(cfg.output))
