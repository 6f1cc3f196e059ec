"""Test-only: one shard attempt blocks like a stuck GPU call (tests of the shard timeout).

The engine knows neither shards nor attempts, so the hang is keyed by a prompt id (one of the
chosen shard's: `first_prompt_id(cfg, shard_id)`) and happens once across every process: the
first `generate` call holding that prompt creates `STATE/claimed` (exclusively) and blocks
until `STATE/release` exists or `seconds` pass; every later call (the shard's re-run, on any
worker) runs normally. The blocked call writes `STATE/hanging` (JSON: pid, worker, the call's
prompt ids) when it starts blocking and `STATE/returned` when it is released (or its
`seconds` pass), so a test can tell whether the hung call was waited for without reading a
clock. Like an engine, the blocked call stops when its attempt is superseded
(`synthgen.engines.abort`: another attempt committed the shard): it writes `STATE/stopped`
and raises `Superseded`.

Installed through the engine cache's extension point (`set_engine_wrapper`), either

- in this process: `install(prompt_id, state_dir, seconds)` ... `uninstall()`;
- in every worker of a Dask cluster started while dask's own preload settings hold:

      with dask.config.set(preload_config(prompt_id, state_dir, seconds)):
          synthgen_run(...)  # the flow's LocalCluster starts its workers with the preload

- or on a worker started by hand:
  `dask worker ADDRESS --preload tests.support.hang --prompt-id P --state-dir D --seconds S`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from synthgen.config import RunConfig, SamplingConfig
from synthgen.engines import abort
from synthgen.engines.base import Completion, GenRequest, InferenceEngine
from synthgen.engines.cache import set_engine_wrapper, worker_identity
from synthgen.stages.prompts import load_prompts
from synthgen.stages.sharding import make_shards

POLL_S = 0.05  # how often a hanging call looks for the release file


@dataclass(frozen=True)
class Hang:
    """The shared state of one hang: a directory every process of the test can see."""

    state_dir: Path
    prompt_id: str
    seconds: float = 3600.0

    @property
    def _claimed(self) -> Path:
        return self.state_dir / "claimed"

    @property
    def _hanging(self) -> Path:
        return self.state_dir / "hanging"

    @property
    def _release(self) -> Path:
        return self.state_dir / "release"

    @property
    def _returned(self) -> Path:
        return self.state_dir / "returned"

    @property
    def _stopped(self) -> Path:
        return self.state_dir / "stopped"

    def block_once(self, prompt_ids: list[str]) -> bool:
        """Block if this is the first call to claim the hang; True if it did."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self._claimed, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        worker, _ = worker_identity()
        info = {"pid": os.getpid(), "worker": worker, "prompt_ids": prompt_ids}
        tmp = self._hanging.with_suffix(".tmp")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        tmp.replace(self._hanging)  # visible whole or not at all
        deadline = time.monotonic() + self.seconds
        while not self._release.exists() and time.monotonic() < deadline:
            if abort.superseded():  # like an engine: the flow told this attempt to stop
                self._stopped.touch()
                abort.check()
            time.sleep(POLL_S)
        self._returned.touch()
        return True

    # ------------------------------------------------------------ the test's side
    def started(self) -> dict[str, Any] | None:
        """What the blocked call recorded when it started blocking; None if none has."""
        if not self._hanging.exists():
            return None
        return dict(json.loads(self._hanging.read_text(encoding="utf-8")))

    def returned(self) -> bool:
        """The blocked call was released or ran its `seconds` out (not stopped)."""
        return self._returned.exists()

    def stopped(self) -> bool:
        """The blocked call was superseded and stopped (`synthgen.engines.abort`)."""
        return self._stopped.exists()

    def release(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._release.touch()

    def wait_started(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Wait until the hang has started (a guard against a test that would wait forever,
        not a speed check)."""
        deadline = time.monotonic() + timeout_s
        while (info := self.started()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no generate call with prompt {self.prompt_id!r} started")
            time.sleep(POLL_S)
        return info


class HangingEngine:
    """Wraps an engine: the first call holding the hang's prompt blocks, then runs normally.
    Everything else (`info`, `score`, the inner engine's attributes) is the inner engine's."""

    def __init__(self, inner: InferenceEngine, hang: Hang) -> None:
        self.inner = inner
        self.hang = hang
        self.info = inner.info

    def generate(
        self, requests: Sequence[GenRequest], sampling: SamplingConfig, guided: Any = None
    ) -> list[Completion]:
        ids = [r.prompt_id for r in requests]
        if self.hang.prompt_id in ids:
            self.hang.block_once(ids)
        if guided is None:
            return self.inner.generate(requests, sampling)
        return self.inner.generate(requests, sampling, guided)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def install(prompt_id: str, state_dir: str | Path, seconds: float = 3600.0) -> Hang:
    """Wrap every engine this process builds from now on; returns the hang's state."""
    hang = Hang(Path(state_dir), prompt_id, seconds)
    set_engine_wrapper(lambda engine: HangingEngine(engine, hang))
    return hang


def uninstall() -> None:
    set_engine_wrapper(None)


def first_prompt_id(cfg: RunConfig, shard_id: str) -> str:
    """The first prompt of `shard_id` in the plan of `cfg` (uniform shards)."""
    if cfg.shards.sizing != "uniform":
        raise ValueError(f"first_prompt_id: shards.sizing is {cfg.shards.sizing!r}")
    for shard in make_shards(load_prompts(cfg).records, cfg.shards.size):
        if shard.shard_id == shard_id:
            return shard.prompt_ids[0]
    raise ValueError(f"first_prompt_id: {shard_id} is not in the plan")


def preload_argv(prompt_id: str, state_dir: str | Path, seconds: float) -> list[str]:
    return [f"--prompt-id={prompt_id}", f"--state-dir={state_dir}", f"--seconds={seconds}"]


def preload_config(prompt_id: str, state_dir: str | Path, seconds: float) -> dict[str, Any]:
    """dask settings that make every worker started under them preload this module."""
    return {
        "distributed.worker.preload": [__name__],
        "distributed.worker.preload-argv": preload_argv(prompt_id, state_dir, seconds),
    }


@click.command()
@click.option("--prompt-id", required=True, help="The first generate call with it hangs.")
@click.option("--state-dir", required=True, help="A directory every worker can see.")
@click.option("--seconds", type=float, default=3600.0, help="Longest hang (no release).")
def dask_setup(worker: Any, prompt_id: str, state_dir: str, seconds: float) -> None:
    """Dask preload hook: this worker process's engines hang as configured."""
    install(prompt_id, state_dir, seconds)
