"""The pipeline's side of the ledger: meter one shard attempt and write its row.

    meter = AttemptMeter.start(cfg, shard_id, attempt, device)    # after the engine loaded
    ...generate (in an engine turn), meter.charge_from(turn), write the shard...
    row = meter.finish_in(ledger, counts, "succeeded")            # before the commit marker
On an exception, `meter.finish_in(..., status="failed", error=...)` writes the failed
attempt's row too (it cost money), then the caller re-raises. `finish(fs, run_root, ...)` is
the same for the one caller still holding a filesystem and a run root (`run_shard`).
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from synthgen.config import RunConfig
from synthgen.cost import usage
from synthgen.cost.leases import WorkerIdentity, worker_lease
from synthgen.cost.ledger import Ledger
from synthgen.cost.prices import (
    AttemptStatus,
    Price,
    ShardAttempt,
    ledger_row,
    parse_device_label,
    price_for_device,
)
from synthgen.engines.turns import Turn, charged_until
from synthgen.errors import ConfigError


def gpus_used(cfg: RunConfig) -> int:
    return cfg.model.vllm.tensor_parallel_size if cfg.model.engine == "vllm" else 1


def worker_price(cfg: RunConfig, device_label: str, who: WorkerIdentity | None = None) -> Price:
    """The price of worker `who` (default: the one running this code) for `device_label`
    (its lease, else the table); refuses an unpriced device under a budget."""
    lease = worker_lease(cfg.cost, who)
    price = price_for_device(
        parse_device_label(device_label),
        cfg.cost,
        lease.per_hour if lease else None,
        gpus_used(cfg),
    )
    if price.source == "unknown" and cfg.budget.max_cost_usd is not None:
        raise ConfigError(
            f"cost.prices: no price for device {device_label!r} and budget.max_cost_usd is set: "
            f"a budget cannot be kept on an unpriced device; add cost.prices.<name> or lease "
            f"the worker at a price (cost.worker_prices)"
        )
    return price


def recorded_price(cfg: RunConfig, device_label: str, who: WorkerIdentity | None = None) -> Price:
    """The price to record for work worker `who` already did on `device_label`: as
    `worker_price`, but a device it refuses to price (unpriced under a budget, or
    `cost.unknown_device: error`) is recorded at 0, source "unknown", instead of the
    record failing."""
    try:
        return worker_price(cfg, device_label, who)
    except ConfigError:
        return Price(0.0, device_label, "unknown")


@dataclass
class Counts:
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    kept_records: int | None = None
    kept_tokens: int | None = None
    engine_seconds: float = 0.0


@dataclass
class AttemptMeter:
    cfg: RunConfig
    shard_id: str
    attempt: int
    device: str
    model: str
    price: Price
    worker: str
    started_at: datetime
    attempt_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    turn: Turn | None = None

    def charge_from(self, turn: Turn | None) -> None:
        """The attempt ran the engine in `turn`: its charged window starts there and ends at
        the next turn on this worker if that comes before the attempt ends
        (`synthgen.engines.turns`), so that attempts overlapping on one worker (one
        generating while another writes) are never charged the same seconds twice."""
        if turn is not None:
            self.turn = turn
            self.started_at = datetime.fromtimestamp(turn.started, tz=UTC)

    @classmethod
    def start(
        cls, cfg: RunConfig, shard_id: str, attempt: int, device: str, model: str
    ) -> AttemptMeter:
        """Start the clock (call after the engine is loaded: load time is the worker's)."""
        price = worker_price(cfg, device)
        return cls(
            cfg, shard_id, attempt, device, model, price, usage.worker_address(), datetime.now(UTC)
        )

    def finish_in(
        self,
        ledger: Ledger,
        counts: Counts,
        status: AttemptStatus,
        error: str | None = None,
    ) -> dict[str, Any]:
        """Stop the clock, write the ledger row and this worker's usage row; return the row."""
        row = self.row(counts, status, error)
        ledger.write(row)
        usage.record_attempt(row["run_id"], row["wall_seconds"], status == "succeeded", self.device)
        # keep a worker row current, so a worker that dies later still has one
        ledger.write_worker(
            usage.snapshot(
                row["run_id"], self.cfg.cost, device_pref=self.cfg.model.device, price=self.price
            )
        )
        return row

    def row(
        self, counts: Counts, status: AttemptStatus, error: str | None = None
    ) -> dict[str, Any]:
        """Stop the clock: the attempt's ledger row (not written)."""
        return ledger_row(
            ShardAttempt(
                run_id=self.cfg.run_id or "",
                shard_id=self.shard_id,
                attempt=self.attempt,
                attempt_id=self.attempt_id,
                worker=self.worker,
                host=socket.gethostname(),
                device=self.device,
                model=self.model,
                price=self.price,
                started_at=self.started_at,
                finished_at=datetime.fromtimestamp(charged_until(self.turn, time.time()), tz=UTC),
                engine_seconds=counts.engine_seconds,
                prompts=counts.prompts,
                prompt_tokens=counts.prompt_tokens,
                completion_tokens=counts.completion_tokens,
                kept_records=counts.kept_records,
                kept_tokens=counts.kept_tokens,
                status=status,
                error=error[:2000] if error else None,
            )
        )
