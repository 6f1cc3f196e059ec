"""`synthgen estimate CONFIG`: projected tokens, time and cost of a run per device type.

Throughput comes from (in order of preference per device type): a calibration run of the
configured engine on a small sample of the run's own prompts on this machine, measured
ledgers of earlier runs under the same output (same model), or `cost.throughput_hints`.
Cost = price x projected worker-seconds / 3600, the same arithmetic as the ledger.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.config import RunConfig
from synthgen.cost.prices import (
    LEDGER_SCHEMA,
    cost_of,
    parse_device_label,
    price_for_device,
    usd_per_million,
    worker_price_override,
)
from synthgen.cost.report import _text_table
from synthgen.engines.base import GenRequest, prompt_seed
from synthgen.engines.cache import get_engine
from synthgen.errors import ConfigError
from synthgen.io.layout import all_runs_ledger_glob
from synthgen.io.store import Store
from synthgen.stages.prompts import load_prompts

Row = dict[str, Any]


@dataclass(frozen=True)
class Throughput:
    """Measured (or hinted) speed of one worker of a device type on this model."""

    device_type: str
    source: str  # "calibration" | "ledger" | "hint"
    seconds_per_prompt: float | None  # wall seconds per prompt (covers prefill + decode)
    tokens_per_prompt: float | None  # completion tokens per prompt
    tokens_per_s: float | None  # completion tokens per second per worker
    price_per_hour: float | None = None  # the measured worker's own price, when known
    samples: int = 0  # prompts measured


def calibrate(cfg: RunConfig, sample: int = 8) -> tuple[Throughput, int, str]:
    """Run the configured engine on the first `sample` prompts; (throughput, prompts, model).

    Model load time is excluded (it is paid once per worker, not per prompt).
    """
    if sample < 1:
        raise ConfigError(f"estimate: --sample must be >= 1, got {sample}")
    records = load_prompts(cfg).records
    if not records:
        raise ConfigError("estimate: the prompt source yields no prompts")
    chosen = records[:sample]
    engine = get_engine(cfg.model)
    requests = [
        GenRequest(p.prompt_id, p.messages, prompt_seed(cfg.sampling.seed, p.prompt_id))
        for p in chosen
    ]
    started = time.perf_counter()
    completions = engine.generate(requests, cfg.sampling)
    seconds = time.perf_counter() - started
    tokens = sum(c.completion_tokens for c in completions)
    device = parse_device_label(engine.info.device)
    price = price_for_device(device, cfg.cost, worker_price_override())
    tp = Throughput(
        device_type=price.device_type,
        source="calibration",
        seconds_per_prompt=seconds / len(chosen),
        tokens_per_prompt=tokens / len(chosen),
        tokens_per_s=tokens / seconds if seconds > 0 else None,
        price_per_hour=price.per_hour,
        samples=len(chosen),
    )
    return tp, len(records), engine.info.model


def ledger_throughputs(ledger_rows: Sequence[Row], model: str | None = None) -> list[Throughput]:
    """Per device type, from earlier runs' successful attempts (optionally one model only)."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in ledger_rows:
        if (
            r["status"] == "succeeded"
            and r["prompts"] > 0
            and (model is None or r["model"] == model)
        ):
            groups[r["device_type"]].append(r)
    out = []
    for dt, rows in sorted(groups.items()):
        wall = sum(r["wall_seconds"] for r in rows)
        prompts = sum(r["prompts"] for r in rows)
        tokens = sum(r["completion_tokens"] for r in rows)
        out.append(
            Throughput(
                device_type=dt,
                source="ledger",
                seconds_per_prompt=wall / prompts,
                tokens_per_prompt=tokens / prompts,
                tokens_per_s=tokens / wall if wall > 0 else None,
                price_per_hour=sum(r["price_per_hour"] * r["wall_seconds"] for r in rows) / wall
                if wall > 0
                else None,
                samples=prompts,
            )
        )
    return out


def read_earlier_ledgers(cfg: RunConfig) -> list[Row]:
    """Every ledger row under OUTPUT/runs/*/ledger/ (earlier runs of any config)."""
    store = Store(cfg.output)
    pattern = all_runs_ledger_glob(store)

    def _glob() -> list[str]:
        try:
            return sorted(store.fs.glob(pattern))
        except FileNotFoundError:
            return []

    rows: list[Row] = []
    for path in store.retry(_glob, f"listing {store.location(pattern)}"):
        table = pq.read_table(pa.BufferReader(store.read_bytes(path)))
        rows += table.select(LEDGER_SCHEMA.names).to_pylist()
    return rows


def project(
    cfg: RunConfig,
    prompts: int,
    measured: Sequence[Throughput],
    workers: int = 1,
) -> list[Row]:
    """One row per device type (price table + measured ones): tokens, time and cost."""
    if workers < 1:
        raise ConfigError(f"estimate: --workers must be >= 1, got {workers}")
    best: dict[str, Throughput] = {}
    rank = {"calibration": 0, "ledger": 1, "hint": 2}
    for m in measured:
        if m.device_type not in best or rank[m.source] < rank[best[m.device_type].source]:
            best[m.device_type] = m
    # tokens per prompt do not depend on the device: prefer the calibration/ledger figure
    tpp = next(
        (
            t.tokens_per_prompt
            for t in sorted(measured, key=lambda t: rank[t.source])
            if t.tokens_per_prompt
        ),
        None,
    )
    if tpp is None:
        tpp = float(cfg.sampling.max_new_tokens)  # upper bound when nothing was measured
    for dt, tps in cfg.cost.throughput_hints.items():
        if dt not in best and tps > 0:
            best[dt] = Throughput(dt, "hint", tpp / tps, tpp, tps)
    rows = []
    for dt in list(dict.fromkeys([*cfg.cost.prices, *best])):
        tp: Throughput | None = best.get(dt)
        price = (
            tp.price_per_hour if tp and tp.price_per_hour is not None else cfg.cost.prices.get(dt)
        )
        note = ""
        if dt == "cpu-core" and (tp is None or tp.price_per_hour is None):
            note = "per core; x cores of the worker"
        row: Row = {
            "device_type": dt,
            "price_per_hour": price,
            "source": tp.source if tp else "no measurement",
            "tokens_per_s": tp.tokens_per_s if tp else None,
            "completion_tokens": prompts * tpp,
            "worker_hours": None,
            "wall_hours": None,
            "cost_usd": None,
            "usd_per_1m_completion_tokens": None,
            "note": note,
        }
        if tp and tp.seconds_per_prompt is not None:
            worker_s = prompts * tp.seconds_per_prompt
            row["worker_hours"] = worker_s / 3600
            row["wall_hours"] = worker_s / 3600 / workers
            if price is not None:
                cost = cost_of(price, worker_s)
                row["cost_usd"] = cost
                row["usd_per_1m_completion_tokens"] = usd_per_million(cost, prompts * tpp)
        rows.append(row)
    return rows


def format_estimate(cfg: RunConfig, prompts: int, rows: Sequence[Row], workers: int) -> str:
    def f(v: Any, kind: str = "") -> str:
        if v is None:
            return "-"
        if kind == "usd":
            return f"${v:,.4f}" if v < 100 else f"${v:,.2f}"
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"
        return str(v)

    cells = [
        [
            "device",
            "$/h",
            "from",
            "tok/s/worker",
            "tokens",
            "worker-h",
            f"wall h ({workers}w)",
            "$ total",
            "$/1M tok",
        ]
    ]
    for r in rows:
        cells.append(
            [
                r["device_type"], f(r["price_per_hour"], "usd"), r["source"], f(r["tokens_per_s"]),
                f"{r['completion_tokens']:,.0f}", f(r["worker_hours"]), f(r["wall_hours"]),
                f(r["cost_usd"], "usd"), f(r["usd_per_1m_completion_tokens"], "usd"),
            ]
        )  # fmt: skip
    head = (
        f"estimate for run {cfg.run_id}: {prompts:,} prompts, max_new_tokens="
        f"{cfg.sampling.max_new_tokens}; model load and idle time not included"
    )
    tail = "device types marked '-' have no measurement: run a shard on one, or set cost.throughput_hints"
    return "\n".join([head, "", _text_table(cells), "", tail])


def estimate(
    cfg: RunConfig, sample: int = 8, calibrate_here: bool = True, workers: int = 1
) -> tuple[str, list[Row]]:
    """Calibrate (optional), add earlier ledgers, project; returns (text, rows)."""
    measured: list[Throughput] = []
    model: str | None = cfg.model.path
    prompts: int | None = None
    if calibrate_here:
        tp, prompts, model = calibrate(cfg, sample)
        measured.append(tp)
    measured += ledger_throughputs(read_earlier_ledgers(cfg), model)
    if prompts is None:
        prompts = len(load_prompts(cfg).records)
    rows = project(cfg, prompts, measured, workers)
    return format_estimate(cfg, prompts, rows, workers), rows
