"""Prompt sources -> prompt records with stable ids.

Sources: a JSONL file (`prompt` or chat `messages` per line, optional id and metadata),
a Parquet file with a named column, a templated source (topics x audiences x styles x
templates, sampled with a seed, the way Cosmopedia built its prompts) and the built-in set.

Bad records (malformed JSON, no prompt, empty or over-long prompt, bytes that are not
UTF-8) are counted and quarantined with their line numbers while their share stays within
`input.max_bad_fraction`; above it, or with the default tolerance of 0, loading stops with
an error naming the file and line.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.config import (
    BuiltinSource,
    InputConfig,
    JsonlSource,
    ParquetSource,
    RunConfig,
    TemplateSource,
)
from synthgen.errors import PromptError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PromptRecord:
    prompt_id: str
    messages: Messages
    meta: dict[str, Any] = field(default_factory=dict)
    line: int | None = None  # 1-based line (or row) in the source, for error messages

    @property
    def text(self) -> str:
        """The last user turn, as plain text."""
        for msg in reversed(self.messages):
            if msg.get("role") == "user":
                return msg.get("content", "")
        return self.messages[-1].get("content", "") if self.messages else ""


@dataclass(frozen=True)
class Reject:
    source: str
    line: int
    reason: str
    raw: str  # the offending line, truncated


@dataclass
class PromptSet:
    source: str
    records: list[PromptRecord]
    rejects: list[Reject]


class _BadRecord(Exception):
    pass


def _content_id(messages: Messages) -> str:
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()
    return "p-" + hashlib.sha256(blob).hexdigest()[:16]


def _messages_from(obj: dict[str, Any]) -> Messages:
    if "messages" in obj and obj["messages"] is not None:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise _BadRecord("`messages` must be a non-empty list of {role, content}")
        out: Messages = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise _BadRecord(f"`messages[{i}]` needs `role` and `content`")
            if not isinstance(m["content"], str):
                raise _BadRecord(f"`messages[{i}].content` must be a string")
            out.append({"role": str(m["role"]), "content": m["content"]})
        if not any(m["content"].strip() for m in out):
            raise _BadRecord("empty prompt")
        return out
    if "prompt" in obj:
        text = obj["prompt"]
        if not isinstance(text, str):
            raise _BadRecord("`prompt` must be a string")
        if not text.strip():
            raise _BadRecord("empty prompt")
        return [{"role": "user", "content": text}]
    raise _BadRecord("no `prompt` or `messages` field")


def _check_length(messages: Messages, limit: int) -> None:
    size = sum(len(m["content"]) for m in messages)
    if size > limit:
        raise _BadRecord(f"prompt too long: {size} characters > input.max_prompt_chars={limit}")


class _Builder:
    """Collects records, assigns stable ids, enforces id uniqueness and the bad-record budget."""

    def __init__(self, source: str, policy: InputConfig) -> None:
        self.source = source
        self.policy = policy
        self.records: list[PromptRecord] = []
        self.rejects: list[Reject] = []
        self._ids: dict[str, int] = {}
        self._content_seen: dict[str, int] = {}

    def reject(self, line: int, reason: str, raw: str) -> None:
        self.rejects.append(Reject(self.source, line, reason, raw[:200]))
        if self.policy.max_bad_fraction == 0.0:
            raise PromptError(f"{self.source}:{line}: {reason}")

    def add(self, line: int, messages: Messages, pid: Any, meta: dict[str, Any]) -> None:
        if pid is None or pid == "":
            base = _content_id(messages)
            n = self._content_seen.get(base, 0) + 1
            self._content_seen[base] = n
            prompt_id = base if n == 1 else f"{base}-{n}"
        else:
            prompt_id = str(pid)
        if prompt_id in self._ids:
            raise PromptError(
                f"{self.source}:{line}: duplicate prompt id {prompt_id!r} "
                f"(first seen at line {self._ids[prompt_id]})"
            )
        self._ids[prompt_id] = line
        self.records.append(PromptRecord(prompt_id, messages, meta, line))

    def finish(self) -> PromptSet:
        total = len(self.records) + len(self.rejects)
        if total == 0:
            raise PromptError(f"{self.source}: no prompts (the source is empty)")
        if self.rejects:
            frac = len(self.rejects) / total
            if frac > self.policy.max_bad_fraction:
                first = self.rejects[0]
                raise PromptError(
                    f"{self.source}: {len(self.rejects)} of {total} records are bad "
                    f"({frac:.1%} > input.max_bad_fraction={self.policy.max_bad_fraction:.1%}); "
                    f"first at line {first.line}: {first.reason}"
                )
        if not self.records:
            raise PromptError(f"{self.source}: no usable prompts")
        return PromptSet(self.source, self.records, self.rejects)


def _load_jsonl_lines(source: str, data: bytes, id_field: str, policy: InputConfig) -> PromptSet:
    b = _Builder(source, policy)
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            b.reject(lineno, f"not UTF-8 ({exc.reason} at byte {exc.start})", repr(raw[:80]))
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            b.reject(lineno, f"malformed JSON: {exc.msg} (column {exc.colno})", line)
            continue
        if not isinstance(obj, dict):
            b.reject(lineno, "each line must be a JSON object", line)
            continue
        try:
            messages = _messages_from(obj)
            _check_length(messages, policy.max_prompt_chars)
        except _BadRecord as exc:
            b.reject(lineno, str(exc), line)
            continue
        meta = {k: v for k, v in obj.items() if k not in {"prompt", "messages", id_field}}
        b.add(lineno, messages, obj.get(id_field), meta)
    return b.finish()


def _read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise PromptError(f"{path}: prompt file not found") from None
    except IsADirectoryError:
        raise PromptError(f"{path}: is a directory, expected a file") from None


def load_jsonl(src: JsonlSource, policy: InputConfig) -> PromptSet:
    return _load_jsonl_lines(src.path, _read_bytes(src.path), src.id_field, policy)


def load_parquet(src: ParquetSource, policy: InputConfig) -> PromptSet:
    data = _read_bytes(src.path)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:
        raise PromptError(f"{src.path}: not a readable Parquet file ({exc})") from None
    for col in [src.column] + ([src.id_column] if src.id_column else []):
        if col not in table.column_names:
            raise PromptError(
                f"{src.path}: no column {col!r} (columns: {', '.join(table.column_names)})"
            )
    b = _Builder(src.path, policy)
    meta_cols = [c for c in table.column_names if c not in {src.column, src.id_column}]
    rows = table.to_pylist()
    for i, row in enumerate(rows, start=1):
        text = row[src.column]
        try:
            if not isinstance(text, str) or not text.strip():
                raise _BadRecord("empty prompt")
            messages = [{"role": "user", "content": text}]
            _check_length(messages, policy.max_prompt_chars)
        except _BadRecord as exc:
            b.reject(i, f"row {i}: {exc}", str(text)[:200])
            continue
        meta = {c: row[c] for c in meta_cols}
        b.add(i, messages, row[src.id_column] if src.id_column else None, meta)
    return b.finish()


def load_template(src: TemplateSource, policy: InputConfig) -> PromptSet:
    combos = list(
        itertools.product(range(len(src.templates)), src.topics, src.audiences, src.styles)
    )
    if src.count is not None and src.count < len(combos):
        combos = random.Random(src.seed).sample(combos, src.count)
    b = _Builder("template", policy)
    for i, (t, topic, audience, style) in enumerate(combos, start=1):
        try:
            text = src.templates[t].format(topic=topic, audience=audience, style=style)
        except (KeyError, IndexError) as exc:
            raise PromptError(
                f"prompts.templates[{t}]: unknown placeholder {exc}; "
                "use {topic}, {audience} and {style}"
            ) from None
        meta = {"template": t, "topic": topic, "audience": audience, "style": style}
        key = json.dumps([t, topic, audience, style], ensure_ascii=False)
        pid = "t-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        b.add(i, [{"role": "user", "content": text}], pid, meta)
    return b.finish()


def builtin_path(name: str = "default") -> Path:
    return Path(str(resources.files("synthgen") / "data" / f"{name}_prompts.jsonl"))


def load_builtin(src: BuiltinSource, policy: InputConfig) -> PromptSet:
    path = builtin_path(src.name)
    ps = _load_jsonl_lines(f"builtin:{src.name}", path.read_bytes(), "id", policy)
    if src.limit is not None:
        ps.records = ps.records[: src.limit]
    return ps


def load_prompts(cfg: RunConfig) -> PromptSet:
    src = cfg.prompts
    if isinstance(src, JsonlSource):
        return load_jsonl(src, cfg.input)
    if isinstance(src, ParquetSource):
        return load_parquet(src, cfg.input)
    if isinstance(src, TemplateSource):
        return load_template(src, cfg.input)
    return load_builtin(src, cfg.input)
