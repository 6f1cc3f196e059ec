"""Run configuration: pydantic models by concern, loaded from YAML, validated at load time.

The models live in one module per concern (prompts, model, cluster, output, clean, cost,
schedule, verify, run); loading and overrides in `load` and `overrides`; the secrets policy in
`secret_rule` and `secrets`. This package re-exports the public names, so
`from synthgen.config import RunConfig, load_config` works everywhere.
"""

from __future__ import annotations

from synthgen.config.clean import (
    BenchmarkFile,
    CleanConfig,
    DecontaminateConfig,
    ExactDedupConfig,
    FiltersConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageFilterConfig,
    NearDedupConfig,
    RefusalFilterConfig,
    TruncatedFilterConfig,
    WordCountFilterConfig,
)
from synthgen.config.cluster import ClusterConfig, TLSConfig
from synthgen.config.cost import DEFAULT_PRICES, BudgetConfig, CostConfig
from synthgen.config.hub import HubConfig
from synthgen.config.load import config_from_dict, load_config
from synthgen.config.model import FakeOptions, ModelConfig, SamplingConfig, VllmOptions
from synthgen.config.output import OutputConfig
from synthgen.config.overrides import apply_overrides, parse_override
from synthgen.config.prompts import (
    BuiltinSource,
    InputConfig,
    JsonlSource,
    ParquetSource,
    PromptSource,
    ShardsConfig,
    TemplateSource,
)
from synthgen.config.run import RunConfig
from synthgen.config.schedule import ScheduleConfig, cron_problem
from synthgen.config.verify import VerifyConfig

__all__ = [
    "DEFAULT_PRICES",
    "BudgetConfig",
    "BuiltinSource",
    "BenchmarkFile",
    "CleanConfig",
    "DecontaminateConfig",
    "ClusterConfig",
    "CostConfig",
    "ExactDedupConfig",
    "FakeOptions",
    "FiltersConfig",
    "GopherQualityConfig",
    "GopherRepetitionConfig",
    "InputConfig",
    "JsonlSource",
    "LanguageFilterConfig",
    "ModelConfig",
    "NearDedupConfig",
    "HubConfig",
    "OutputConfig",
    "ParquetSource",
    "PromptSource",
    "RefusalFilterConfig",
    "RunConfig",
    "SamplingConfig",
    "ScheduleConfig",
    "ShardsConfig",
    "TLSConfig",
    "TemplateSource",
    "TruncatedFilterConfig",
    "VerifyConfig",
    "VllmOptions",
    "WordCountFilterConfig",
    "apply_overrides",
    "config_from_dict",
    "cron_problem",
    "load_config",
    "parse_override",
]
