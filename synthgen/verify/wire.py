"""What crosses the trust boundary in a check of an untrusted worker (issue 17): plain data.

The flow (trusted) prepares a check (`synthgen.verify.check.prepare_check`) and sends the
verifier a *score payload*: the sampled score requests, the baseline's model, sampling and
constraint, `top_k` and the engine-turn limit, as lists, dicts, strings and numbers. The
verifier runs its engine's `score()` (`score_payload`) and answers with the scores, its
device and model, and the seconds it spent, as plain data again. The flow reads that answer
with `parse_answer`, which refuses anything malformed (`ForgedScores`): wrong types,
non-finite numbers, fractions out of [0, 1], another unit's or attempt's answer, or scores
that are not one per request, in order.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from synthgen.config import ModelConfig, SamplingConfig
from synthgen.config.stages import GuidedConfig
from synthgen.engines.base import Score, ScoreRequest, ScoringEngine
from synthgen.engines.cache import get_engine, worker_identity
from synthgen.engines.turns import engine_turn
from synthgen.errors import EngineError, SynthgenError

_SCORE_FIELDS = {f.name for f in fields(Score)}
_LOGPROB_MAX = 1e-3  # a log-prob is <= 0 (rounding allowed)
_MAX_TEXT = 500  # the longest device, model, worker or host string an answer may carry


class ForgedScores(SynthgenError, ValueError):
    """A verifier's answer is not a well-formed score of the requests it was sent: the check
    is void; the flow flags the verifier and checks the unit on another worker."""

    retry_elsewhere = True

    def __init__(self, unit: str, reason: str, worker: str | None = None) -> None:
        super().__init__(f"verify {unit}: forged verification result: {reason}; not used")
        self.unit = unit
        self.reason = reason
        self.worker = worker


def score_payload(
    unit: str,
    attempt: int,
    requests: list[ScoreRequest],
    model: ModelConfig,
    sampling: SamplingConfig,
    guided: GuidedConfig | None,
    top_k: int,
    abandon_after: float | None,
) -> dict[str, Any]:
    """What the verifier needs to score `requests` (plain data)."""
    return {
        "unit": unit,
        "attempt": attempt,
        "requests": [asdict(r) for r in requests],
        "model": model.model_dump(mode="json"),
        "sampling": sampling.model_dump(mode="json"),
        "guided": guided.model_dump(mode="json") if guided is not None else None,
        "top_k": top_k,
        "abandon_after": abandon_after,
    }


def score_payload_requests(payload: dict[str, Any]) -> list[ScoreRequest]:
    return [
        ScoreRequest(
            str(r["prompt_id"]),
            list(r["messages"]),
            str(r["completion"]),
            completion_ids=list(r["completion_ids"]) if r.get("completion_ids") else None,
        )
        for r in payload["requests"]
    ]


def score(payload: dict[str, Any]) -> dict[str, Any]:
    """The verifier's side: score the payload's requests with this worker's engine; plain
    data back (the scores, the worker, its device and model, the engine seconds)."""
    model = ModelConfig.model_validate(payload["model"])
    sampling = SamplingConfig.model_validate(payload["sampling"])
    guided = GuidedConfig.model_validate(payload["guided"]) if payload.get("guided") else None
    requests = score_payload_requests(payload)
    engine = get_engine(model)
    if not isinstance(engine, ScoringEngine):
        raise EngineError(
            f"verify {payload['unit']}: engine {model.engine!r} cannot score completions; "
            "disable verify.enabled or use an engine with score()"
        )
    worker, host = worker_identity()
    with engine_turn(abandon_after=payload.get("abandon_after")):  # one call at a time
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        scores = (
            engine.score(requests, sampling, top_k=int(payload["top_k"]), guided=guided)
            if requests
            else []
        )
        seconds = time.perf_counter() - t0
    return {
        "unit": payload["unit"],
        "attempt": payload["attempt"],
        "scores": [asdict(s) for s in scores],
        "worker": worker,
        "host": host,
        "device": engine.info.device,
        "model": engine.info.model,
        "started_at": started_at.isoformat(),
        "seconds": seconds,
    }


@dataclass
class Answer:
    """A verifier's answer, checked (`parse_answer`)."""

    scores: list[Score]
    worker: str
    host: str
    device: str
    model: str
    started_at: datetime
    seconds: float


def _number(value: Any, what: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is {type(value).__name__}, not a number")
    x = float(value)
    if not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        raise ValueError(f"{what} is {x!r}, outside [{lo}, {hi}]")
    return x


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ValueError(f"{what} is not a string of at most {_MAX_TEXT} characters")
    return value


def _score(raw: Any, request: ScoreRequest, i: int) -> Score:
    if not isinstance(raw, dict) or not set(raw) <= _SCORE_FIELDS:
        raise ValueError(f"score {i} is not a score")
    if raw.get("prompt_id") != request.prompt_id:
        raise ValueError(f"score {i} is of prompt {raw.get('prompt_id')!r}, not {request.prompt_id!r}")  # fmt: skip
    tokens = raw.get("tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"score {i}: tokens is {tokens!r}")

    def optional(key: str, lo: float | None, hi: float | None) -> float | None:
        v = raw.get(key)
        return None if v is None else _number(v, f"score {i}: {key}", lo, hi)

    return Score(
        prompt_id=request.prompt_id,
        mean_logprob=_number(raw.get("mean_logprob"), f"score {i}: mean_logprob", hi=_LOGPROB_MAX),
        topk_fraction=_number(raw.get("topk_fraction"), f"score {i}: topk_fraction", 0.0, 1.0),
        tokens=tokens,
        expected_logprob=optional("expected_logprob", None, _LOGPROB_MAX),
        logprob_std=optional("logprob_std", 0.0, None),
        outside_fraction=optional("outside_fraction", 0.0, 1.0),
    )


def parse_answer(
    answer: Any, unit: str, attempt: int, requests: list[ScoreRequest], worker: str | None
) -> Answer:
    """The verifier's answer to a check of `unit`'s `attempt` over `requests`, checked;
    raises `ForgedScores` (naming `worker`) when it is not one."""
    try:
        if not isinstance(answer, dict):
            raise ValueError(f"the answer is {type(answer).__name__}, not a dict")
        if answer.get("unit") != unit or answer.get("attempt") != attempt:
            raise ValueError("the answer is not this check's")
        raw = answer.get("scores")
        if not isinstance(raw, list) or len(raw) != len(requests):
            n = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise ValueError(f"{n} scores for {len(requests)} requests")
        scores = [_score(s, r, i) for i, (s, r) in enumerate(zip(raw, requests, strict=True))]
        started = datetime.fromisoformat(_text(answer.get("started_at"), "started_at"))
        if started.tzinfo is None:
            raise ValueError("started_at has no time zone")
        return Answer(
            scores=scores,
            worker=_text(answer.get("worker"), "worker"),
            host=_text(answer.get("host"), "host"),
            device=_text(answer.get("device"), "device"),
            model=_text(answer.get("model"), "model"),
            started_at=started,
            seconds=_number(answer.get("seconds"), "seconds", 0.0, 7 * 24 * 3600.0),
        )
    except (ValueError, TypeError) as exc:
        raise ForgedScores(unit, str(exc), worker) from exc


__all__ = ["Answer", "ForgedScores", "parse_answer", "score", "score_payload"]
