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
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_TURN = threading.Lock()  # held for the length of one engine call
_STATE = threading.Lock()
_STARTS: OrderedDict[int, float] = OrderedDict()  # turn number -> its start (epoch s)
_KEEP = 256  # turn starts remembered (an attempt asks only about the turn after its own)
_SEQ = 0


@dataclass(frozen=True)
class Turn:
    seq: int  # this process's turn number, 1, 2, ...
    started: float  # time.time() when the turn was taken
    waited: float  # seconds spent waiting for it


@contextmanager
def engine_turn() -> Iterator[Turn]:
    """Hold this process's engine turn for one engine call."""
    global _SEQ
    asked = time.perf_counter()
    _TURN.acquire()
    try:
        with _STATE:
            _SEQ += 1
            turn = Turn(_SEQ, time.time(), time.perf_counter() - asked)
            _STARTS[turn.seq] = turn.started
            while len(_STARTS) > _KEEP:
                _STARTS.popitem(last=False)
        yield turn
    finally:
        _TURN.release()


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
