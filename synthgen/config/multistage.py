"""Load-time checks of a multi-stage run (`stages`, `select`, `output.format`), and the facts
about its stages that both the checks and the stages code need (the parsed fields of a
stage, the compared stage of `select`, the prompt fields a source yields).

Every name a template, a `keep_if` or `select.by` reads must exist when the row is made:
`prompt`, the prompt record's metadata keys (known at load for the template and builtin
sources; for jsonl / parquet they are checked against the first prompt record at plan time,
`synthgen.stages.template.check_prompt_fields`) or an earlier stage. Errors name the stage
and the variable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from synthgen.config.expressions import ExpressionError, parse_expr
from synthgen.config.prompts import BuiltinSource, TemplateSource
from synthgen.config.stages import StageConfig
from synthgen.config.templating import TemplateError, template_vars
from synthgen.io.schema import RECORD_FIELDS

if TYPE_CHECKING:
    from synthgen.config.run import RunConfig

# provenance columns every stage NAME adds (NAME.SUFFIX), besides NAME (the completion text)
STAGE_PROVENANCE = (
    "messages",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "seed",
    "model",
)
SAMPLE_INDEX = "sample_index"
SOURCE_PROMPT = "source_prompt"  # the prompt record's text, carried through every stage
# a guided stage's own rows: the sampled token ids (verification scores them; not carried,
# not published)
COMPLETION_IDS = "completion_ids"
PAIR_COLUMNS = (
    "chosen",
    "rejected",
    "chosen_score",
    "rejected_score",
    "chosen_sample_index",
    "rejected_sample_index",
)
SINGLE_STEP = "generate"
RESERVED_NAMES = frozenset(
    [f.name for f in RECORD_FIELDS]
    + [SAMPLE_INDEX, SOURCE_PROMPT, COMPLETION_IDS, SINGLE_STEP, *PAIR_COLUMNS]
)
# json_schema property type -> the column kind of a parsed field ("json": a JSON string)
_KINDS = {"integer": "int64", "number": "float64", "boolean": "bool", "string": "string"}
_TEMPLATE_KEYS = ("prompt", "system")
# columns every stage's rows have besides the stages' own (keep_if may read them)
_RECORD_COLUMNS = frozenset(
    [f.name for f in RECORD_FIELDS if f.name not in {"minhash", "text_hash"}]
    + [SAMPLE_INDEX, SOURCE_PROMPT]
)


def where(index: int, stage: StageConfig) -> str:
    return f"stages[{index}] ({stage.name})"


def stage_n(cfg: RunConfig, stage: StageConfig) -> int:
    """Samples per input row of `stage` (its own `sampling.n`, else the run's)."""
    return stage.sampling.n if stage.sampling.n is not None else cfg.sampling.n


def clean_stage(cfg: RunConfig) -> str:
    """The stage whose text is cleaned and deduplicated: `clean.stage`, else the final one
    (`generate` for a one-step run)."""
    if cfg.clean.stage:
        return cfg.clean.stage
    return cfg.stages[-1].name if cfg.stages else "generate"


def descendants_span(cfg: RunConfig, stage: str) -> int:
    """How many final rows one row of `stage` becomes: the product of `sampling.n` of the
    stages after it (1 for the final stage)."""
    names = [s.name for s in cfg.stages]
    if stage not in names:
        return 1
    span = 1
    for s in cfg.stages[names.index(stage) + 1 :]:
        span *= stage_n(cfg, s)
    return span


def compared_stage(cfg: RunConfig) -> str | None:
    """The stage whose samples `select` compares: `select.stage`, else the last stage with
    `sampling.n` > 1 (None: there is none)."""
    if cfg.select.stage:
        return cfg.select.stage
    for stage in reversed(cfg.stages):
        if stage_n(cfg, stage) > 1:
            return stage.name
    return None


@lru_cache(maxsize=8)
def _builtin_fields(name: str) -> frozenset[str]:
    path = resources.files("synthgen") / "data" / f"{name}_prompts.jsonl"
    keys: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            if isinstance(obj, dict):
                keys.update(obj)
    return frozenset(keys - {"prompt", "messages", "id"})


def known_prompt_fields(cfg: RunConfig) -> frozenset[str] | None:
    """The metadata keys the prompt records of `cfg.prompts` carry, where the source type
    makes them known at load; None for jsonl / parquet (known only from the data)."""
    src = cfg.prompts
    if isinstance(src, TemplateSource):
        return frozenset({"template", "topic", "audience", "style"})
    if isinstance(src, BuiltinSource):
        return _builtin_fields(src.name)
    return None


def _schema_properties(stage: StageConfig) -> dict[str, Any] | None:
    """The json_schema's top-level properties (None: no schema, or it lists none)."""
    schema = stage.guided.json_schema if stage.guided else None
    props = schema.get("properties") if isinstance(schema, dict) else None
    return props if isinstance(props, dict) and props else None


def _kind(prop: Any) -> str:
    typ = prop.get("type") if isinstance(prop, dict) else None
    if typ is None and isinstance(prop, dict) and ("enum" in prop or "const" in prop):
        # an untyped enum / const: typed by its values when they share one JSON type
        values = prop.get("enum", [prop.get("const")])
        kinds = {_value_kind(v) for v in values}
        return kinds.pop() if len(kinds) == 1 and None not in kinds else "json"
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        typ = non_null[0] if len(non_null) == 1 else None
    return _KINDS.get(typ, "json") if isinstance(typ, str) else "json"


def _value_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return None


def _field_refs(cfg: RunConfig) -> Iterable[tuple[str, str]]:
    """(stage, field) for every `NAME.FIELD` a template, keep_if or select.by reads."""
    for stage in cfg.stages:
        for key in _TEMPLATE_KEYS:
            text = getattr(stage, key)
            if not text:
                continue
            try:
                tv = template_vars(text)
            except TemplateError:
                continue
            for name, fields in tv.fields.items():
                for f in fields:
                    yield name, f
        if stage.keep_if:
            try:
                names = parse_expr(stage.keep_if, "keep_if").names
            except ExpressionError:
                continue
            for n in names:
                if "." in n:
                    head, _, rest = n.partition(".")
                    yield head, rest
    if cfg.select.by and "." in cfg.select.by:
        head, _, rest = cfg.select.by.partition(".")
        yield head, rest


def parsed_fields(cfg: RunConfig, stage: StageConfig) -> dict[str, str]:
    """The columns `parse: json` gives `stage`: field -> kind (int64, float64, bool, string,
    or json: a JSON string). With json_schema properties, one per property; without, one per
    field the config reads (`NAME.FIELD` in a template, keep_if or select.by), so that every
    shard has the same columns. Empty without `parse: json`."""
    if stage.parse != "json":
        return {}
    props = _schema_properties(stage)
    if props is not None:
        return {name: _kind(prop) for name, prop in props.items()}
    refs = sorted({f for s, f in _field_refs(cfg) if s == stage.name and f not in STAGE_PROVENANCE})
    return dict.fromkeys(refs, "json")


def stage_columns(cfg: RunConfig, stage: StageConfig) -> list[str]:
    """The columns stage NAME adds (and later stages carry): NAME, NAME.SUFFIX, NAME.FIELD."""
    return [
        stage.name,
        *(f"{stage.name}.{s}" for s in STAGE_PROVENANCE),
        *(f"{stage.name}.{f}" for f in parsed_fields(cfg, stage)),
    ]


class _Checker:
    """The checks of one config; each raises ValueError naming the stage and the name."""

    def __init__(self, cfg: RunConfig, prompt_fields: frozenset[str] | None = None) -> None:
        self.cfg = cfg
        self.meta = known_prompt_fields(cfg) if prompt_fields is None else prompt_fields
        self.index = {s.name: i for i, s in enumerate(cfg.stages)}

    def known_list(self, before: int) -> str:
        names = ["prompt", *sorted(self.meta or ())]
        names += [s.name for s in self.cfg.stages[:before]]
        if self.meta is None:
            names.append("(and the prompt records' fields, checked at plan time)")
        return ", ".join(names)

    def names(self) -> None:
        seen: dict[str, int] = {}
        for i, stage in enumerate(self.cfg.stages):
            at = where(i, stage)
            if stage.name in seen:
                raise ValueError(f"{at}: name already used by stages[{seen[stage.name]}]")
            seen[stage.name] = i
            if stage.name == SINGLE_STEP:
                raise ValueError(
                    f"{at}: `{SINGLE_STEP}` is the name of the single-step run's stage; "
                    "choose another"
                )
            if stage.name in RESERVED_NAMES:
                raise ValueError(
                    f"{at}: `{stage.name}` is a column every record has; choose another name"
                )
            if self.meta is not None and stage.name in self.meta:
                raise ValueError(
                    f"{at}: `{stage.name}` is also a field of the prompt records "
                    f"(prompts.type {self.cfg.prompts.type}); choose another name"
                )
            props = _schema_properties(stage) or {}
            for prop in props:
                if stage.parse == "json" and prop in STAGE_PROVENANCE:
                    raise ValueError(
                        f"{at}: guided.json_schema property `{prop}` would be the column "
                        f"{stage.name}.{prop}, which the stage's provenance uses; rename it"
                    )

    def field(self, at: str, what: str, name: str, field: str) -> None:
        """`name.field` read at `at`: stage `name` must parse JSON and list `field`."""
        stage = self.cfg.stages[self.index[name]]
        if stage.parse != "json":
            raise ValueError(
                f"{at}: {what} reads field `{field}` of stage `{name}`, which has no "
                "`parse: json` (only parsed stages have fields)"
            )
        props = _schema_properties(stage)
        if props is not None and field not in props:
            raise ValueError(
                f"{at}: {what} reads `{name}.{field}`, but the json_schema of stage "
                f"`{name}` has no property `{field}` (properties: {', '.join(props)})"
            )

    def later(self, i: int, at: str, what: str, name: str) -> None:
        """Stage `name` is stage i itself or after it: a row of stage i cannot read it."""
        j = self.index[name]
        rel = "this stage itself" if j == i else f"a later stage (stages[{j}])"
        raise ValueError(
            f"{at}: {what}, which is {rel}; a stage reads only the prompt and earlier "
            f"stages (known: {self.known_list(i)})"
        )

    def templates(self, i: int, stage: StageConfig) -> None:
        at = where(i, stage)
        for key in _TEMPLATE_KEYS:
            text = getattr(stage, key)
            if not text:
                continue
            try:
                tv = template_vars(text)
            except TemplateError as exc:
                raise ValueError(f"{at}: {key}: {exc}") from None
            for name in sorted(tv.names):
                uses = f"{key} uses {{{{ {name} }}}}"
                j = self.index.get(name)
                if j is not None and j >= i:
                    self.later(i, at, uses, name)
                if j is not None:
                    for f in sorted(tv.fields.get(name, ())):
                        self.field(at, f"{key} {{{{ {name}.{f} }}}}", name, f)
                elif name != "prompt" and self.meta is not None and name not in self.meta:
                    raise ValueError(
                        f"{at}: {uses}, which is neither a prompt field nor an earlier "
                        f"stage (known: {self.known_list(i)})"
                    )

    def column(self, i: int, at: str, what: str, name: str, upto: int) -> None:
        """A column name read by a keep_if of stage i (upto = i + 1) or by select.by (upto =
        every stage): record columns, the columns of stages[:upto], prompt fields."""
        if name in _RECORD_COLUMNS:
            return
        head, dot, rest = name.partition(".")
        if head in self.index:
            if self.index[head] >= upto:
                self.later(i, at, f"{what} reads `{name}` of stage {head}", head)
            if dot and rest not in STAGE_PROVENANCE:
                self.field(at, what, head, rest)
            return
        if not dot and (self.meta is None or name in self.meta):
            return
        known = [*sorted(_RECORD_COLUMNS)]
        known += [c for s in self.cfg.stages[:upto] for c in stage_columns(self.cfg, s)]
        if self.meta:
            known += sorted(self.meta)
        raise ValueError(
            f"{at}: {what} reads `{name}`, which is neither a column nor a prompt field "
            f"(known: {', '.join(known)})"
        )

    def keep_if(self, i: int, stage: StageConfig) -> None:
        if not stage.keep_if:
            return
        at = where(i, stage)
        try:
            expr = parse_expr(stage.keep_if, f"{at}: keep_if")
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
        for name in sorted(expr.names):
            self.column(i, at, f"keep_if {stage.keep_if!r}", name, i + 1)

    def select(self) -> None:
        cfg, sel = self.cfg, self.cfg.select
        if not cfg.stages:
            if sel.strategy != "all" or sel.stage:
                raise ValueError(
                    f"select: strategy {sel.strategy!r} compares samples of a stage and its "
                    "scores from a parsed stage: it needs `stages` (a run without them has "
                    "one step, `generate`)"
                )
            if cfg.output.format == "dpo":
                raise ValueError(
                    "output.format: dpo needs chosen / rejected pairs: `stages` with a scored "
                    "stage and `select.strategy: pairs`"
                )
            return
        if sel.stage and sel.stage not in self.index:
            raise ValueError(
                f"select.stage: {sel.stage!r} is not a stage "
                f"(stages: {', '.join(s.name for s in cfg.stages)})"
            )
        if cfg.output.format == "dpo" and sel.strategy != "pairs":
            raise ValueError(
                f"output.format: dpo needs select.strategy: pairs (got {sel.strategy!r})"
            )
        if sel.strategy == "all":
            return
        compared = compared_stage(cfg)
        if compared is None:
            raise ValueError(
                f"select.strategy {sel.strategy!r} compares the samples of one stage, but no "
                "stage has sampling.n > 1; set n on the stage whose samples are compared"
            )
        k = self.index[compared]
        if stage_n(cfg, cfg.stages[k]) < 2:
            raise ValueError(
                f"select.stage: {compared!r} has sampling.n = 1: it has no samples to compare"
            )
        by = sel.by or ""
        head, dot, rest = by.partition(".")
        if head not in self.index or not dot or rest in STAGE_PROVENANCE:
            raise ValueError(
                f"select.by: {by!r} is not a parsed column of a stage (write STAGE.FIELD of a "
                "stage with `parse: json`, e.g. judge.score)"
            )
        self.field("select.by", f"{by!r}", head, rest)
        if self.index[head] < k:
            raise ValueError(
                f"select.by: {by!r} comes from stages[{self.index[head]}] ({head}), before the "
                f"compared stage {compared!r}: every sample of a prompt would share that score"
            )
        kind = parsed_fields(cfg, cfg.stages[self.index[head]]).get(rest)
        if kind == "string":
            raise ValueError(f"select.by: {by!r} is a string in the json_schema; use a number")


def check_multistage(cfg: RunConfig, prompt_fields: frozenset[str] | None = None) -> None:
    """Every load-time check of `stages`, `select` and `output.format` (a no-op for a
    single-step run with the default select and a raw or sft output). `prompt_fields`: the
    prompt records' metadata keys when known from the data (plan time), else those the
    source type makes known at load (none known for jsonl / parquet: any name passes)."""
    names = [s.name for s in cfg.stages]
    if cfg.clean.stage is not None and cfg.clean.stage not in names:
        raise ValueError(
            f"clean.stage: {cfg.clean.stage!r} is not a stage of this run "
            f"({', '.join(names) or 'a one-step run has none: leave it unset'})"
        )
    for i, stage in enumerate(cfg.stages):
        if stage.resources and cfg.cluster.address is None:
            raise ValueError(
                f"{where(i, stage)}: resources {stage.resources} need a cluster whose workers "
                "advertise them (cluster.address); the LocalCluster a run starts advertises "
                "none, so the stage could never run"
            )
    checker = _Checker(cfg, prompt_fields)
    checker.names()
    for i, stage in enumerate(cfg.stages):
        checker.templates(i, stage)
        checker.keep_if(i, stage)
    checker.select()
