"""Per-worker price, read once at worker start (hosts on compute markets price per machine).

Either set the environment variable on the worker:

    SYNTHGEN_PRICE_PER_HOUR=0.31 dask worker tls://scheduler:8786 ...

or pass it as a worker option through this preload module:

    dask worker tls://scheduler:8786 --preload synthgen.cost.worker_price \
        --price-per-hour=0.31   (options after the preload are passed to it)

Either overrides the config's price table for that worker only.
"""

from __future__ import annotations

import math
import os
from typing import Any

import click

from synthgen.errors import ConfigError

PRICE_ENV = "SYNTHGEN_PRICE_PER_HOUR"

PRICE_PER_HOUR: float | None = None  # set by the preload option or the env var at worker start


def parse_price(raw: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected USD per hour as a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: expected a finite price >= 0, got {raw!r}")
    return value


@click.command()
@click.option(
    "--price-per-hour",
    type=str,
    default=None,
    help="USD per hour this worker bills; overrides the price table.",
)
def dask_setup(worker: Any, price_per_hour: str | None) -> None:
    """Dask preload hook: fix this worker process's price for its lifetime."""
    global PRICE_PER_HOUR
    if price_per_hour is not None:
        PRICE_PER_HOUR = parse_price(price_per_hour, "--price-per-hour")
    elif os.environ.get(PRICE_ENV, "").strip():
        PRICE_PER_HOUR = parse_price(os.environ[PRICE_ENV], PRICE_ENV)
