"""The report's PNG: cost and throughput per device type, and both over time (matplotlib Agg)."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthgen.cost.report import Summary


def render_png(s: Summary) -> bytes:
    """A 2x2 chart as PNG bytes; works headless (Agg backend, no display)."""
    # matplotlib is imported here, not at module top: `import matplotlib.figure` takes about
    # 1.3 s (`python -X importtime`), paid only by the report's PNG, not by every run
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=100)
    (ax_cost, ax_tps), (ax_cum, ax_rate) = fig.subplots(2, 2)
    devices = [d["device_type"] for d in s.per_device]
    x = range(len(devices))

    # cost per device type: shard-attributed (ok / failed) + load + idle = held
    ok = [d["cost_usd"] * (1 - (d["failed_share"] or 0.0)) for d in s.per_device]
    failed = [d["cost_usd"] * (d["failed_share"] or 0.0) for d in s.per_device]
    load = [d["load_cost_usd"] for d in s.per_device]
    idle = [d["idle_cost_usd"] for d in s.per_device]
    bottom = [0.0] * len(devices)
    for values, label in (
        (ok, "shards"),
        (failed, "failed attempts"),
        (load, "model load"),
        (idle, "idle"),
    ):
        ax_cost.bar(x, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax_cost.set_xticks(list(x), devices, rotation=15)
    ax_cost.set_ylabel("USD")
    ax_cost.set_title("Cost per device type")
    ax_cost.legend(fontsize=8)

    ax_tps.bar(x, [d["tokens_per_s"] or 0.0 for d in s.per_device], color="tab:green")
    ax_tps.set_xticks(list(x), devices, rotation=15)
    ax_tps.set_ylabel("completion tokens/s per worker")
    ax_tps.set_title("Throughput per device type")

    attempts = sorted(s.attempts, key=lambda r: r["finished_at"])
    if attempts:
        t0 = min(r["started_at"] for r in attempts)
        cum: dict[str, list[tuple[float, float]]] = defaultdict(list)
        total: dict[str, float] = defaultdict(float)
        for r in attempts:
            total[r["device_type"]] += r["cost_usd"]
            cum[r["device_type"]].append(
                ((r["finished_at"] - t0).total_seconds() / 60, total[r["device_type"]])
            )
        for dt, pts in sorted(cum.items()):
            ax_cum.step(
                [0.0] + [p[0] for p in pts], [0.0] + [p[1] for p in pts], where="post", label=dt
            )
        ax_cum.legend(fontsize=8)
        # tokens/s over time: each successful attempt's tokens spread over its wall time
        span = max((r["finished_at"] - t0).total_seconds() for r in attempts)
        nbins = max(1, min(60, int(span // 10) + 1))
        width = max(span / nbins, 1e-9)
        rate = [0.0] * nbins
        for r in attempts:
            if r["status"] != "succeeded" or r["wall_seconds"] <= 0:
                continue
            a = (r["started_at"] - t0).total_seconds()
            b = a + r["wall_seconds"]
            per_s = r["completion_tokens"] / r["wall_seconds"]
            for i in range(nbins):
                lo, hi = i * width, (i + 1) * width
                overlap = max(0.0, min(b, hi) - max(a, lo))
                rate[i] += per_s * overlap / width
        ax_rate.plot([(i + 0.5) * width / 60 for i in range(nbins)], rate, marker=".")
    ax_cum.set_xlabel("minutes since first shard started")
    ax_cum.set_ylabel("USD (cumulative, shard-attributed)")
    ax_cum.set_title("Spend over time")
    ax_rate.set_xlabel("minutes since first shard started")
    ax_rate.set_ylabel("completion tokens/s (all workers)")
    ax_rate.set_title("Throughput over time")
    t = s.totals
    title = f"synthgen run {s.run_id}: ${t['cost_usd']:.4f} shard-attributed, ${t['billed_usd']:.4f} billed"
    fig.suptitle(title.replace("$", r"\$"))  # a plain dollar sign, not mathtext
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
