"""Named points of a run, for crash tests: `checkpoint(name)` calls the hook a test installed
(`set_checkpoint_hook`), nothing in production (the hook is None). Tests install a hook that
SIGKILLs the run there (tests/support/killpoint.py, in the process running the flow and, as a
Dask worker preload, in its worker processes), or one that damages the output there.

The points, in the order a run reaches them:

- `run.planned` (flow): the plan is written, nothing generated yet.
- `generate.started` (flow): the generate phase's clock starts (the summary's
  `generate_seconds` runs from here to `generate.done`), nothing submitted yet.
- `generate.file_written` (worker): a shard's file is written, its commit marker not yet.
- `generate.committed` (worker): a shard's commit marker is written, the flow not told yet.
- `generate.done` (flow): the generate loop ended, run-wide dedup and publish not started.
- `dedup.parts_written` (worker): run-wide dedup wrote each shard's drops, not yet the
  run-wide drops file that marks them complete.
- `publish.shard_done` (flow): the flow got one shard's files of the publish.
- `publish.before_switch` (flow): the publish's manifest is written, the card not yet.
- `publish.after_switch` (flow): the card is written, earlier files not yet deleted.
"""

from __future__ import annotations

from collections.abc import Callable

POINTS = (
    "run.planned",
    "generate.started",
    "generate.file_written",
    "generate.committed",
    "generate.done",
    "dedup.parts_written",
    "publish.shard_done",
    "publish.before_switch",
    "publish.after_switch",
)

_hook: Callable[[str], None] | None = None


def set_checkpoint_hook(hook: Callable[[str], None] | None) -> None:
    """Install (or, with None, remove) this process's checkpoint hook."""
    global _hook
    _hook = hook


def checkpoint(name: str) -> None:
    """Call the installed hook with `name` (one of POINTS); a no-op without one."""
    if _hook is not None:
        _hook(name)


__all__ = ["POINTS", "checkpoint", "set_checkpoint_hook"]
