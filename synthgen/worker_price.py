"""Per-worker price, read once at worker start (hosts on compute markets price per machine).

Either set the environment variable on the worker:

    SYNTHGEN_PRICE_PER_HOUR=0.31 dask worker tls://scheduler:8786 ...

or pass it as a worker option through this preload module:

    dask worker tls://scheduler:8786 --preload synthgen.worker_price \
        --preload-argv --price-per-hour=0.31

Either overrides the config's price table for that worker only.
"""

from __future__ import annotations

import os
from typing import Any

import click

PRICE_PER_HOUR: float | None = None  # set by the preload option or the env var at worker start


@click.command()
@click.option(
    "--price-per-hour",
    type=str,
    default=None,
    help="USD per hour this worker bills; overrides the price table.",
)
def dask_setup(worker: Any, price_per_hour: str | None) -> None:
    """Dask preload hook: fix this worker process's price for its lifetime."""
    from synthgen.cost import PRICE_ENV, parse_price

    global PRICE_PER_HOUR
    if price_per_hour is not None:
        PRICE_PER_HOUR = parse_price(price_per_hour, "--price-per-hour")
    elif os.environ.get(PRICE_ENV, "").strip():
        PRICE_PER_HOUR = parse_price(os.environ[PRICE_ENV], PRICE_ENV)
