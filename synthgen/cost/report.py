"""`synthgen report RUN_URI`: what a run cost, per shard and per device type.

Reads the run's ledger (one row per shard attempt) and worker rows, and produces:
totals (shard-attributed spend and what the held workers bill), a per-shard and a
per-device-type table, utilisation, the failed attempts' share, a PNG chart, markdown
for the Prefect artifact, and the totals block of the dataset manifest.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthgen.cost.chart import render_png
from synthgen.cost.ledger import open_run_uri
from synthgen.cost.prices import SPECULATION_PREFIX, is_verification, usd_per_million
from synthgen.io.layout import BUDGET, split_key

Row = dict[str, Any]
BUDGET_FILE = BUDGET  # written by the flow: the latest session's cap and outcome

# attempts that produced nothing: failed ones, and lost ones (their worker died mid-shard)
UNSUCCESSFUL = ("failed", "lost")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


@dataclass
class Summary:
    run_id: str
    totals: Row
    per_shard: list[Row]
    per_device: list[Row]
    workers: list[Row]
    attempts: list[Row] = field(repr=False, default_factory=list)
    budget: Row | None = None  # {"max_cost_usd", "partial", "message"} when a cap was set
    per_stage: list[Row] = field(default_factory=list)  # multi-stage runs: one row a stage


def _final_success(rows: Sequence[Row]) -> Row | None:
    ok = [r for r in rows if r["status"] == "succeeded"]
    return max(ok, key=lambda r: r["finished_at"]) if ok else None


def summarize(
    ledger: Sequence[Row], workers: Sequence[Row], run_id: str = "", budget: Row | None = None
) -> Summary:
    """Aggregate ledger rows and worker rows (lists of dicts as read from Parquet).

    Verification rows (status "verification") are money spent but not shard attempts:
    they are summed apart (`verification_cost_usd`), never in the per-shard figures.
    """
    checks = [r for r in ledger if is_verification(r)]
    everything = ledger
    ledger = [r for r in ledger if not is_verification(r)]
    by_shard: dict[str, list[Row]] = defaultdict(list)
    for row in ledger:
        by_shard[row["shard_id"]].append(row)

    per_shard: list[Row] = []
    for shard_id in sorted(by_shard):
        rows = by_shard[shard_id]
        ok = _final_success(rows)
        cost = sum(r["cost_usd"] for r in rows)
        ref = ok or max(rows, key=lambda r: r["finished_at"])
        comp = ok["completion_tokens"] if ok else 0
        kept = (ok["kept_tokens"] or 0) if ok else 0
        per_shard.append(
            {
                "shard_id": shard_id,
                "final_attempt_id": ok["attempt_id"] if ok else None,
                "status": "succeeded" if ok else "failed",
                "attempts": len(rows),
                "failed_attempts": sum(r["status"] in UNSUCCESSFUL for r in rows),
                "device_type": ref["device_type"],
                "worker": ref["worker"],
                "wall_seconds": ok["wall_seconds"] if ok else 0.0,
                "prompts": ok["prompts"] if ok else 0,
                "completion_tokens": comp,
                "kept_tokens": kept,
                "tokens_per_s": _ratio(comp, ok["wall_seconds"]) if ok else None,
                "cost_usd": cost,
                "failed_cost_usd": sum(r["cost_usd"] for r in rows if r["status"] in UNSUCCESSFUL),
                "usd_per_1m_completion_tokens": usd_per_million(cost, comp),
                "usd_per_1m_kept_tokens": usd_per_million(cost, kept),
            }
        )

    per_device = _per_device(ledger, per_shard, workers, checks)
    totals = _totals(ledger, per_shard, workers, checks)
    if not run_id and everything:
        run_id = everything[0]["run_id"]
    elif not run_id and workers:
        run_id = workers[0]["run_id"]
    return Summary(
        run_id,
        totals,
        per_shard,
        per_device,
        list(workers),
        list(ledger),
        budget,
        _per_stage(per_shard),
    )


def _per_stage(per_shard: Sequence[Row]) -> list[Row]:
    """Cost and tokens per generation stage (a unit `STAGE:SHARD`); [] for a one-stage run."""
    by_stage: dict[str, list[Row]] = defaultdict(list)
    for row in per_shard:
        by_stage[split_key(row["shard_id"])[0]].append(row)
    if len(by_stage) < 2:
        return []
    out = []
    for stage, rows in by_stage.items():
        cost = sum(r["cost_usd"] for r in rows)
        comp = sum(r["completion_tokens"] for r in rows)
        kept = sum(r["kept_tokens"] for r in rows)
        wall = sum(r["wall_seconds"] for r in rows)
        out.append(
            {
                "stage": stage,
                "shards": sum(r["status"] == "succeeded" for r in rows),
                "attempts": sum(r["attempts"] for r in rows),
                "prompts": sum(r["prompts"] for r in rows),
                "completion_tokens": comp,
                "kept_tokens": kept,
                "tokens_per_s": _ratio(comp, wall),
                "cost_usd": cost,
                "usd_per_1m_completion_tokens": usd_per_million(cost, comp),
            }
        )
    return out


def _held(workers: Sequence[Row]) -> Row:
    held = sum(w["held_seconds"] for w in workers)
    busy = sum(w["busy_seconds"] for w in workers)
    return {
        "workers": len(workers),
        "held_seconds": held,
        "busy_seconds": busy,
        "load_seconds": sum(w["load_seconds"] for w in workers),
        "idle_seconds": sum(w["idle_seconds"] for w in workers),
        "held_cost_usd": sum(w["cost_usd"] for w in workers),
        "load_cost_usd": sum(w["load_cost_usd"] for w in workers),
        "idle_cost_usd": sum(w["idle_cost_usd"] for w in workers),
        "utilisation": _ratio(busy, held),
    }


def _speculation(r: Row) -> bool:
    return r["status"] in UNSUCCESSFUL and str(r.get("error") or "").startswith(SPECULATION_PREFIX)


def _totals(
    ledger: Sequence[Row], per_shard: Sequence[Row], workers: Sequence[Row], checks: Sequence[Row]
) -> Row:
    cost = sum(r["cost_usd"] for r in ledger)
    verify_cost = sum(r["cost_usd"] for r in checks)
    failed_cost = sum(r["cost_usd"] for r in ledger if r["status"] in UNSUCCESSFUL)
    done = [s for s in per_shard if s["status"] == "succeeded"]
    comp = sum(s["completion_tokens"] for s in done)
    kept = sum(s["kept_tokens"] for s in done)
    busy_ok = sum(s["wall_seconds"] for s in done)
    span = 0.0
    if ledger:
        span = (
            max(r["finished_at"] for r in ledger) - min(r["started_at"] for r in ledger)
        ).total_seconds()
    held = _held(workers)
    # a worker that left no row (it died) still billed at least its attempts
    known = {w["worker"] for w in workers}
    billed = held["held_cost_usd"] + sum(
        r["cost_usd"] for r in [*ledger, *checks] if r["worker"] not in known
    )
    return {
        "shards": len(done),
        "shards_failed": len(per_shard) - len(done),
        "attempts": len(ledger),
        "failed_attempts": sum(r["status"] in UNSUCCESSFUL for r in ledger),
        "prompts": sum(s["prompts"] for s in done),
        "prompt_tokens": sum(r["prompt_tokens"] for r in ledger if r["status"] == "succeeded"),
        "completion_tokens": comp,
        "kept_tokens": kept,
        "cost_usd": cost,
        "failed_cost_usd": failed_cost,
        "failed_share": _ratio(failed_cost, cost),
        # losing copies of speculated shards (part of the failed cost)
        "speculation_attempts": sum(_speculation(r) for r in ledger),
        "speculation_cost_usd": sum(r["cost_usd"] for r in ledger if _speculation(r)),
        "usd_per_1m_completion_tokens": usd_per_million(cost, comp),
        "usd_per_1m_kept_tokens": usd_per_million(cost, kept),
        "verification_checks": len(checks),
        "verification_seconds": sum(r["wall_seconds"] for r in checks),
        "verification_cost_usd": verify_cost,
        "verification_share": _ratio(verify_cost, cost),  # of the generation cost
        "spent_usd": cost + verify_cost,  # generation + verification: what a budget counts
        "tokens_per_s_per_worker": _ratio(comp, busy_ok),
        "tokens_per_s_run": _ratio(comp, span),
        "run_span_seconds": span,
        **held,
        "billed_usd": billed,
        "billed_usd_per_1m_kept_tokens": usd_per_million(billed, kept),
        "unpriced_devices": sorted(
            {r["device"] for r in [*ledger, *checks] if r["price_source"] == "unknown"}
            | {w["device"] for w in workers if w["price_source"] == "unknown"}
        ),
        # workers priced by the operator's lease (cost.worker_prices), and, in ledgers
        # written before prices stopped being read on the host, by the host's own word
        "lease_priced": sorted(
            {r["worker"] for r in [*ledger, *checks, *workers] if r["price_source"] == "lease"}
        ),
        "self_priced": sorted(
            {r["worker"] for r in [*ledger, *checks, *workers] if r["price_source"] == "worker"}
        ),
    }


def _per_device(
    ledger: Sequence[Row], per_shard: Sequence[Row], workers: Sequence[Row], checks: Sequence[Row]
) -> list[Row]:
    types = sorted(
        {r["device_type"] for r in [*ledger, *checks]} | {w["device_type"] for w in workers}
    )
    final_ids = {s["final_attempt_id"] for s in per_shard if s["final_attempt_id"]}
    out = []
    for dt in types:
        rows = [r for r in ledger if r["device_type"] == dt]
        done = [r for r in rows if r["attempt_id"] in final_ids]
        cost = sum(r["cost_usd"] for r in rows)
        failed_cost = sum(r["cost_usd"] for r in rows if r["status"] in UNSUCCESSFUL)
        comp = sum(r["completion_tokens"] for r in done)
        kept = sum(r["kept_tokens"] or 0 for r in done)
        wall = sum(r["wall_seconds"] for r in done)
        out.append(
            {
                "device_type": dt,
                "shards": len({r["shard_id"] for r in done}),
                "attempts": len(rows),
                "completion_tokens": comp,
                "kept_tokens": kept,
                "tokens_per_s": _ratio(comp, wall),
                "cost_usd": cost,
                "failed_share": _ratio(failed_cost, cost),
                "usd_per_1m_completion_tokens": usd_per_million(cost, comp),
                "usd_per_1m_kept_tokens": usd_per_million(cost, kept),
                "verification_cost_usd": sum(
                    r["cost_usd"] for r in checks if r["device_type"] == dt
                ),
                **_held([w for w in workers if w["device_type"] == dt]),
            }
        )
    return out


# --------------------------------------------------------------------------- loading
def load_summary(run_uri: str, storage_options: dict[str, Any] | None = None) -> Summary:
    ledger = open_run_uri(run_uri, storage_options)
    store, run = ledger.store, ledger.run
    if not store.exists(run.root):
        raise FileNotFoundError(f"{run_uri}: no such run (expected OUTPUT/runs/RUN_ID)")
    rows = ledger.rows().to_pylist()
    workers = ledger.workers().to_pylist()
    if not rows and not workers:
        raise FileNotFoundError(f"{run_uri}: no ledger/ or workers/ rows under this run")
    data = store.read_optional(run.budget)
    budget = json.loads(data) if data is not None else None
    return summarize(rows, workers, run_id=run.run_id, budget=budget)


# --------------------------------------------------------------------------- formatting
def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "usd":
        if value and abs(value) < 0.01:
            return f"${value:.6f}"
        return f"${value:,.4f}" if abs(value) < 100 else f"${value:,.2f}"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    if kind == "s":
        return f"{value:,.1f}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


SHARD_COLUMNS = [
    ("shard", "shard_id", ""),
    ("status", "status", ""),
    ("tries", "attempts", ""),
    ("device", "device_type", ""),
    ("wall s", "wall_seconds", "s"),
    ("tokens", "completion_tokens", ""),
    ("kept", "kept_tokens", ""),
    ("tok/s", "tokens_per_s", ""),
    ("$", "cost_usd", "usd"),
    ("$/1M tok", "usd_per_1m_completion_tokens", "usd"),
    ("$/1M kept", "usd_per_1m_kept_tokens", "usd"),
]
STAGE_COLUMNS = [
    ("stage", "stage", ""),
    ("shards", "shards", ""),
    ("tries", "attempts", ""),
    ("rows in", "prompts", ""),
    ("tokens", "completion_tokens", ""),
    ("kept", "kept_tokens", ""),
    ("tok/s", "tokens_per_s", ""),
    ("$", "cost_usd", "usd"),
    ("$/1M tok", "usd_per_1m_completion_tokens", "usd"),
]
DEVICE_COLUMNS = [
    ("device", "device_type", ""),
    ("workers", "workers", ""),
    ("shards", "shards", ""),
    ("tokens", "completion_tokens", ""),
    ("kept", "kept_tokens", ""),
    ("tok/s/worker", "tokens_per_s", ""),
    ("$ shards", "cost_usd", "usd"),
    ("$/1M tok", "usd_per_1m_completion_tokens", "usd"),
    ("$/1M kept", "usd_per_1m_kept_tokens", "usd"),
    ("failed $", "failed_share", "pct"),
    ("verify $", "verification_cost_usd", "usd"),
    ("held $", "held_cost_usd", "usd"),
    ("util", "utilisation", "pct"),
]


def _table(rows: Sequence[Row], columns: Sequence[tuple[str, str, str]]) -> list[list[str]]:
    return [[h for h, _, _ in columns]] + [
        [_fmt(r.get(k), kind) for _, k, kind in columns] for r in rows
    ]


def _text_table(cells: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(cells: list[list[str]]) -> str:
    head = "| " + " | ".join(cells[0]) + " |"
    sep = "|" + "|".join(" --- " for _ in cells[0]) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(r) + " |" for r in cells[1:]])


def _total_lines(s: Summary) -> list[tuple[str, str]]:
    t = s.totals
    lines = [
        (
            "shards done",
            f"{t['shards']} ({t['shards_failed']} failed, {t['attempts']} attempts, {t['failed_attempts']} failed)",
        ),
        (
            "tokens",
            f"{_fmt(t['completion_tokens'])} completion, {_fmt(t['kept_tokens'])} kept, {_fmt(t['prompt_tokens'])} prompt",
        ),
        (
            "shard-attributed cost",
            f"{_fmt(t['cost_usd'], 'usd')} (failed attempts {_fmt(t['failed_cost_usd'], 'usd')} = {_fmt(t['failed_share'], 'pct')})",
        ),
        *(
            [
                (
                    "speculation",
                    f"{_fmt(t['speculation_cost_usd'], 'usd')} ({t['speculation_attempts']} losing copies of speculated shards, in the failed cost)",
                )
            ]
            if t.get("speculation_attempts")
            else []
        ),
        (
            "verification",
            f"{_fmt(t['verification_cost_usd'], 'usd')} ({t['verification_checks']} checks, {_fmt(t['verification_seconds'], 's')} s) = {_fmt(t['verification_share'], 'pct')} of the generation cost",
        ),
        (
            "$ per 1M tokens",
            f"{_fmt(t['usd_per_1m_completion_tokens'], 'usd')} completion, {_fmt(t['usd_per_1m_kept_tokens'], 'usd')} kept",
        ),
        (
            "throughput",
            f"{_fmt(t['tokens_per_s_per_worker'])} tok/s per worker, {_fmt(t['tokens_per_s_run'])} tok/s for the run",
        ),
        (
            "workers held",
            f"{t['workers']} workers, {_fmt(t['held_seconds'], 's')} s held, utilisation (busy/held) {_fmt(t['utilisation'], 'pct')}",
        ),
        (
            "load / idle cost",
            f"{_fmt(t['load_cost_usd'], 'usd')} loading ({_fmt(t['load_seconds'], 's')} s), {_fmt(t['idle_cost_usd'], 'usd')} idle ({_fmt(t['idle_seconds'], 's')} s)",
        ),
        (
            "billed (held time)",
            f"{_fmt(t['billed_usd'], 'usd')} -- what the workers bill; {_fmt(t['billed_usd_per_1m_kept_tokens'], 'usd')} per 1M kept tokens",
        ),
    ]
    b = s.budget or {}
    if b.get("max_cost_usd") is not None:
        left = b["max_cost_usd"] - t["spent_usd"]
        state = "stopped the run (partial)" if b.get("partial") else "not reached"
        lines.append(
            ("budget", f"{_fmt(b['max_cost_usd'], 'usd')} cap, {_fmt(left, 'usd')} left; {state}")
        )
    if t["unpriced_devices"]:
        lines.append(
            ("UNPRICED", "no price for " + ", ".join(t["unpriced_devices"]) + " (counted as $0)")
        )
    if t["lease_priced"]:
        lines.append(
            (
                "leased prices",
                f"{len(t['lease_priced'])} worker(s) priced by the operator's lease "
                f"(cost.worker_prices): " + _some(t["lease_priced"]),
            )
        )
    if t["self_priced"]:
        lines.append(
            (
                "SELF-PRICED",
                f"{len(t['self_priced'])} worker(s) stated their own price "
                f"(SYNTHGEN_PRICE_PER_HOUR, read on the host before this version): "
                + _some(t["self_priced"]),
            )
        )
    return lines


def _some(names: Sequence[str], n: int = 5) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def format_text(s: Summary, max_shard_rows: int = 50) -> str:
    out = [f"run {s.run_id}", ""]
    width = max(len(k) for k, _ in _total_lines(s))
    out += [f"  {k.ljust(width)}  {v}" for k, v in _total_lines(s)]
    if s.per_stage:
        out += ["", "per stage", _text_table(_table(s.per_stage, STAGE_COLUMNS))]
    out += ["", "per device type", _text_table(_table(s.per_device, DEVICE_COLUMNS))]
    shards = s.per_shard[:max_shard_rows]
    out += ["", "per shard", _text_table(_table(shards, SHARD_COLUMNS))]
    if len(s.per_shard) > len(shards):
        out.append(f"... {len(s.per_shard) - len(shards)} more shards (--shards N to show more)")
    return "\n".join(out)


def to_markdown(s: Summary, max_shard_rows: int = 50) -> str:
    """The same summary as markdown: the Prefect artifact of every flow run."""
    out = [f"# synthgen run `{s.run_id}`: cost", ""]
    out += [f"- **{k}**: {v}" for k, v in _total_lines(s)]
    if s.per_stage:
        out += ["", "## Per stage", "", _md_table(_table(s.per_stage, STAGE_COLUMNS))]
    out += ["", "## Per device type", "", _md_table(_table(s.per_device, DEVICE_COLUMNS))]
    shards = s.per_shard[:max_shard_rows]
    out += ["", "## Per shard", "", _md_table(_table(shards, SHARD_COLUMNS))]
    if len(s.per_shard) > len(shards):
        out.append(f"\n_{len(s.per_shard) - len(shards)} more shards: `synthgen report`_")
    return "\n".join(out) + "\n"


def manifest_totals(s: Summary) -> Row:
    """The cost block of the dataset manifest (JSON-safe)."""
    t = s.totals
    keys = [
        "shards", "attempts", "failed_attempts", "prompts", "prompt_tokens", "completion_tokens",
        "kept_tokens", "cost_usd", "failed_cost_usd", "usd_per_1m_completion_tokens",
        "usd_per_1m_kept_tokens", "held_seconds", "held_cost_usd", "load_cost_usd",
        "idle_cost_usd", "utilisation", "billed_usd", "billed_usd_per_1m_kept_tokens",
        "verification_checks", "verification_seconds", "verification_cost_usd",
        "verification_share", "spent_usd", "unpriced_devices",
    ]  # fmt: skip
    out = {k: t[k] for k in keys}
    if s.per_stage:
        out["per_stage"] = s.per_stage
    return out


# --------------------------------------------------------------------------- writing
@dataclass
class ReportFiles:
    text: str
    markdown: str
    png_path: str
    md_path: str | None


def write_report(
    run_uri: str,
    out: str | None = None,
    storage_options: dict[str, Any] | None = None,
    max_shard_rows: int = 50,
) -> ReportFiles:
    """Summarise a run; write report.png (+ report.md) next to it, or the PNG to local `out`."""
    summary = load_summary(run_uri, storage_options)
    text = format_text(summary, max_shard_rows)
    markdown = to_markdown(summary, max_shard_rows)
    png = render_png(summary)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return ReportFiles(text, markdown, str(path), None)
    ledger = open_run_uri(run_uri, storage_options)
    ledger.store.write_bytes(ledger.run.report_png, png)
    ledger.store.write_bytes(ledger.run.report_md, markdown.encode())
    base = run_uri.rstrip("/")
    return ReportFiles(text, markdown, f"{base}/report.png", f"{base}/report.md")
