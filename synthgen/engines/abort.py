"""Stopping a running engine call whose unit another attempt has committed.

The losing copy of a speculated shard (and the abandoned attempt of a shard re-run past its
deadline, on a slow but live host) would otherwise generate to the end of its shard for
nothing: its worker stays busy, and a rented GPU is paid for work that is thrown away. When
the flow takes a unit's first result and the unit had another attempt, it tells every worker
(`supersede`, through Dask's `Client.run`, fire and forget: a frozen worker is not waited
for). The engine calls of that unit on a worker check the flag between steps (`check`: the
fake engine between slices of its simulated time (`sleep`), transformers at every decoding
step, vLLM before every engine step) and raise `Superseded`; the attempt then ends as it would had it found the shard
committed at its end (nothing written, its cost on the ledger as lost or as speculation).

A flag stops only the calls that started before it arrived: a later attempt of the same unit
(verification regenerating it, a re-run) runs normally.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

_KEEP = 4096  # flags remembered per process (oldest forgotten first)
SLEEP_SLICE_S = 0.05  # how often simulated device time (`sleep`) looks at the flag
_LOCK = threading.Lock()
_FLAGS: OrderedDict[str, float] = OrderedDict()  # unit token -> monotonic time of the flag
_LOCAL = threading.local()  # this thread's watched call: (token, monotonic start)


class Superseded(Exception):
    """The engine call's unit was committed by another attempt: the call stopped early."""


def unit_token(run_id: str, unit: str) -> str:
    """The name a flag and a watched call share: a unit of one run."""
    return f"{run_id}/{unit}"


def supersede(token: str) -> None:
    """Stop the calls of `token`'s unit now running in this process (run on each worker)."""
    with _LOCK:
        _FLAGS[token] = time.monotonic()
        _FLAGS.move_to_end(token)
        while len(_FLAGS) > _KEEP:
            _FLAGS.popitem(last=False)


def superseded() -> bool:
    """Whether this thread's watched call (if any) was superseded since it started."""
    watched = getattr(_LOCAL, "watched", None)
    if watched is None:
        return False
    token, started = watched
    flagged = _FLAGS.get(token)
    return flagged is not None and flagged >= started


def check() -> None:
    """Raise `Superseded` if this thread's watched call was superseded (engines call it
    between steps; a no-op outside `watching`)."""
    if superseded():
        raise Superseded(f"{_LOCAL.watched[0]}: another attempt committed it; stopped")


def sleep(seconds: float) -> None:
    """Simulated device time (the fake engine, a benchmark's slowed worker): `seconds`, in
    slices, `check`ed before each and once even when there is nothing to wait."""
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, SLEEP_SLICE_S))


@contextmanager
def watching(token: str) -> Iterator[None]:
    """Engine calls in this block (this thread) stop once `token` is superseded."""
    before = getattr(_LOCAL, "watched", None)
    _LOCAL.watched = (token, time.monotonic())
    try:
        yield
    finally:
        _LOCAL.watched = before
