"""The worker's engine takes one call at a time: turns, and who had the engine when.

A worker holds several shard attempts at once (`cluster.overlap`): while one runs the engine,
the others read their prompts, or clean, write and commit what the engine gave them. Every
engine call (generate, score) takes the process's one turn first, so the device never runs
two calls at once and the next shard's `generate` starts the moment the previous one ends,
not after its shard is written and committed.

The turns also say how a worker's time is shared between the attempts it holds (the ledger's
`wall_seconds`): an attempt is charged from the start of its turn until it ends or the next
turn on this worker starts, whichever is first (`charged_until`), so the attempts' charged
windows never overlap and their sum never exceeds the time the worker was held.

A call that never returns (a stuck engine) must not stop its worker for good: a later
attempt of the same unit (the flow's re-run of it), or any call once the holder has held the
turn past `cluster.shard_timeout_s`, stops waiting for it and takes turns on a new lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_TURN = threading.Lock()  # held for the length of one engine call (replaced if abandoned)
_STATE = threading.Lock()
_STARTS: OrderedDict[int, float] = OrderedDict()  # turn number -> its start (epoch s)
_KEEP = 256  # turn starts remembered (an attempt asks only about the turn after its own)
_SEQ = 0
_POLL_S = 0.5  # how often a waiting call looks whether the holder was abandoned
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Turn:
    seq: int  # this process's turn number, 1, 2, ...
    started: float  # time.time() when the turn was taken
    waited: float  # seconds spent waiting for it
    key: str | None = None  # the unit (stage/shard) whose attempt holds it
    attempt: int = 0


_HOLDER: tuple[Turn, float] | None = None  # the current turn and its monotonic start


def _abandoned(key: str | None, attempt: int, abandon_after: float | None) -> str | None:
    """Why the current holder no longer owns the engine (None: it does). A later attempt
    of the holder's own unit means the flow gave up on the holder's attempt; a holder past
    `cluster.shard_timeout_s` has been re-run elsewhere. Its call (stuck, say) keeps the old
    lock; the waiters take turns on a new one."""
    if _HOLDER is None:
        return None
    turn, since = _HOLDER
    if key is not None and turn.key == key and attempt > turn.attempt:
        return f"attempt {attempt} of {key} started while attempt {turn.attempt} held it"
    held = time.monotonic() - since
    if abandon_after is not None and held > abandon_after:
        return f"{turn.key or 'a call'} has held it {held:.0f}s (shard timeout {abandon_after:g}s)"
    return None


@contextmanager
def engine_turn(
    key: str | None = None, attempt: int = 0, abandon_after: float | None = None
) -> Iterator[Turn]:
    """Hold this process's engine turn for one engine call of attempt `attempt` of unit
    `key`. A holder that was abandoned (`_abandoned`) is not waited for."""
    global _SEQ, _TURN, _HOLDER
    asked = time.perf_counter()
    turn: Turn | None = None
    while True:
        lock = _TURN
        if lock.acquire(timeout=_POLL_S):
            break
        with _STATE:
            why = _abandoned(key, attempt, abandon_after) if lock is _TURN else None
            if why is not None:
                log.warning("engine turn: not waiting for the holder any longer: %s", why)
                _TURN, _HOLDER = threading.Lock(), None
    try:
        with _STATE:
            _SEQ += 1
            turn = Turn(_SEQ, time.time(), time.perf_counter() - asked, key, attempt)
            _STARTS[turn.seq] = turn.started
            while len(_STARTS) > _KEEP:
                _STARTS.popitem(last=False)
            if lock is _TURN:
                _HOLDER = (turn, time.monotonic())
        yield turn
    finally:
        with _STATE:
            if turn is not None and _HOLDER is not None and _HOLDER[0] is turn:
                _HOLDER = None
        lock.release()


def next_turn_started(turn: Turn) -> float | None:
    """When the turn after `turn` started in this process (None: not yet)."""
    with _STATE:
        return _STARTS.get(turn.seq + 1)


def charged_until(turn: Turn | None, now: float) -> float:
    """The end of an attempt's charged window: `now`, or the start of the next turn if that
    came first (the worker's time from then on is the next attempt's)."""
    if turn is None:
        return now
    nxt = next_turn_started(turn)
    return now if nxt is None else max(turn.started, min(now, nxt))
