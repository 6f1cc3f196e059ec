"""Multi-stage generation (`stages:`, `select:`): the generation steps of a run, in order.

A run without `stages` is one generation step named `generate` over the prompts (today's
run). With `stages`, each entry is a generation step whose prompt is a Jinja2 template over
the prompt record's fields and every earlier stage's output columns; its rows feed the next
stage. Column names a stage writes: `NAME` (the completion text), `NAME.FIELD` (fields
parsed with `parse: json`), `NAME.messages`, `NAME.finish_reason`, `NAME.prompt_tokens`,
`NAME.completion_tokens`, `NAME.seed`, `NAME.model`; `sample_index` numbers the samples of
one prompt (`sampling.n` > 1).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from synthgen.config.base import Section as _Section
from synthgen.config.model import ModelConfig

STAGE_NAME = r"^[a-z][a-z0-9_]*$"


class GuidedConfig(_Section):
    """Constrained output: exactly one of a JSON schema, a regular expression or choices."""

    json_schema: dict[str, Any] | None = Field(
        None, description="JSON schema the output must satisfy (vLLM: structured outputs)."
    )
    regex: str | None = Field(None, description="Regular expression the whole output matches.")
    choice: list[str] | None = Field(None, description="The output is one of these strings.")
    max_attempts: PositiveInt = Field(
        3,
        description="Engines without constrained decoding (transformers, fake): tries per "
        "sample (validate, resample with a derived seed) before the row is dropped with "
        "reason `schema_invalid`.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> GuidedConfig:
        set_ = [k for k in ("json_schema", "regex", "choice") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(
                "guided: set exactly one of json_schema, regex, choice "
                f"(got {', '.join(set_) or 'none'})"
            )
        return self


class StageSampling(_Section):
    """Per-stage sampling: unset keys take the run's `sampling` value."""

    temperature: float | None = Field(None, ge=0.0, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling.")
    top_k: int | None = Field(None, ge=1, description="Top-k sampling.")
    max_new_tokens: PositiveInt | None = Field(None, description="Most completion tokens.")
    seed: int | None = Field(None, description="Base seed of this stage.")
    n: PositiveInt | None = Field(
        None, description="Samples per input row; each sample is its own output row."
    )


class StageConfig(_Section):
    """One generation step of a multi-stage run."""

    name: str = Field(
        ...,
        pattern=STAGE_NAME,
        description="Stage name: its output column, its folder under runs/RUN_ID/stages/.",
    )
    prompt: str = Field(
        ...,
        min_length=1,
        description="Jinja2 template of the user turn, over the prompt record's fields "
        "(`prompt`, its metadata keys) and earlier stages' columns (`{{ instruction }}`, "
        "`{{ judge.score }}`).",
    )
    system: str | None = Field(None, description="Jinja2 template of the system turn.")
    model: ModelConfig | None = Field(
        None, description="This stage's model; unset = the run's `model`."
    )
    sampling: StageSampling = Field(default_factory=StageSampling)
    guided: GuidedConfig | None = Field(None, description="Constrained output.")
    parse: Literal["json"] | None = Field(
        None, description="json: the output's top-level fields become columns NAME.FIELD."
    )
    keep_if: str | None = Field(
        None,
        description="Expression over columns (e.g. `judge.score >= 7`); rows where it is "
        "false are dropped with reason `keep_if`. Comparisons, and/or/not, arithmetic, "
        "literals; no function calls.",
    )
    resources: dict[str, float] | None = Field(
        None,
        description="Dask worker resources one unit of this stage needs, e.g. `{GPU_BIG: 1}`: "
        "its units (and their verification) run only on workers started with them "
        "(`dask worker --resources GPU_BIG=1`; needs `cluster.address`). Unset: the run's "
        "rule (`{cluster.gpu_resource: 1}` when the stage's model needs a GPU).",
    )

    @model_validator(mode="after")
    def _positive_resources(self) -> StageConfig:
        for key, amount in (self.resources or {}).items():
            if not key or amount <= 0:
                raise ValueError(
                    f"resources: {key!r}: {amount} (name a resource and ask for a positive "
                    "amount, e.g. {GPU_BIG: 1})"
                )
        return self


class SelectConfig(_Section):
    """Which of the samples of one prompt the published dataset keeps."""

    strategy: Literal["all", "best", "pairs"] = Field(
        "all",
        description="all: every kept sample; best: the highest `by` per prompt (reason "
        "`not_best` for the rest); pairs: chosen (highest) / rejected (lowest) per prompt.",
    )
    by: str | None = Field(None, description="The score column, e.g. `judge.score`.")
    stage: str | None = Field(
        None,
        description="The stage whose samples are compared (their text becomes chosen / "
        "rejected); unset = the last stage with `sampling.n` > 1.",
    )
    min_margin: float = Field(
        0.0,
        ge=0.0,
        description="pairs: chosen score - rejected score must exceed this (else reason "
        "`low_margin`); equal scores never make a pair.",
    )

    @model_validator(mode="after")
    def _needs_by(self) -> SelectConfig:
        if self.strategy != "all" and not self.by:
            raise ValueError(f"select.by: required with strategy {self.strategy!r}")
        return self
