"""The run's live progress in the Prefect UI: one progress artifact per generate flow run
(`create_progress_artifact`), its percentage and a one-line description (units done of the
run's total, tokens/s, $ so far) updated as units return, at most once every `every_s`
seconds and always for the last unit. The UI is never allowed to fail or slow the run: an
artifact that cannot be written is reported once and then left alone."""

from __future__ import annotations

import contextvars
import re
import threading
import time
from typing import Any
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact


def progress_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "synthgen-progress-" + (re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-") or "run")


class RunProgress:
    """Counts a generate flow's returned units and mirrors them into the progress artifact.
    `total`: the run's units (every stage); `done_before`: those committed before this call."""

    def __init__(
        self,
        run_id: str,
        total: int,
        done_before: int = 0,
        every_s: float = 2.0,
        started: float | None = None,
    ) -> None:
        self.run_id = run_id
        self.total = max(total, 1)
        self.done_before = done_before
        self.done = done_before
        self.tokens = 0
        self.cost_usd = 0.0
        self.every_s = every_s
        self.started = time.perf_counter() if started is None else started  # perf_counter
        self._last = float("-inf")
        self._id: UUID | None = None
        self._failed = False
        self._lock = threading.Lock()  # one write at a time, in order
        # the artifact's creation (a Prefect API round trip, ~0.2 s) beside the first
        # submissions, in the flow run's context (the artifact belongs to its flow run);
        # the next write waits for it
        self._lock.acquire()
        threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._first_write,),
            name="synthgen-progress",
            daemon=True,
        ).start()

    def _first_write(self) -> None:
        try:
            self._write_locked(force=True)
        finally:
            self._lock.release()

    @property
    def returned(self) -> int:
        """Units returned in this call (a unit redone after verification counts twice)."""
        return self.done - self.done_before

    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)

    @property
    def percent(self) -> float:
        return round(min(100.0, 100.0 * self.done / self.total), 2)

    def description(self) -> str:
        return (
            f"run {self.run_id}: {min(self.done, self.total)}/{self.total} shards · "
            f"{self.tokens_per_s():.1f} tokens/s · ${self.cost_usd:.4f} so far"
        )

    def add(self, result: dict[str, Any]) -> None:
        """One unit's attempt returned (committed, skipped or superseded)."""
        self.done += 1
        self.tokens += int(result.get("completion_tokens") or 0)
        self.cost_usd += float(result.get("cost_usd") or 0.0)
        self._write(force=self.done >= self.total)

    def finish(self) -> None:
        """The loop ended: the last figures, whatever the throttle."""
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        with self._lock:
            self._write_locked(force)

    def _write_locked(self, force: bool) -> None:
        now = time.perf_counter()
        if self._failed or (not force and now - self._last < self.every_s):
            return
        self._last = now
        try:
            if self._id is None:
                self._id = create_progress_artifact(
                    progress=self.percent,
                    key=progress_key(self.run_id),
                    description=self.description(),
                )
            else:
                update_progress_artifact(
                    self._id, progress=self.percent, description=self.description()
                )
        except Exception as exc:  # the run's outcome does not depend on the UI artifact
            self._failed = True
            print(f"progress: could not write the Prefect artifact: {type(exc).__name__}: {exc}")
