"""What an honest worker did for one unit, rebuilt by the verifier: the baseline it scores.

A one-step run's unit (`generate`) is scored as before: the run's model and sampling, the
recorded chat of each row, no constraint. A multi-stage run's unit `STAGE:SHARD` is scored
against what *that stage* asks for, never against what the worker wrote down:

- the stage's model (`stages[k].model`, else the run's) and sampling (the run's `sampling`
  with the stage's keys over it, `n` included), and its `guided` constraint, so that an
  honest guided shard is scored under the distribution its engine samples from
  (docs/verify.md, "Guided stages");
- each row's prompt *rendered again* from the committed upstream rows (the plan's prompts
  for the first stage), with the stage's templates, exactly as `StageStep` rendered it on
  the worker; the row's upstream row is `(prompt_id, sample_index // n)`;
- each row's request seed, derived again (`stage_request_seed`).

Those last two are checked on every row (they cost no model time): a row whose recorded
chat or seed differs from the rebuilt one, a row without an upstream row, and an upstream
row without its `n` rows are reasons to fail the unit whatever the scores say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from synthgen.config import ModelConfig, RunConfig, SamplingConfig
from synthgen.config.multistage import COMPLETION_IDS, SAMPLE_INDEX
from synthgen.config.stages import GuidedConfig
from synthgen.engines.base import ScoreRequest
from synthgen.io.checked import read_checked
from synthgen.io.store import Store
from synthgen.stages.multi import StageStep, stage_request_seed, stage_sampling
from synthgen.stages.plan import read_shard_rows
from synthgen.stages.units import stage_config, upstream

__all__ = ["COMPLETION_IDS", "Baseline", "score_requests", "single_step", "stage_baseline"]

_MAX_LISTED = 3  # mismatching rows named in a reason


@dataclass
class Baseline:
    """How the verifier scores one unit's rows."""

    model: ModelConfig
    sampling: SamplingConfig
    guided: GuidedConfig | None = None
    # per row of the shard: the chat the stage's prompt renders to (None: the recorded one)
    chats: list[Any] | None = None
    problems: list[str] = field(default_factory=list)  # found without scoring


def single_step(cfg: RunConfig) -> Baseline:
    return Baseline(cfg.model, cfg.sampling)


def _named(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def stage_baseline(
    cfg: RunConfig, store: Store, stage: str, shard_id: str, table: pa.Table
) -> Baseline:
    """The baseline of unit `stage:shard_id` of a multi-stage run whose committed rows are
    `table`: its stage's model, sampling, constraint, and every row's chat rendered from the
    committed upstream rows, with the rows whose recorded chat or seed differ."""
    run_id = cfg.run_id or ""
    sc = stage_config(cfg, stage)
    if sc is None:
        return single_step(cfg)
    sampling = stage_sampling(cfg, sc)
    out = Baseline(sc.model or cfg.model, sampling, sc.guided)
    up_stage = upstream(cfg, stage)
    rows = (
        read_shard_rows(store, run_id, shard_id)
        if up_stage is None
        else read_checked(store, run_id, shard_id, up_stage).table
    )
    step = StageStep(cfg, sc, shard_id, engine=None, worker="")
    up = step.upstream(rows)  # the rows the worker generated from (drops not fed forward)
    parents = {
        (pid, si): i
        for i, (pid, si) in enumerate(
            zip(
                up.column("prompt_id").to_pylist(), up.column(SAMPLE_INDEX).to_pylist(), strict=True
            )
        )
    }
    n = sampling.n
    got = table.select(["prompt_id", SAMPLE_INDEX, "messages", "seed"]).to_pylist()
    keys = [(r["prompt_id"], r[SAMPLE_INDEX] // n) for r in got]
    orphans = [f"{pid}#{r[SAMPLE_INDEX]}" for (pid, _), r in zip(keys, got, strict=True)
               if (pid, _) not in parents]  # fmt: skip
    if orphans:
        out.problems.append(
            f"{len(orphans)} row(s) have no upstream row to come from ({_named(orphans)})"
        )
    counts: dict[tuple[str, int], int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    short = [f"{pid}#{si}" for (pid, si) in parents if counts.get((pid, si), 0) != n]
    if short:
        out.problems.append(
            f"{len(short)} upstream row(s) do not have their n={n} rows ({_named(short)})"
        )
    needed = sorted({parents[k] for k in keys if k in parents})
    rendered = step.templates.render_rows(up.take(pa.array(needed, pa.int64()))) if needed else []
    chat_of = dict(zip(needed, rendered, strict=True))
    chats: list[Any] = []
    wrong_chat, wrong_seed = [], []
    for k, r in zip(keys, got, strict=True):
        name = f"{r['prompt_id']}#{r[SAMPLE_INDEX]}"
        if k not in parents:
            chats.append(json.loads(r["messages"]))  # named above; scored as recorded
            continue
        chat = chat_of[parents[k]]
        chats.append(chat)
        if json.loads(r["messages"]) != chat:
            wrong_chat.append(name)
        if r["seed"] != stage_request_seed(sampling.seed, k[0], k[1], stage):
            wrong_seed.append(name)
    if wrong_chat:
        out.problems.append(
            f"{len(wrong_chat)} row(s) record a prompt other than the one stage {stage!r} "
            f"renders from its committed upstream rows ({_named(wrong_chat)})"
        )
    if wrong_seed:
        out.problems.append(
            f"{len(wrong_seed)} row(s) record a seed other than the stage's request seed "
            f"({_named(wrong_seed)})"
        )
    out.chats = chats
    return out


def score_requests(table: pa.Table, base: Baseline) -> list[ScoreRequest]:
    """One scoring request per row that has a completion to score (a rejected prompt has
    none): the baseline's chat (else the recorded one), the completion text, and the
    sampled token ids where the shard keeps them (a guided stage's `completion_ids`)."""
    ids = (
        table.column(COMPLETION_IDS).to_pylist()
        if COMPLETION_IDS in table.column_names
        else [None] * table.num_rows
    )
    chats = (
        base.chats
        if base.chats is not None
        else [json.loads(m) for m in table.column("messages").to_pylist()]
    )
    rows = table.select(["prompt_id", "completion", "drop_reason"]).to_pylist()
    return [
        ScoreRequest(r["prompt_id"], chat, r["completion"], completion_ids=tok)
        for r, chat, tok in zip(rows, chats, ids, strict=True)
        if r["drop_reason"] != "rejected_prompt"
    ]
