"""Device prices (`cost`) and the run's spending cap (`budget`)."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from synthgen.config.base import Section as _Section

DEFAULT_PRICES: dict[str, float] = {
    "RTX 3090": 0.22,
    "RTX 4090": 0.35,
    "L4": 0.45,
    "A100": 1.20,
    "H100": 2.20,
    "cpu-core": 0.02,
}


# certificates from infra/make-certs.sh are named CN=synthgen-NAME
LEASE_CN_PREFIX = "synthgen-"
_WORKER_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CostConfig(_Section):
    """Device prices in USD per hour, matched against the device name each worker detects.

    Keys match as whole words of the detected name ("RTX 4090" matches "NVIDIA GeForce RTX
    4090", "L4" does not match "L40S"); the longest matching key wins. CPU workers pay
    `cpu-core` x usable cores unless a key matches the CPU model. A worker the operator
    leased at its own price (`worker_prices`, matched by the worker's TLS certificate or its
    name) pays that price instead. The rented host never states its own price.
    """

    prices: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per hour by device type; 'cpu-core' is per CPU core-hour. Keys given "
        "are merged over the defaults; a key set to null removes a default.",
    )
    unknown_device: Literal["zero", "error"] = Field(
        "zero",
        description="A device no price key matches: 'zero' records price 0 (flagged in the "
        "report; refused when a budget is set), 'error' fails the shard.",
    )
    worker_prices: dict[str, float] = Field(
        default_factory=dict,
        description="USD per hour per worker process under the operator's lease with a host; "
        "wins over `prices` for the workers it names. A key matches a worker's TLS certificate "
        "name (CN `synthgen-HOST` from `infra/make-certs.sh --issue worker HOST`; the key may "
        "be `synthgen-HOST` or `HOST`), else its Dask worker name exactly or as the prefix of "
        "the names the infra scripts give (`KEY-gpuN`, `KEY-cpu`). See docs/cost.md.",
    )
    throughput_hints: dict[str, float] = Field(
        default_factory=dict,
        description="Completion tokens/s per worker by device type, used by `synthgen estimate` "
        "for devices with no measurement.",
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_default_prices(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("prices"), dict):
            merged: dict[str, Any] = dict(DEFAULT_PRICES)
            for key, price in data["prices"].items():
                if price is None:
                    merged.pop(key, None)
                else:
                    merged[key] = price
            data = {**data, "prices": merged}
        return data

    @model_validator(mode="after")
    def _check_prices(self) -> CostConfig:
        for key, value in {**self.prices, **self.throughput_hints}.items():
            if not key.strip():
                raise ValueError("cost: empty device key")
            if value < 0:
                raise ValueError(f"cost: {key!r}: must be >= 0, got {value}")
        certs: dict[str, str] = {}
        for key, value in self.worker_prices.items():
            where = f"cost.worker_prices[{key!r}]"
            if not _WORKER_KEY.fullmatch(key):
                raise ValueError(
                    f"{where}: a worker key is a certificate name (synthgen-HOST or HOST) or a "
                    "Dask worker name: letters, digits, '.', '_' and '-' only"
                )
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{where}: USD per hour must be finite and >= 0, got {value}")
            host = key.removeprefix(LEASE_CN_PREFIX)
            if host in certs:
                raise ValueError(
                    f"{where} and cost.worker_prices[{certs[host]!r}] name the same worker "
                    f"certificate (CN {LEASE_CN_PREFIX}{host}): keep one"
                )
            certs[host] = key
        return self


class BudgetConfig(_Section):
    """The run's spending cap."""

    max_cost_usd: float | None = Field(
        None,
        gt=0.0,
        description="No new shard starts once the run's ledger plus the running shards' "
        "projected cost would pass this; the run ends partial and resumes with a higher cap.",
    )
