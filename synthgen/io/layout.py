"""Every path and marker of a run, and of the published dataset, in one place.

Pure path arithmetic over a `Store`'s root: nothing here touches storage.

    OUTPUT/
      runs/RUN_ID/                       RunLayout(store, run_id).root
        plan/plan.json                   .plan_index
        plan/prompts/SHARD.parquet       .plan_prompts(shard)
        rejects.jsonl                    .rejects
        _lease.json                      .lease  (+ _lease.json.lock beside it on local disks)
        budget.json                      .budget
        workers/WORKER.parquet           .worker(worker_id)     (what a worker bills the run)
        dedup/drops.parquet              .dedup_drops   (the whole run's; written last)
        dedup/drops/SHARD.parquet        .dedup_drops_shard(shard)  (each shard's part)
        publish/PID/manifest.json        .publish_manifest(pid)  (one per publish; immutable)
        publish/ready/SHARD.SHA.SPLIT.parquet  .publish_ready_file(...)  (written as shards
                                         commit; moved into dataset/data/ by the publish)
        report.png, report.md            .report_png, .report_md
        shards/SHARD.parquet             .stage().shard(shard)            \\
        _commits/SHARD.json              .stage().commit(shard)            |
        attempts/SHARD.N.UID.json        .stage().attempt(shard, n, uid)   | the default
        ledger/SHARD-attempt-N-ID.parquet  .stage().ledger_attempt(...)    | stage
        ledger/SHARD-verify-aN-ID.parquet  .stage().ledger_verification()  | ("generate")
        verify/SHARD.aN.json, flagged.json .stage().verify_record(), ...   |
        quarantine/SHARD.aN.{parquet,json} .stage().quarantined(...)      /
        stages/NAME/...                  .stage(NAME): another stage's shards, same names
      dataset/                           DatasetLayout(store).dir  (a Hugging Face dataset repo)
        README.md                        .card: the card; its `configs` list the data files
                                         of the current publish (written last: the switch)
        data/SPLIT-NNNNN-of-NNNNN-PID.parquet  .data_file(split, i, n, pid)
      dedup_index/                       DatasetLayout(store).dedup_index (beside dataset/:
                                         no data glob of the dataset reaches it)

A stage's shard is the unit of commit, retry and cost, so everything keyed by a shard lives
under its stage. The default stage is the run root itself, so the paths of a one-stage run
(every run written so far) are unchanged and such runs still resume.
"""

from __future__ import annotations

import posixpath
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: store.py imports the names below
    from synthgen.io.store import Store

RUNS_DIR = "runs"
DATASET_DIR = "dataset"
STAGES_DIR = "stages"
DEFAULT_STAGE = "generate"

MANIFEST = "manifest.json"
CARD = "README.md"
DATA_DIR = "data"
PUBLISH_DIR = "publish"
DEDUP_INDEX_DIR = "dedup_index"
LEASE = "_lease.json"
BUDGET = "budget.json"
REJECTS = "rejects.jsonl"
LEDGER_DIR = "ledger"
WORKERS_DIR = "workers"

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def safe_key(text: str) -> str:
    """A string usable as one path segment on every filesystem and object store."""
    return _SAFE.sub("_", text).strip("_") or "_"


UNIT_SEP = ":"


def unit_key(stage: str, shard_id: str) -> str:
    """The name of one shard of one stage (a unit of work): the shard id for the default
    stage (as every one-stage run names it), `STAGE:SHARD` for a multi-stage run's stages."""
    return shard_id if stage == DEFAULT_STAGE else f"{stage}{UNIT_SEP}{shard_id}"


def split_key(key: str) -> tuple[str, str]:
    """(stage, shard_id) of a unit name (`unit_key`)."""
    if UNIT_SEP in key:
        stage, shard = key.split(UNIT_SEP, 1)
        return stage, shard
    return DEFAULT_STAGE, key


def _join(*parts: str) -> str:
    return posixpath.join(*parts)


class StageLayout:
    """The per-shard keys of one stage of a run (under `base`)."""

    def __init__(self, base: str, name: str) -> None:
        self.base = base
        self.name = name

    # shards and their commit markers
    @property
    def shards_dir(self) -> str:
        return _join(self.base, "shards")

    def shard(self, shard_id: str) -> str:
        return _join(self.shards_dir, f"{shard_id}.parquet")

    @property
    def commits_dir(self) -> str:
        return _join(self.base, "_commits")

    def commit(self, shard_id: str) -> str:
        return _join(self.commits_dir, f"{shard_id}.json")

    # attempt start markers: SHARD.N.UID.json (io.attempts.AttemptName parses the name)
    @property
    def attempts_dir(self) -> str:
        return _join(self.base, "attempts")

    def attempt(self, shard_id: str, attempt: int, uid: str) -> str:
        return _join(self.attempts_dir, f"{shard_id}.{attempt}.{uid}.json")

    # an untrusted worker's output, before the flow checks and commits it (io.grant)
    @property
    def staging_dir(self) -> str:
        return _join(self.base, "staging")

    def staged(self, shard_id: str, attempt: int, uid: str) -> str:
        return _join(self.staging_dir, f"{shard_id}.{attempt}.{uid}.parquet")

    # the cost ledger: one Parquet file per attempt or verification check
    @property
    def ledger_dir(self) -> str:
        return _join(self.base, LEDGER_DIR)

    def ledger_attempt(self, shard_id: str, attempt: int, attempt_id: str) -> str:
        name = f"{safe_key(shard_id)}-attempt-{attempt}-{safe_key(attempt_id)[:12]}.parquet"
        return _join(self.ledger_dir, name)

    def ledger_verification(self, shard_id: str, attempt: int, check_id: str) -> str:
        name = f"{safe_key(shard_id)}-verify-a{attempt}-{safe_key(check_id)[:12]}.parquet"
        return _join(self.ledger_dir, name)

    def ledger_glob(self, shard_id: str | None = None) -> str:
        """Every ledger file of the stage; with `shard_id`, that shard's attempt rows only
        (never its verification rows)."""
        stem = f"{safe_key(shard_id)}-attempt-*" if shard_id else "*"
        return _join(self.ledger_dir, f"{stem}.parquet")

    # spot checks of untrusted workers
    @property
    def verify_dir(self) -> str:
        return _join(self.base, "verify")

    def verify_record(self, shard_id: str, attempt: int) -> str:
        return _join(self.verify_dir, f"{shard_id}.a{attempt}.json")

    @property
    def flagged(self) -> str:
        return _join(self.verify_dir, "flagged.json")

    @property
    def quarantine_dir(self) -> str:
        return _join(self.base, "quarantine")

    def quarantined(self, shard_id: str, attempt: int, ext: str) -> str:
        """`quarantine/SHARD.aN.parquet` (the shard) or `.json` (marker and verdict)."""
        return _join(self.quarantine_dir, f"{shard_id}.a{attempt}.{ext}")


class RunLayout:
    """The paths of one run, `OUTPUT/runs/RUN_ID/...`, as paths inside `store.fs`."""

    def __init__(self, store: Store, run_id: str, root: str | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.root = root if root is not None else store.path(RUNS_DIR, run_id)

    @classmethod
    def at_root(cls, store: Store) -> RunLayout:
        """The run whose directory is the store's root (`synthgen report OUTPUT/runs/RUN_ID`)."""
        return cls(store, posixpath.basename(store.root.rstrip("/")), store.root)

    def path(self, *parts: str) -> str:
        return _join(self.root, *parts)

    def url(self, path: str | None = None) -> str:
        """User-facing location (with protocol) of the run, or of one of its paths."""
        return self.store.location(self.root if path is None else path)

    # one stage's shards
    def stage(self, name: str = DEFAULT_STAGE) -> StageLayout:
        """The per-shard keys of stage `name`; the default stage lives at the run root."""
        if name == DEFAULT_STAGE:
            return StageLayout(self.root, name)
        if not _STAGE_NAME.match(name):
            raise ValueError(f"stage name {name!r}: use lowercase letters, digits, '-' and '_'")
        return StageLayout(self.path(STAGES_DIR, name), name)

    # run-wide objects
    @property
    def plan_dir(self) -> str:
        return self.path("plan")

    @property
    def plan_index(self) -> str:
        return self.path("plan", "plan.json")

    def plan_prompts(self, shard_id: str) -> str:
        return self.path("plan", "prompts", f"{shard_id}.parquet")

    @property
    def rejects(self) -> str:
        return self.path(REJECTS)

    @property
    def lease(self) -> str:
        return self.path(LEASE)

    @property
    def budget(self) -> str:
        return self.path(BUDGET)

    @property
    def workers_dir(self) -> str:
        return self.path(WORKERS_DIR)

    def worker(self, worker_id: str) -> str:
        return self.path(WORKERS_DIR, f"{safe_key(worker_id)}.parquet")

    @property
    def removed_workers(self) -> str:
        """Workers the flow removed from the cluster (frozen, cut off): address -> when."""
        return self.path(WORKERS_DIR, "removed.json")

    @property
    def dedup_dir(self) -> str:
        return self.path("dedup")

    @property
    def dedup_drops(self) -> str:
        return self.path("dedup", "drops.parquet")

    def dedup_drops_shard(self, shard_id: str) -> str:
        return self.path("dedup", "drops", f"{shard_id}.parquet")

    @property
    def dedup_drops_parts(self) -> str:
        return self.path("dedup", "drops")

    @property
    def publish_ready(self) -> str:
        """Publish-ready files of committed shards, written as they commit (moved into
        `dataset/data/` by the publish when the run-wide dedup dropped none of their rows)."""
        return self.path(PUBLISH_DIR, "ready")

    def publish_ready_file(self, shard_id: str, source_sha256: str, split: str) -> str:
        """One split of a shard's publish-ready rows; the committed file's sha256 in the name
        (a shard generated again gets other names)."""
        return self.path(PUBLISH_DIR, "ready", f"{shard_id}.{source_sha256[:16]}.{split}.parquet")

    def publish_manifest(self, publish_id: str) -> str:
        """The manifest of one publish of this run (written before the card switches)."""
        return self.path(PUBLISH_DIR, publish_id, MANIFEST)

    @property
    def report_png(self) -> str:
        return self.path("report.png")

    @property
    def report_md(self) -> str:
        return self.path("report.md")

    @property
    def dataset(self) -> DatasetLayout:
        return DatasetLayout(self.store)


def all_runs_ledger_glob(store: Store) -> str:
    """The default-stage ledger files of every run under the store (`estimate`)."""
    return RunLayout(store, "*").stage().ledger_glob()


class DatasetLayout:
    """The published dataset, `OUTPUT/dataset/` (shared by the runs of an output): a Hugging
    Face dataset repository, `README.md` + `data/*.parquet`, and nothing else."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.path(DATASET_DIR)

    def file(self, name: str) -> str:
        """A path under the dataset folder (`name` relative to it, e.g. `data/x.parquet`)."""
        return _join(self.dir, name)

    @property
    def card(self) -> str:
        return self.file(CARD)

    @property
    def data_dir(self) -> str:
        return self.file(DATA_DIR)

    @staticmethod
    def data_name(split: str, index: int, count: int, publish_id: str) -> str:
        """`data/SPLIT-NNNNN-of-NNNNN-PID.parquet`, relative to the dataset folder (the Hub's
        split-from-file-name pattern; the publish id keeps each publish's files apart)."""
        return f"{DATA_DIR}/{split}-{index:05d}-of-{count:05d}-{publish_id}.parquet"

    @property
    def dedup_index(self) -> str:
        """The band index of what was published here: beside the dataset folder."""
        return self.store.path(DEDUP_INDEX_DIR)

    def url(self, path: str | None = None) -> str:
        return self.store.location(self.dir if path is None else path)


__all__ = [
    "BUDGET",
    "CARD",
    "DATASET_DIR",
    "DATA_DIR",
    "DEDUP_INDEX_DIR",
    "DEFAULT_STAGE",
    "LEASE",
    "MANIFEST",
    "PUBLISH_DIR",
    "RUNS_DIR",
    "DatasetLayout",
    "RunLayout",
    "StageLayout",
    "all_runs_ledger_glob",
    "safe_key",
    "split_key",
    "unit_key",
]
