"""TEMPORARY stand-in (replaced by the ms-lib branch's StageStep): n=1, no parse/guided."""

from __future__ import annotations

import json
import time
from typing import Any

import jinja2
import jinja2.sandbox
import pyarrow as pa
import pyarrow.compute as pc

from synthgen.config import RunConfig
from synthgen.config.stages import StageConfig
from synthgen.engines.base import GenRequest, prompt_seed
from synthgen.io.schema import RECORD_SCHEMA
from synthgen.stages.base import Stage

_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)


class StageStep(Stage):
    def __init__(
        self, cfg: RunConfig, sc: StageConfig, shard_id: str, engine: Any, worker: str
    ) -> None:
        self.cfg, self.sc, self.shard_id, self.engine, self.worker = (
            cfg,
            sc,
            shard_id,
            engine,
            worker,
        )
        self.name = sc.name  # type: ignore[misc]
        self.completions: list[Any] = []
        self.engine_seconds = 0.0

    def process(self, rows: pa.Table) -> pa.Table:
        if "drop_reason" in rows.column_names:
            rows = rows.filter(pc.is_null(rows["drop_reason"]))
        tmpl = _ENV.from_string(self.sc.prompt)
        reqs, ctxs = [], []
        for r in rows.to_pylist():
            meta = json.loads(r["meta"]) if r.get("meta") else {}
            msgs = json.loads(r["messages"])
            ctx = {**meta, "prompt": msgs[-1]["content"] if "completion" not in r else r["prompt"]}
            for c, v in r.items():
                if c not in ctx and "." not in c:
                    ctx[c] = v
            chat = [{"role": "user", "content": tmpl.render(**ctx)}]
            seed = prompt_seed(self.cfg.sampling.seed, f"{r['prompt_id']}/0/{self.sc.name}")
            reqs.append(GenRequest(r["prompt_id"], chat, seed))
            ctxs.append(r)
        started = time.perf_counter()
        self.completions = self.engine.generate(reqs, self.cfg.sampling)
        self.engine_seconds = time.perf_counter() - started
        out = []
        info, name = self.engine.info, self.sc.name
        for req, up, c in zip(reqs, ctxs, self.completions, strict=True):
            row = {
                k: v for k, v in up.items() if "." in k or k in {x.name for x in self.cfg.stages}
            }
            row.update(
                run_id=self.cfg.run_id,
                shard_id=self.shard_id,
                prompt_id=req.prompt_id,
                prompt=req.messages[-1]["content"],
                messages=json.dumps(req.messages),
                completion=c.text,
                finish_reason=c.finish_reason,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                model=info.model,
                engine=info.engine,
                sampling="{}",
                seed=req.seed,
                worker=self.worker,
                device=info.device,
                created_at=up.get("created_at")
                or __import__("datetime").datetime.now(__import__("datetime").UTC),
                meta=up.get("meta"),
                error=c.error,
                text_hash=None,
                minhash=None,
                drop_reason=None,
                sample_index=0,
            )
            row[name] = c.text
            row[f"{name}.messages"] = json.dumps(req.messages)
            out.append(row)
        names = [f.name for f in RECORD_SCHEMA]
        t = pa.Table.from_pylist(out)
        base = (
            pa.Table.from_pylist([{k: r[k] for k in names} for r in out], schema=RECORD_SCHEMA)
            if out
            else RECORD_SCHEMA.empty_table()
        )
        for col in t.column_names:
            if col not in names:
                base = base.append_column(col, t[col])
        return base
