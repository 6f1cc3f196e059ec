"""Publish a finished run: kept records -> OUTPUT/dataset/ (Parquet, one file per shard),
plus `_manifest.json` (files, rows, checksums, schema, config, totals) and a dataset card."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from synthgen import __version__
from synthgen.config import RunConfig
from synthgen.config.multistage import compared_stage
from synthgen.io.layout import DatasetLayout, split_key
from synthgen.io.schema import DATASET_COLUMNS, RECORD_SCHEMA
from synthgen.io.store import Store
from synthgen.stages.base import Stage, run_stages
from synthgen.stages.dedup.cross import apply_drops
from synthgen.stages.dedup.index import index_rows, write_index
from synthgen.stages.dedup.stage import read_drops
from synthgen.stages.generate import read_committed_shard
from synthgen.stages.select import group_span, select_rows
from synthgen.stages.units import committed_units, final_stage


def kept_rows(table: pa.Table, extra_drops: set[str] | None = None) -> pa.Table:
    mask = pc.is_null(table["drop_reason"])
    if extra_drops:
        mask = pc.and_(mask, pc.invert(pc.is_in(table["prompt_id"], pa.array(sorted(extra_drops)))))
    # multi-stage runs: every stage's columns (instruction, response.messages, judge.score...)
    stage_columns = [c for c in table.column_names if c not in RECORD_SCHEMA.names]
    return table.filter(mask).select(DATASET_COLUMNS + stage_columns)


class RunDedupMarks(Stage):
    """Run-wide dedup, per shard: flag the rows the run-wide search found to duplicate a row
    of another shard (the search itself works on the whole run, on the cluster)."""

    name = "dedup"

    def __init__(self, drops: dict[str, str]) -> None:
        self.drops = drops

    def process(self, rows: pa.Table) -> pa.Table:
        return apply_drops(rows, self.drops)


class SelectStage(Stage):
    """`select` (multi-stage runs): per prompt, the best sample, or a chosen / rejected pair
    (`synthgen.stages.select`); the samples it leaves out are flagged `not_best` or
    `low_margin`, the members of a pair are folded into the pair's row."""

    name = "select"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def process(self, rows: pa.Table) -> pa.Table:
        stage = compared_stage(self.cfg)
        return select_rows(rows, self.cfg.select, stage, span=group_span(self.cfg, stage))


class PublishStage(Stage):
    """A committed shard's rows -> the rows its published file holds: the kept ones, in the
    dataset's columns (rows flagged by an earlier stage were counted there, not here)."""

    name = "publish"

    def process(self, rows: pa.Table) -> pa.Table:
        return kept_rows(rows)


def publish_shard(
    config: dict[str, Any],
    shard_id: str,
    extra_drops: dict[str, str] | list[str] | None = None,
) -> dict[str, Any]:
    """Write the kept records of one committed shard to dataset/; return its file entry.

    `extra_drops`: prompt_id -> reason from the run-wide dedup stage (a plain list means
    reason "dropped"); None: this shard's entries of the run's drops file
    (`runs/RUN_ID/dedup/drops.parquet`, written by the dedup stage), if there is one. The entry counts the shard's records: generated = rows + dropped,
    with drop_counts per reason (filters, in-shard and cross-shard duplicates).
    """
    cfg = RunConfig.model_validate(config)
    store = Store(cfg.output)
    table = read_committed_shard(store, cfg.run_id or "", shard_id, final_stage(cfg))  # checked
    if extra_drops is None:
        extra_drops = read_drops(store, cfg.run_id or "").get(shard_id, {})
    if isinstance(extra_drops, list):
        extra_drops = dict.fromkeys(extra_drops, "dropped")
    marks = RunDedupMarks(extra_drops or {})
    table, _ = marks(table)
    generated = table.num_rows
    if cfg.stages and cfg.select.strategy != "all":
        table, _ = SelectStage(cfg)(table)
    kept, _ = run_stages([PublishStage()], table)
    name = f"{shard_id}.parquet"
    dataset = DatasetLayout(store)
    size, sha = store.write_table(dataset.file(name), kept)
    reasons = Counter(r for r in table["drop_reason"].to_pylist() if r is not None)
    if cfg.clean.enabled and cfg.clean.near.enabled:
        write_index(
            store.fs,
            dataset.dir,
            f"{cfg.run_id}--{shard_id}",
            index_rows(table),
            cfg.clean,
        )
    return {
        "path": name,
        "shard_id": shard_id,
        "rows": kept.num_rows,
        "bytes": size,
        "sha256": sha,
        "generated": generated,
        "kept_tokens": int(pc.sum(kept["completion_tokens"]).as_py() or 0),
        "drop_counts": dict(sorted(reasons.items())),
    }


def totals_from(results: list[dict[str, Any]]) -> dict[str, Any]:
    t: dict[str, Any] = Counter()
    drops: Counter[str] = Counter()
    for r in results:
        for key in (
            "prompts",
            "rows",
            "rejected",
            "prompt_tokens",
            "completion_tokens",
            "kept_records",
            "kept_tokens",
        ):
            t[key] += int(r.get(key, 0))
        for key in ("cost_usd", "wall_seconds", "engine_seconds"):
            t[key] += float(r.get(key, 0.0))
        drops.update(r.get("drop_counts", {}))
    out = dict(t)
    stages: dict[str, dict[str, Any]] = {}
    for r in results:  # multi-stage runs: rows in and out, tokens and drops per stage
        name = split_key(r.get("shard_id", ""))[0]
        st = stages.setdefault(
            name, {"rows_in": 0, "rows": 0, "completion_tokens": 0, "drops": Counter()}
        )
        st["rows_in"] += int(r.get("prompts", 0))
        st["rows"] += int(r.get("rows", 0))
        st["completion_tokens"] += int(r.get("completion_tokens", 0))
        st["drops"].update(r.get("drop_counts", {}))
    if len(stages) > 1:
        out["per_stage"] = {
            k: {**v, "drops": dict(sorted(v["drops"].items()))} for k, v in stages.items()
        }
    out["cost_usd"] = round(out.get("cost_usd", 0.0), 6)
    out["drop_counts"] = dict(sorted(drops.items()))
    ct = out.get("completion_tokens", 0)
    out["usd_per_1m_completion_tokens"] = (out["cost_usd"] / ct * 1e6) if ct else None
    return out


def write_manifest(
    cfg: RunConfig, store: Store, files: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    run_id = cfg.run_id or ""
    markers = committed_units(store, cfg)
    results = [m["result"] for m in markers.values()]
    schema = pa.schema([f for f in _dataset_schema()])
    manifest = {
        "format": "synthgen-dataset/1",
        "synthgen_version": __version__,
        "run_id": run_id,
        "published_at": datetime.now(UTC).isoformat(),
        "files": sorted(files, key=lambda f: f["path"]),
        "rows": sum(f["rows"] for f in files),
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
        "config": cfg.public_dict(),
        "totals": _with_clean_totals(totals_from(results), files),
        **(extra or {}),
    }
    dataset = DatasetLayout(store)
    base = dataset.dir
    keep = {f["path"] for f in files}
    for name in store.ls(base):
        if name.endswith(".parquet") and name not in keep:
            store.rm(dataset.file(name))  # stale file from an earlier run
    # "_" prefix: pyarrow.dataset and pandas skip it when reading the directory (DuckDB and
    # polars read the one-level glob dataset/*.parquet)
    store.write_bytes(dataset.card, _card(manifest).encode())
    store.write_json(dataset.manifest, manifest)
    return manifest


def _with_clean_totals(totals: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
    """Final record counts from the published files (after the run-wide dedup stage):
    generated = kept + dropped, with drops per reason."""
    if not files or "drop_counts" not in files[0]:
        return totals
    drops: Counter[str] = Counter()
    for f in files:
        drops.update(f.get("drop_counts", {}))
    kept = sum(f["rows"] for f in files)
    totals = dict(totals)
    totals["generated"] = sum(f.get("generated", f["rows"]) for f in files)
    totals["kept_records"] = kept
    totals["kept_tokens"] = sum(f.get("kept_tokens", 0) for f in files)
    totals["dropped"] = sum(drops.values())
    totals["drop_counts"] = dict(sorted(drops.items()))
    return totals


def _dataset_schema() -> list[pa.Field]:
    return [RECORD_SCHEMA.field(n) for n in DATASET_COLUMNS]


def _card(m: dict[str, Any]) -> str:
    t = m["totals"]
    model = m["config"]["model"].get("path") or "SmolLM2-135M-Instruct (bundled)"
    lines = [
        f"# synthgen dataset — run `{m['run_id']}`",
        "",
        f"Published {m['published_at']} by synthgen {m['synthgen_version']}.",
        "",
        f"- rows: {m['rows']} in {len(m['files'])} Parquet files (zstd)",
        f"- model: {model} ({m['config']['model']['engine']})",
        f"- prompts: {t.get('prompts', 0)}; completion tokens: {t.get('completion_tokens', 0)}",
        f"- cost: ${t.get('cost_usd', 0.0):.4f}",
        f"- dropped: {t.get('drop_counts', {})}",
        "",
        "Read with `pyarrow.dataset.dataset(PATH, format='parquet')` or pandas, or with the "
        "one-level glob `PATH/*.parquet` (DuckDB `read_parquet`, polars, Hugging Face "
        "`datasets` `data_files`): deeper globs also reach the `_dedup_index/` files. "
        "`_manifest.json` lists every file with its row count and sha256.",
    ]
    return "\n".join(lines) + "\n"
