"""Rendering a stage's chat (system + user turns) for each row, and the plan-time check of
the names templates read against the prompt records' fields.

Templates are Jinja2 in an immutable sandbox with strict undefined names. A row's context:
`prompt` (the prompt record's text), each key of the prompt record's metadata, and each
earlier stage NAME as a `StageText`: a `str` (its completion) whose attributes are its
parsed fields, so `{{ judge }}` renders the text and `{{ judge.score }}` the field.
Which names a template reads is `synthgen.config.templating` (the config checks it at load).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from synthgen.config import RunConfig
from synthgen.config.multistage import SOURCE_PROMPT, check_multistage, parsed_fields, where
from synthgen.config.stages import StageConfig
from synthgen.errors import ConfigError
from synthgen.stages.columns import column_values
from synthgen.stages.prompts import PromptRecord

Messages = list[dict[str, str]]


class StageText(str):
    """An earlier stage's completion in a template: the text, with its parsed fields."""

    fields: dict[str, Any]

    def __new__(cls, text: str, fields: dict[str, Any] | None = None) -> StageText:
        obj = super().__new__(cls, text)
        obj.fields = dict(fields or {})
        return obj


class _Env(ImmutableSandboxedEnvironment):
    """The sandbox, where a stage's parsed fields win over `str` attributes of the same name
    (`{{ judge.count }}` is the field `count`, not `str.count`)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, StageText) and attribute in obj.fields:
            return obj.fields[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, StageText) and isinstance(argument, str) and argument in obj.fields:
            return obj.fields[argument]
        return super().getitem(obj, argument)


_ENV = _Env(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _source_prompts(rows: pa.Table) -> list[str]:
    if SOURCE_PROMPT in rows.column_names:
        return rows.column(SOURCE_PROMPT).to_pylist()
    # plan rows (the first stage): the prompt record's text is its last user turn
    out = []
    for messages in rows.column("messages").to_pylist():
        out.append(PromptRecord("", json.loads(messages) if messages else []).text)
    return out


class StageTemplates:
    """The compiled templates of one stage, rendered per row of its upstream table."""

    def __init__(self, cfg: RunConfig, stage: StageConfig) -> None:
        self.cfg = cfg
        self.stage = stage
        self.where = where(cfg.stages.index(stage), stage)
        self.earlier = cfg.stages[: cfg.stages.index(stage)]
        try:
            self.user = _ENV.from_string(stage.prompt)
            self.system = _ENV.from_string(stage.system) if stage.system else None
        except TemplateError as exc:
            raise ConfigError(f"{self.where}: invalid template: {exc}") from None

    def contexts(self, rows: pa.Table) -> list[dict[str, Any]]:
        """One template context per row of `rows` (plan rows, or an earlier stage's rows)."""
        n = rows.num_rows
        prompts = _source_prompts(rows)
        metas = rows.column("meta").to_pylist() if "meta" in rows.column_names else [None] * n
        stage_values: list[tuple[str, list[Any], dict[str, list[Any]]]] = []
        for st in self.earlier:
            if st.name not in rows.column_names:
                raise ConfigError(
                    f"{self.where}: the upstream rows have no column {st.name!r} (stage "
                    f"{st.name} has not run on them)"
                )
            fields = {
                f: column_values(rows, f"{st.name}.{f}")
                for f in parsed_fields(self.cfg, st)
                if f"{st.name}.{f}" in rows.column_names
            }
            stage_values.append((st.name, rows.column(st.name).to_pylist(), fields))
        out = []
        for i in range(n):
            ctx: dict[str, Any] = dict(json.loads(metas[i])) if metas[i] else {}
            ctx["prompt"] = prompts[i]
            for name, texts, fields in stage_values:
                ctx[name] = StageText(texts[i] or "", {f: v[i] for f, v in fields.items()})
            out.append(ctx)
        return out

    def render(self, ctx: dict[str, Any], prompt_id: str = "?") -> Messages:
        """The chat of one row: the system turn (if the stage has one), then the user turn."""
        messages = []
        try:
            if self.system is not None:
                messages.append({"role": "system", "content": self.system.render(ctx)})
            messages.append({"role": "user", "content": self.user.render(ctx)})
        except TemplateError as exc:
            raise ConfigError(
                f"{self.where}: prompt {prompt_id}: cannot render the template: {exc}"
            ) from None
        return messages

    def render_rows(self, rows: pa.Table) -> list[Messages]:
        """The chat of every row of `rows`, in order."""
        ids = rows.column("prompt_id").to_pylist()
        return [self.render(ctx, pid) for ctx, pid in zip(self.contexts(rows), ids, strict=True)]


def render_messages(cfg: RunConfig, stage: StageConfig, rows: pa.Table) -> list[Messages]:
    """The chat (system + user turns) of `stage` for every row of `rows`."""
    return StageTemplates(cfg, stage).render_rows(rows)


def check_prompt_fields(cfg: RunConfig, record: PromptRecord, source: str = "") -> None:
    """Plan time, for sources whose fields are known only from the data (jsonl, parquet):
    every name a template or keep_if reads must be `prompt`, a key of this (the first)
    prompt record's metadata or an earlier stage. The same checks and messages as at load."""
    if not cfg.stages:
        return
    try:
        check_multistage(cfg, frozenset(record.meta))
    except ValueError as exc:
        at = f"{source}:{record.line}" if source and record.line else source or "prompts"
        raise ConfigError(
            f"{exc} (checked against the first prompt record, {at}, prompt {record.prompt_id})"
        ) from None
