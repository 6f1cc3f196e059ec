"""Publish a finished run: kept records -> `OUTPUT/dataset/`, a Hugging Face dataset repository
(`README.md` card + `data/SPLIT-NNNNN-of-NNNNN-PID.parquet`), as one transaction.

1. Each shard's publish task writes its rows (in `output.format`, by split) to new files whose
   names carry the publish id `PID`: no file a reader may be using is ever overwritten with
   other content.
2. `commit_publish` writes this publish's manifest (`runs/RUN_ID/publish/PID/manifest.json`,
   immutable), then the card, whose `configs` list exactly this publish's files: writing the
   card is the switch (one atomic PUT or rename).
3. Only then are the files of earlier publishes (and of killed ones) deleted.

A publish is refused, naming both run ids, when the output's dataset belongs to another run
(`output.replace: true` allows it) or when it would replace data with zero rows.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synthgen import __version__
from synthgen.checkpoints import checkpoint
from synthgen.config import RunConfig
from synthgen.config.multistage import clean_stage, compared_stage, descendants_span
from synthgen.errors import PublishRefused
from synthgen.io.attempts import commit_markers
from synthgen.io.checked import read_checked
from synthgen.io.layout import DATA_DIR, DEFAULT_STAGE, DatasetLayout, RunLayout, split_key
from synthgen.io.store import Store
from synthgen.stages.base import Stage, run_stages
from synthgen.stages.card import front_matter, render_card
from synthgen.stages.dedup.cross import ShardKeys, apply_drops, shard_keys
from synthgen.stages.dedup.index import ensure_meta, index_rows, write_index
from synthgen.stages.dedup.stage import read_shard_drops
from synthgen.stages.formats import (
    pairs_stage,
    sft_stage,
    split_names,
    split_rows,
    to_format,
    to_raw,
)
from synthgen.stages.generate import read_committed_shard
from synthgen.stages.select import group_span, select_rows
from synthgen.stages.units import committed_units, final_stage

MANIFEST_FORMAT = "synthgen-dataset/2"
LEGACY_FILES = ("_manifest.json", "_README.md")  # the dataset folder before it became a HF repo

FORMAT_DESCRIPTIONS = {
    "raw": "every kept record with its provenance",
    "sft": "`messages`: the request chat plus the generated assistant turn, with provenance",
    "dpo": "`prompt`, `chosen`, `rejected`: TRL's conversational preference format",
}


def kept_rows(table: pa.Table, extra_drops: set[str] | None = None) -> pa.Table:
    mask = pc.is_null(table["drop_reason"])
    if extra_drops:
        mask = pc.and_(mask, pc.invert(pc.is_in(table["prompt_id"], pa.array(sorted(extra_drops)))))
    return to_raw(table.filter(mask))


class RunDedupMarks(Stage):
    """Run-wide dedup, per shard: flag the rows the run-wide search found to duplicate a row
    of another shard (the search itself works on the whole run, on the cluster)."""

    name = "dedup"

    def __init__(self, drops: dict[str, str], span: int = 1) -> None:
        self.drops = drops
        self.span = span  # final rows per row of the deduplicated stage

    def process(self, rows: pa.Table) -> pa.Table:
        return apply_drops(rows, self.drops, self.span)


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
    """A committed shard's rows -> the rows its published files hold: the kept ones, without
    the clean stage's internals (rows flagged by an earlier stage were counted there)."""

    name = "publish"

    def process(self, rows: pa.Table) -> pa.Table:
        return kept_rows(rows)


# ------------------------------------------------------------------------------ the id
def publish_id(cfg: RunConfig, shard_digests: dict[str, str], drops_digest: str | None) -> str:
    """What this publish's files are made of, hashed: the committed shards (their sha256),
    the run-wide drops, the publish settings and the synthgen version. The same run
    published again with the same settings gets the same id (and the same file names)."""
    basis = {
        "run_id": cfg.run_id,
        "config": cfg.fingerprint(),
        "synthgen": __version__,
        "format": cfg.output.format,
        "stage": sft_stage(cfg) if cfg.output.format == "sft" else pairs_stage(cfg),
        "splits": cfg.output.splits,
        "license": cfg.output.license,
        "compression": cfg.output.compression,
        "shards": dict(sorted(shard_digests.items())),
        "drops": drops_digest,
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:10]


def shard_digests(store: Store, run_id: str, stage: str = DEFAULT_STAGE) -> dict[str, str]:
    """shard_id -> sha256 of its committed file of `stage` (the run's final stage: what is
    published), from the commit markers."""
    return digests_of(commit_markers(store, run_id, stage))


def digests_of(markers: dict[str, dict[str, Any]]) -> dict[str, str]:
    """shard_id -> sha256 of its committed file, from commit markers already read."""
    return {sid: str(m.get("sha256")) for sid, m in markers.items()}


# ------------------------------------------------------------------------------ per shard
def publish_shard(
    config: dict[str, Any],
    shard_id: str,
    *,
    publish_id: str,
    index: int,
    count: int,
    extra_drops: dict[str, str] | list[str] | None = None,
    index_meta_ready: bool = False,
) -> dict[str, Any]:
    """Write one committed shard's kept rows as this publish's files (one per split,
    `data/SPLIT-{index}-of-{count}-{publish_id}.parquet`); return the shard's entry.

    `extra_drops`: prompt_id -> reason from the run-wide dedup stage (a plain list means
    reason "dropped"); None: this shard's part of the run's drops
    (`runs/RUN_ID/dedup/drops/SHARD.parquet`). The entry counts the shard's records:
    generated = rows + dropped, with drop_counts per reason. `index_meta_ready`: the caller
    ran `prepare_publish` (the dedup index's meta file is checked once, not per shard).
    """
    cfg = RunConfig.model_validate(config)
    store = Store(cfg.output)
    if extra_drops is None:
        extra_drops = read_shard_drops(store, cfg.run_id or "", shard_id)
    if isinstance(extra_drops, list):
        extra_drops = dict.fromkeys(extra_drops, "dropped")
    dataset = DatasetLayout(store)

    def place(split: str) -> tuple[str, str]:
        name = dataset.data_name(split, index, count, publish_id)
        return dataset.file(name), name

    entry, _ = _write_shard(cfg, store, shard_id, extra_drops or {}, index_meta_ready, place)
    return entry


def ready_shard(config: dict[str, Any], shard_id: str) -> dict[str, Any]:
    """A committed shard's publish-ready files, written as it commits (the flow, during
    generation): what `publish_shard` would write with no run-wide drops, under
    `runs/RUN_ID/publish/ready/` (its dedup index part too). The entry's `files` name
    them (`ready`: the store path, no `path` yet) and `source_sha256` is the committed
    file's: `place_ready` moves them into a publish once the run-wide dedup has dropped
    nothing of the shard and its commit marker still names that file."""
    cfg = RunConfig.model_validate(config)
    store = Store(cfg.output)
    layout = RunLayout(store, cfg.run_id or "")
    sha = ""

    def place(split: str) -> tuple[str, str]:
        path = layout.publish_ready_file(shard_id, sha, split)
        return path, path

    keys: list[ShardKeys] = []

    def seen(marker_sha: str, table: pa.Table) -> None:
        nonlocal sha
        sha = marker_sha
        if _indexes(cfg):
            keys.append(shard_keys(table, cfg.clean, shard_id))

    entry, source = _write_shard(cfg, store, shard_id, {}, True, place, seen)
    for f in entry["files"]:
        f["ready"] = f.pop("path")
    out = {**entry, "source_sha256": source}
    if keys:
        out["dedup_keys"] = keys[0]
    return out


def _indexes(cfg: RunConfig) -> bool:
    """Whether a final-stage shard's dedup keys are taken as it commits: run-wide dedup is
    on and deduplicates the final stage's text (else the keys are another stage's)."""
    c = cfg.clean
    return (
        c.enabled and (c.exact.enabled or c.near.enabled) and clean_stage(cfg) == final_stage(cfg)
    )


def place_ready(
    store: Store, ready: list[tuple[dict[str, Any], int]], count: int, publish_id: str
) -> list[dict[str, Any]]:
    """Move publish-ready files (`ready_shard`'s entries, each with the shard's index in
    the publish) to this publish's names (`data/SPLIT-{index}-of-{count}-{publish_id}`):
    a rename on a local disk, a server-side copy on an object store; nothing is read or
    written again. Returns the shards' entries as `publish_shard` would."""
    dataset = DatasetLayout(store)
    moves: list[tuple[str, str]] = []
    out = []
    for entry, index in ready:
        files = []
        for f in entry["files"]:
            name = dataset.data_name(f["split"], index, count, publish_id)
            moves.append((f["ready"], dataset.file(name)))
            files.append({k: v for k, v in f.items() if k != "ready"} | {"path": name})
        rest = {k: v for k, v in entry.items() if k not in ("files", "source_sha256", "dedup_keys")}
        out.append({**rest, "files": files})
    store.move_many(moves)
    return out


def _write_shard(
    cfg: RunConfig,
    store: Store,
    shard_id: str,
    extra_drops: dict[str, str],
    index_meta_ready: bool,
    place: Any,
    seen: Any = None,
) -> tuple[dict[str, Any], str]:
    """A committed shard's kept rows (after `extra_drops`, select, the output format) written
    by split where `place(split)` says (store path, name in the entry); its dedup index
    part. Returns (the shard's entry, the committed file's sha256). `seen(sha256, table)`
    hears the committed file's sha256 and its checked table before anything is written."""
    run_id = cfg.run_id or ""
    final = final_stage(cfg)
    checked = read_checked(store, run_id, shard_id, final)  # checked against its marker
    source = str(checked.marker.get("sha256"))
    table = checked.table
    if seen is not None:
        seen(source, table)
    cleaned = clean_stage(cfg)
    table, _ = RunDedupMarks(extra_drops, descendants_span(cfg, cleaned))(table)
    generated = table.num_rows
    if cfg.stages and cfg.select.strategy != "all":
        table, _ = SelectStage(cfg)(table)
    kept, _ = run_stages([PublishStage()], table)
    files = []
    for split, rows in split_rows(to_format(kept, cfg), cfg.output.splits).items():
        path, name = place(split)
        size, sha = store.write_table(path, rows)
        files.append({"path": name, "split": split, "rows": rows.num_rows, "bytes": size,
                      "sha256": sha, "shard_id": shard_id})  # fmt: skip
    reasons = Counter(r for r in table["drop_reason"].to_pylist() if r is not None)
    if cfg.clean.enabled and cfg.clean.near.enabled:
        # the index holds the deduplicated text's signatures: the clean stage's rows
        source_rows = (
            table if cleaned == final else read_committed_shard(store, run_id, shard_id, cleaned)
        )
        write_index(
            store.fs,
            store.root,
            f"{run_id}--{shard_id}",
            index_rows(source_rows),
            cfg.clean,
            meta=not index_meta_ready,
        )
    tokens = kept["completion_tokens"] if "completion_tokens" in kept.column_names else None
    entry = {
        "shard_id": shard_id,
        "rows": kept.num_rows,
        "generated": generated,
        "kept_tokens": int(pc.sum(tokens).as_py() or 0) if tokens is not None else 0,
        "drop_counts": dict(sorted(reasons.items())),
        "files": files,
    }
    return entry, source


def prepare_publish(config: dict[str, Any]) -> None:
    """What every shard's publish would otherwise check again: the dedup index's meta file
    (written, or checked against the config) when near-dedup indexes the published text."""
    cfg = RunConfig.model_validate(config)
    if cfg.clean.enabled and cfg.clean.near.enabled:
        store = Store(cfg.output)
        ensure_meta(store.fs, store.root, cfg.clean)


# ------------------------------------------------------------------------------ totals
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


def _with_clean_totals(totals: dict[str, Any], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Final record counts from the published shards (after the run-wide dedup stage):
    generated = kept + dropped, with drops per reason."""
    if not shards:
        return totals
    drops: Counter[str] = Counter()
    for s in shards:
        drops.update(s.get("drop_counts", {}))
    totals = dict(totals)
    totals["generated"] = sum(s.get("generated", s["rows"]) for s in shards)
    totals["kept_records"] = sum(s["rows"] for s in shards)
    totals["kept_tokens"] = sum(s.get("kept_tokens", 0) for s in shards)
    totals["dropped"] = sum(drops.values())
    totals["drop_counts"] = dict(sorted(drops.items()))
    return totals


# ------------------------------------------------------------------------------ what is published
def read_card(store: Store) -> dict[str, Any]:
    """The `synthgen` block of the current card's front matter (run_id, publish_id, manifest,
    rows), {} when nothing is published; an output published before the dataset became a
    HF repository (`dataset/_manifest.json`) reads as {run_id, legacy: True}."""
    dataset = DatasetLayout(store)
    data = store.read_optional(dataset.card)
    if data is not None:
        return dict(front_matter(data.decode()).get("synthgen") or {})
    legacy = store.read_optional(dataset.file(LEGACY_FILES[0]))
    if legacy is not None:
        m = json.loads(legacy)
        return {"run_id": m.get("run_id"), "rows": m.get("rows"), "legacy": True}
    return {}


def read_manifest(store: Store) -> dict[str, Any] | None:
    """The manifest of what `dataset/` shows now (the one its card names), or None."""
    card = read_card(store)
    if not card.get("manifest"):
        return None
    path = posixpath.normpath(posixpath.join(DatasetLayout(store).dir, card["manifest"]))
    data = store.read_optional(path)
    return json.loads(data) if data is not None else None


def check_owner(cfg: RunConfig, store: Store, card: dict[str, Any] | None = None) -> None:
    """Refuse (PublishRefused) when `dataset/` shows another run's data and this run may not
    replace it (`output.replace`)."""
    card = read_card(store) if card is None else card
    other = card.get("run_id")
    if other and other != cfg.run_id and not cfg.output.replace:
        raise PublishRefused(
            f"{DatasetLayout(store).url()} holds the dataset published by run {other!r}; "
            f"run {cfg.run_id!r} would replace it. Publish this run to another output.uri, "
            f"or replace the dataset on purpose with --set output.replace=true. Nothing was "
            f"changed in the dataset."
        )


def published_as(store: Store, run_id: str, pid: str) -> dict[str, Any] | None:
    """The manifest when `dataset/` already shows publish `pid` of `run_id` (a re-run of a
    published run: nothing to write), else None."""
    card = read_card(store)
    if card.get("run_id") != run_id or card.get("publish_id") != pid:
        return None
    return read_manifest(store)


# ------------------------------------------------------------------------------ the switch
def commit_publish(
    cfg: RunConfig,
    store: Store,
    shards: list[dict[str, Any]],
    pid: str,
    extra: dict[str, Any] | None = None,
    results: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Make publish `pid` (its shards' files already written) what `dataset/` shows: the
    manifest, then the card (the switch), then delete every other file under `data/`.
    `results`: every committed unit's result (its commit marker's), as the caller has just
    read them; None: read here (10,000 markers: ~2 s)."""
    run_id = cfg.run_id or ""
    card = read_card(store)
    check_owner(cfg, store, card)
    rows = sum(s["rows"] for s in shards)
    if rows == 0 and card.get("rows") and not cfg.output.replace:
        raise PublishRefused(
            f"run {run_id!r} would publish 0 rows over the {card['rows']} rows of run "
            f"{card.get('run_id')!r} in {DatasetLayout(store).url()}; the dataset was left as "
            f"it is (--set output.replace=true publishes the empty dataset)"
        )
    layout = RunLayout(store, run_id)
    dataset = DatasetLayout(store)
    manifest_path = layout.publish_manifest(pid)
    files = sorted((f for s in shards for f in s["files"]), key=lambda f: f["path"])
    if results is None:
        results = [m["result"] for m in committed_units(store, cfg).values()]
    schema = _schema_of(store, dataset, files)
    manifest = {
        "manifest_format": MANIFEST_FORMAT,
        "synthgen_version": __version__,
        "run_id": run_id,
        "publish_id": pid,
        "config_hash": cfg.fingerprint(),
        "published_at": datetime.now(UTC).isoformat(),
        "license": cfg.output.license,
        "format": {
            "name": cfg.output.format,
            "description": FORMAT_DESCRIPTIONS[cfg.output.format],
        },
        "splits": split_names(cfg.output.splits),
        "split_fractions": dict(cfg.output.splits),
        "files": files,
        "shards": sorted(
            ({k: v for k, v in s.items() if k != "files"} for s in shards),
            key=lambda s: s["shard_id"],
        ),
        "rows": rows,
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
        "config": cfg.public_dict(),
        "totals": _with_clean_totals(totals_from(results), shards),
        "manifest_path": posixpath.relpath(manifest_path, dataset.dir),
        **(extra or {}),
    }
    store.write_json(manifest_path, manifest)
    checkpoint("publish.before_switch")
    store.write_bytes(dataset.card, render_card(manifest, schema, dataset.url()).encode())
    checkpoint("publish.after_switch")
    collect_garbage(store, manifest)
    return manifest


def collect_garbage(store: Store, manifest: dict[str, Any]) -> list[str]:
    """Delete what the current publish does not list: other publishes' data files (earlier
    ones, killed ones) and the files of the layout before this one. Returns the names."""
    dataset = DatasetLayout(store)
    keep = {f["path"] for f in manifest["files"]}
    gone = []
    for name in store.ls(dataset.data_dir):
        rel = f"{DATA_DIR}/{name}"
        # a killed local write leaves `.NAME.tmp-XXXX` (Store.write_bytes); it goes too
        if (rel.endswith(".parquet") or ".parquet.tmp-" in name) and rel not in keep:
            store.rm(dataset.file(rel))
            gone.append(rel)
    for name in store.ls(dataset.dir):  # the flat layout: shard-*.parquet, _manifest.json...
        if name.endswith(".parquet") or name in LEGACY_FILES:
            store.rm(dataset.file(name))
            gone.append(name)
    return gone


def _schema_of(store: Store, dataset: DatasetLayout, files: list[dict[str, Any]]) -> pa.Schema:
    """The data files' schema (every file of a publish has the same one)."""
    if not files:
        return pa.schema([])
    path = dataset.file(files[0]["path"])
    return store.retry(
        lambda: _read_schema(store, path), f"reading the schema of {store.location(path)}"
    )


def _read_schema(store: Store, path: str) -> pa.Schema:
    store.fs.invalidate_cache(path)
    with store.fs.open(path, "rb") as fh:
        return pq.read_schema(fh)


__all__ = [
    "PublishStage",
    "RunDedupMarks",
    "check_owner",
    "collect_garbage",
    "commit_publish",
    "digests_of",
    "kept_rows",
    "publish_id",
    "place_ready",
    "publish_shard",
    "ready_shard",
    "published_as",
    "read_card",
    "read_manifest",
    "shard_digests",
    "totals_from",
]
