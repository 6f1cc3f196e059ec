"""docs/configuration.md is generated from the pydantic `Field` descriptions; it must match."""

from __future__ import annotations

from synthgen.config.docs import COMMAND, render, rows, undocumented
from synthgen.config.run import RunConfig
from tests.conftest import REPO


def test_configuration_reference_is_current() -> None:
    path = REPO / "docs" / "configuration.md"
    current = path.read_text(encoding="utf-8") if path.is_file() else ""
    assert current == render(), f"docs/configuration.md is stale: run `{COMMAND}`"


def test_every_key_has_a_description() -> None:
    missing = undocumented()
    assert not missing, "keys without a Field description (add one):\n" + "\n".join(missing)


def test_rows_cover_nested_sections_and_each_prompt_source_type() -> None:
    table = {key: (tp, default) for key, tp, default, _ in rows(RunConfig)}
    assert table["clean.filters.language.languages"] == ("list[str] (at least 1)", '`["en"]`')
    assert table["sampling.top_p"][0] == "float (> 0.0, <= 1.0)"
    assert table["cluster.tls.ca_file"][1] == "required"
    assert table["prompts"][1] == '`{"type": "builtin"}`'
    for source in ("jsonl", "parquet", "template", "builtin"):
        assert any(k.endswith(f"(type {source})") for k in table), source
    assert "prompts.type (type jsonl)" not in table  # the tag is the union row itself
