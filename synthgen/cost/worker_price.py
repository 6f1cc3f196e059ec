"""Removed: a worker no longer states its own price.

Earlier versions let a rented host set its own price per hour with this module, as
`dask worker ... --preload synthgen.cost.worker_price --price-per-hour=X` (or with
$SYNTHGEN_PRICE_PER_HOUR). A worker's price is now the operator's word: the run config's
`cost.prices` table, or the operator's lease with that worker in `cost.worker_prices`
(docs/cost.md).

The module stays only so that a worker still started with this preload refuses to start,
with this explanation: importing it raises. (An error in a preload's `dask_setup` is only
logged by distributed and the worker runs on; a missing module would say "No module
named ..." and nothing about where prices went.) Nothing in synthgen imports it.
"""

from __future__ import annotations

REMOVED = (
    "synthgen.cost.worker_price was removed: a worker no longer states its own price. Drop "
    "'--preload synthgen.cost.worker_price --price-per-hour=...' from the worker's command "
    "and set the price in the run config: cost.worker_prices, by the worker's certificate "
    "name or worker name (docs/cost.md)"
)

raise ImportError(REMOVED)
