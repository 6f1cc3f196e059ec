"""`synthgen estimate CONFIG`: projected tokens, time and cost of a run per device type.

Throughput comes from (in order of preference per device type): a calibration run of the
configured engine on a small sample of the run's own prompts on this machine, measured
ledgers of earlier runs under the same output (same model), or `cost.throughput_hints`.
Cost = price x projected worker-seconds / 3600, the same arithmetic as the ledger.

Prices follow the ledger's rules: the operator's lease when the estimate runs on a worker
it names (`cost.worker_prices`), else the price table. An earlier ledger's prices count
only where the operator set them (sources "table" and "lease"); rows a worker priced
itself (source "worker", before prices stopped being read on the host) get the table's.
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
from synthgen.cost.leases import worker_lease
from synthgen.cost.prices import (
    LEDGER_SCHEMA,
    Price,
    cost_of,
    parse_device_label,
    price_for_device,
    usd_per_million,
)
from synthgen.cost.report import _text_table
from synthgen.engines.base import GenRequest, prompt_seed
from synthgen.engines.cache import get_engine
from synthgen.engines.devices import DeviceInfo
from synthgen.errors import ConfigError
from synthgen.io.layout import all_runs_ledger_glob
from synthgen.io.store import Store
from synthgen.stages.multi import StageStep
from synthgen.stages.plan import plan_table
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
    price_per_hour: float | None = None  # the measured worker's price, when the operator's
    samples: int = 0  # prompts measured


def _operator_price(cfg: RunConfig, device: DeviceInfo) -> Price:
    """The price a worker on `device` pays here: its lease if this process is a worker the
    config leases, else the table (the same rules as the ledger)."""
    lease = worker_lease(cfg.cost)
    return price_for_device(device, cfg.cost, lease.per_hour if lease else None)


# ledger price sources the operator set (a "worker" source was the host's own word)
OPERATOR_SOURCES = ("table", "lease")


def calibrate(cfg: RunConfig, sample: int = 8) -> tuple[Throughput, int, str, list[Row]]:
    """Run the configured engine on the first `sample` prompts (through every stage of a
    multi-stage run); (throughput, prompts, model, per-stage rows: [] for one step).

    Model load time is excluded (it is paid once per worker, not per prompt).
    """
    if sample < 1:
        raise ConfigError(f"estimate: --sample must be >= 1, got {sample}")
    records = load_prompts(cfg).records
    if not records:
        raise ConfigError("estimate: the prompt source yields no prompts")
    chosen = records[:sample]
    if cfg.stages:
        tp, model, per_stage = calibrate_stages(cfg, chosen)
        return tp, len(records), model, per_stage
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
    price = _operator_price(cfg, device)
    tp = Throughput(
        device_type=price.device_type,
        source="calibration",
        seconds_per_prompt=seconds / len(chosen),
        tokens_per_prompt=tokens / len(chosen),
        tokens_per_s=tokens / seconds if seconds > 0 else None,
        price_per_hour=price.per_hour,
        samples=len(chosen),
    )
    return tp, len(records), engine.info.model, []


def calibrate_stages(cfg: RunConfig, chosen: list[Any]) -> tuple[Throughput, str, list[Row]]:
    """A multi-stage run's calibration: the sample prompts through every stage in order, as
    the workers run them (n samples, guided decoding, keep_if drops included), each stage on
    its own model. Returns the whole chain's throughput per *prompt* (what `project`
    multiplies by the run's prompts), the models, and one row per stage."""
    rows = plan_table(chosen)
    seconds = tokens = 0.0
    per_stage: list[Row] = []
    models: list[str] = []
    device = ""
    for sc in cfg.stages:
        engine = get_engine(sc.model or cfg.model)
        step = StageStep(cfg, sc, "estimate", engine, "estimate")
        rows_in = rows.num_rows
        rows = step.process(rows)
        out_tokens = sum(c.completion_tokens for c in step.completions)
        seconds += step.engine_seconds
        tokens += out_tokens
        device = engine.info.device
        models.append(engine.info.model)
        per_stage.append(
            {
                "stage": sc.name,
                "rows_in": rows_in,
                "rows_out": rows.num_rows,
                "completion_tokens": out_tokens,
                "seconds": step.engine_seconds,
            }
        )
    price = _operator_price(cfg, parse_device_label(device))
    n = len(chosen)
    tp = Throughput(
        device_type=price.device_type,
        source="calibration",
        seconds_per_prompt=seconds / n,
        tokens_per_prompt=tokens / n,
        tokens_per_s=tokens / seconds if seconds > 0 else None,
        price_per_hour=price.per_hour,
        samples=n,
    )
    return tp, " + ".join(dict.fromkeys(models)), per_stage


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
        priced = [r for r in rows if r["price_source"] in OPERATOR_SOURCES]
        priced_wall = sum(r["wall_seconds"] for r in priced)
        out.append(
            Throughput(
                device_type=dt,
                source="ledger",
                seconds_per_prompt=wall / prompts,
                tokens_per_prompt=tokens / prompts,
                tokens_per_s=tokens / wall if wall > 0 else None,
                # None (the table's price) when no row was priced by the operator
                price_per_hour=sum(r["price_per_hour"] * r["wall_seconds"] for r in priced)
                / priced_wall
                if priced_wall > 0
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
    per_stage: list[Row] = []
    if calibrate_here:
        tp, prompts, model, per_stage = calibrate(cfg, sample)
        measured.append(tp)
    earlier = ledger_throughputs(read_earlier_ledgers(cfg), model)
    if cfg.stages:
        # a multi-stage prompt costs the whole chain: from other runs' ledgers only the speed
        # (tokens/s) carries over, the tokens per prompt are this run's calibration's
        tpp = measured[0].tokens_per_prompt if measured else None
        earlier = [
            Throughput(t.device_type, t.source, tpp / t.tokens_per_s, tpp, t.tokens_per_s,
                       t.price_per_hour, t.samples)
            for t in earlier
            if tpp and t.tokens_per_s
        ]  # fmt: skip
    measured += earlier
    if prompts is None:
        prompts = len(load_prompts(cfg).records)
    rows = project(cfg, prompts, measured, workers)
    text = format_estimate(cfg, prompts, rows, workers)
    if per_stage:
        text += "\n\n" + format_stages(per_stage, prompts)
    return text, rows


def format_stages(per_stage: Sequence[Row], prompts: int) -> str:
    """The calibration's stages: rows in and out, tokens, engine seconds, and each stage's
    share of the run's projected rows and tokens."""
    sample = per_stage[0]["rows_in"] if per_stage else 0
    cells = [["stage", "rows in", "rows out", "tokens", "engine s", "projected rows", "tokens"]]
    for r in per_stage:
        scale = prompts / sample if sample else 0.0
        cells.append(
            [
                r["stage"], str(r["rows_in"]), str(r["rows_out"]), str(r["completion_tokens"]),
                f"{r['seconds']:.2f}", f"{r['rows_out'] * scale:,.0f}",
                f"{r['completion_tokens'] * scale:,.0f}",
            ]
        )  # fmt: skip
    head = f"per stage (calibrated on {sample} prompts, projected to {prompts:,}):"
    return "\n".join([head, _text_table(cells)])
