"""The whole run config (`RunConfig`), its fingerprint and the run id derived from it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, model_validator

from synthgen.config.base import Section as _Section
from synthgen.config.clean import CleanConfig
from synthgen.config.cluster import ClusterConfig
from synthgen.config.cost import BudgetConfig, CostConfig
from synthgen.config.model import ModelConfig, SamplingConfig
from synthgen.config.multistage import check_multistage
from synthgen.config.output import OutputConfig
from synthgen.config.prompts import BuiltinSource, InputConfig, PromptSource, ShardsConfig
from synthgen.config.schedule import ScheduleConfig
from synthgen.config.stages import SelectConfig, StageConfig
from synthgen.config.verify import VerifyConfig

CPU_SHARD_SIZE = 8  # prompts per shard when `shards.size` is unset and not sized by work


class RunConfig(_Section):
    name: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Run name: the prefix of the derived run id and the default deployment name.",
    )
    run_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Unset: derived from the config, so the same config resumes the same run.",
    )
    prompts: PromptSource = Field(
        default_factory=lambda: BuiltinSource(type="builtin"),
        description="Prompt source, chosen by `type`; the keys of each type follow.",
    )
    input: InputConfig = Field(default_factory=InputConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    stages: list[StageConfig] = Field(
        default_factory=list,
        description="Generation steps in order (multi-stage runs); empty = one step, "
        "`generate`, over the prompts with `model` and `sampling`.",
    )
    select: SelectConfig = Field(default_factory=SelectConfig)

    @model_validator(mode="after")
    def _check_stages(self) -> RunConfig:
        check_multistage(self)
        names = [s.name for s in self.stages] or ["generate"]
        if self.output.stage is not None and self.output.stage not in names:
            raise ValueError(
                f"output.stage: {self.output.stage!r} is not a stage of this run "
                f"({', '.join(names)})"
            )
        return self

    @model_validator(mode="after")
    def _check_untrusted(self) -> RunConfig:
        setting = self.cluster.untrusted_workers
        if setting is True and not self.output.uri.startswith("s3://"):
            raise ValueError(
                "cluster.untrusted_workers: true needs an object-store output (output.uri "
                f"s3://...): workers get presigned URLs, which {self.output.uri!r} has none of"
            )
        return self

    def untrusted_workers(self) -> bool:
        """Whether the workers get no storage credentials (`cluster.untrusted_workers`;
        auto: a TLS cluster writing to s3://)."""
        setting = self.cluster.untrusted_workers
        if setting == "auto":
            return self.cluster.tls is not None and self.output.uri.startswith("s3://")
        return bool(setting)

    @model_validator(mode="after")
    def _derive_run_id(self) -> RunConfig:
        if self.run_id is None:
            self.run_id = f"{self.name}-{self.fingerprint()[:10]}"
        return self

    def fingerprint(self) -> str:
        """Hash of what determines the generated data (not where or how fast it runs).

        Values equal to their defaults are left out, so a config means the same run whether
        a default is written out or not, and a synthgen release that adds a key with a
        default (or drops one) keeps the run ids of the runs it can resume."""
        data = self.model_dump(
            mode="json",
            include={"name", "prompts", "shards", "model", "sampling", "clean", "stages", "select"},
            exclude_defaults=True,
        )
        shards = data.get("shards", {})
        if shards.get("size") == CPU_SHARD_SIZE:  # the former default: such runs keep their ids
            shards.pop("size")
        if self.shards_by_work():  # unset size means a different plan here: a different run
            shards["size"] = "work"
        if shards:
            data["shards"] = shards
        else:
            data.pop("shards", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def models(self) -> list[ModelConfig]:
        """The run's model and every stage's own model."""
        return [self.model, *(s.model for s in self.stages if s.model is not None)]

    def shards_by_work(self) -> bool:
        """`shards.size` unset and an engine whose speed is known before it runs (a GPU
        engine, or the fake engine simulating one): shards are sized by engine time
        (`synthgen.stages.sizing.shard_size`); otherwise by `CPU_SHARD_SIZE` prompts."""
        if self.shards.size is not None:
            return False
        return any(
            m.needs_gpu or (m.engine == "fake" and m.fake.seconds_per_token > 0)
            for m in self.models()
        )

    def public_dict(self) -> dict[str, Any]:
        """The config with every credential shown as `***`: safe for manifests and logs (the
        same as `model_dump(mode="json")`; `secret_rule.reveal` is the deliberate opposite)."""
        return self.model_dump(mode="json")


RunConfig.model_rebuild()
