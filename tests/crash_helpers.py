"""Real processes for crash tests: a `dask scheduler` + `dask worker`s on loopback, and the
`synthgen` CLI in a subprocess (run to its end, or SIGKILLed at a named checkpoint)."""

from __future__ import annotations

import json
import os
import posixpath
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from synthgen.io.layout import DEFAULT_STAGE
from tests.conftest import REPO, free_port

DASK = str(Path(sys.executable).with_name("dask"))


def fresh_attempt(store: Any, run_id: str, workers: Sequence[str], max_age_s: float = 0.5):
    """A running attempt on one of `workers` that started under `max_age_s` ago, once some
    shard of the run committed (the run is under way), or None: with 1 s shards, one that
    young is mid-engine when its worker is frozen or cut off.

    One call lists the commit and attempt folders and reads only the start markers of
    shards with no commit (the few running), newest first. Reading every marker of the run
    (`attempt_history`: two requests each, ~34 a call late in an 8-shard run) made a call
    take over a second on a loaded CI machine, longer than an attempt stays this young, and a
    CI run ended before any call saw one."""
    from synthgen.io.attempts import AttemptName, attempt_dir
    from synthgen.io.layout import RunLayout

    commits = RunLayout(store, run_id).stage(DEFAULT_STAGE).commits_dir
    committed = {n.removesuffix(".json") for n in store.ls(commits) if n.endswith(".json")}
    if not committed:
        return None
    directory = attempt_dir(store, run_id)
    running = [
        p
        for p in map(AttemptName.parse, store.ls(directory))
        if p is not None and p.shard_id not in committed
    ]
    for p in sorted(running, key=lambda p: p.attempt, reverse=True):
        marker = store.read_json(posixpath.join(directory, p.name))
        age = (datetime.now(UTC) - datetime.fromisoformat(marker["started_at"])).total_seconds()
        if marker["worker"] in workers and age < max_age_s:
            return {**marker, "attempt": p.attempt, "outcome": "running"}
    return None


def check_routed_around(store: Any, run_id: str, victim: dict, summary_path: Path):
    """After a run whose worker froze or was cut off mid-attempt `victim`: that attempt is
    lost (outcome and its one ledger row), the shard was committed by another worker and
    re-run by the deadlines, which name the worker. Returns a function giving the victim
    attempt's ledger rows (to check again after the thaw or reconnect)."""
    from synthgen.cost.ledger import Ledger
    from synthgen.io.attempts import attempt_history
    from synthgen.io.layout import RunLayout

    worker = victim["worker"]
    mine = [a for a in attempt_history(store, run_id) if a["shard_id"] == victim["shard_id"]]
    lost = [a for a in mine if a["attempt"] == victim["attempt"]]
    assert [a["outcome"] for a in lost] == ["lost"], mine
    assert [a["worker"] for a in mine if a["outcome"] == "committed"] != [worker]
    ledger = Ledger(RunLayout(store, run_id))

    def victim_rows() -> list[dict]:
        rows = ledger.rows(victim["shard_id"]).to_pylist()
        return [r for r in rows if r["attempt"] == victim["attempt"]]

    rows = victim_rows()
    assert [(r["status"], r["worker"]) for r in rows] == [("lost", worker)], rows
    late = json.loads(summary_path.read_text())["deadlines"]
    assert worker in late["missed"], late
    assert late["reruns"].get(victim["shard_id"], 0) >= 1, late
    return victim_rows


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    env.update(extra)
    return env


def wait_for(pred: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class DaskProcs:
    address: str
    scheduler: subprocess.Popen[bytes]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # address -> proc
    logs: Path | None = None

    def kill_worker(self, address: str) -> None:
        proc = self.workers[address]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def freeze_worker(self, address: str) -> None:
        """SIGSTOP: the process keeps its sockets open and answers nothing (a hung or
        partitioned host, as the scheduler sees it)."""
        os.kill(self.workers[address].pid, signal.SIGSTOP)

    def thaw_worker(self, address: str) -> None:
        proc = self.workers[address]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        for address in self.workers:
            self.thaw_worker(address)  # a stopped process never handles SIGTERM
        for proc in [*self.workers.values(), self.scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers.values(), self.scheduler]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def start_dask(
    tmp: Path,
    n_workers: int = 2,
    host: str = "127.0.0.1",
    workers: Sequence[tuple[str, Sequence[str]]] | None = None,
) -> DaskProcs:
    """`dask scheduler` and `dask worker --no-nanny` processes (a SIGKILLed worker stays dead).

    The scheduler listens on `host`; `workers`, when given, is one (listen address, command
    prefix) per worker (e.g. `ip netns exec NS`: a worker in a network namespace); else
    `n_workers` workers on loopback."""
    port = free_port()
    address = f"tcp://{host}:{port}"
    env = child_env()
    log = (tmp / "dask.log").open("ab")
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", host, "--port", str(port),
         "--dashboard-address", "127.0.0.1:0"],
        cwd=REPO, env=env, stdout=log, stderr=log,
    )  # fmt: skip
    procs = DaskProcs(address, scheduler, logs=tmp / "dask.log")
    if workers is None:
        workers = [("127.0.0.1", ())] * n_workers
    n_workers = len(workers)
    for i, (whost, prefix) in enumerate(workers):
        wport = free_port()
        waddr = f"tcp://{whost}:{wport}"
        procs.workers[waddr] = subprocess.Popen(
            [*prefix, DASK, "worker", address, "--no-nanny", "--nthreads", "1", "--host", whost,
             "--worker-port", str(wport), "--dashboard-address", "127.0.0.1:0",
             "--name", f"w{i}", "--memory-limit", "0"],
            cwd=REPO, env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        wait_for(lambda: _n_workers(address) == n_workers, 60, f"{n_workers} dask workers")
    except Exception:
        procs.stop()
        raise
    return procs


def _n_workers(address: str) -> int:
    code = (
        "from distributed import Client;"
        f"c=Client('{address}',timeout=5);print(len(c.scheduler_info()['workers']));c.close()"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
            env=child_env(),
        )  # fmt: skip
        return int(out.stdout.strip().splitlines()[-1])
    except Exception:
        return -1


def start_cli(
    config: str, summary: Path, log: Path, *args: str, **env: str
) -> subprocess.Popen[bytes]:
    """`synthgen run CONFIG` in its own process (using the test session's Prefect API)."""
    fh = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "synthgen.cli", "run", config, "--summary-json", str(summary), *args],
        cwd=REPO, env=child_env(**env), stdout=fh, stderr=subprocess.STDOUT,
    )  # fmt: skip


def run_cli(config: str, tmp: Path, name: str, *args: str, timeout: float = 240, **env: str):
    """Run the CLI to completion; returns (exit code, summary dict or None, output text)."""
    summary = tmp / f"{name}.summary.json"
    log = tmp / f"{name}.log"
    proc = start_cli(config, summary, log, *args, **env)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = log.read_text(errors="replace")
    data = json.loads(summary.read_text()) if summary.is_file() else None
    return code, data, text


@dataclass
class KilledRun:
    """A `synthgen run` that SIGKILLed itself at a checkpoint (`kill_at`)."""

    code: int
    procs: dict[psutil.Process, str]  # every process it was seen to start -> command line
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def remaining(self, timeout: float = 60) -> list[str]:
        """The processes it started that are still running after up to `timeout` seconds
        (the watchdog stops them within about its grace period); [] when none is."""
        deadline = time.monotonic() + timeout
        while True:
            alive = []
            for p, cmd in self.procs.items():
                try:
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{p.pid}: {cmd[:160]}")
                except psutil.Error:
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.3)


def kill_at(point: str, config: str, log: Path, *args: str, timeout: float = 300) -> KilledRun:
    """`synthgen run CONFIG ARGS` until it SIGKILLs itself at checkpoint `point` (POINT[:N],
    tests/support/killpoint.py); every process it starts is recorded while it runs."""
    with log.open("wb") as fh:
        cli = subprocess.Popen(
            [sys.executable, "-m", "tests.support.killpoint", point, "run", config, *args],
            cwd=REPO, env=child_env(), stdout=fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        seen: dict[psutil.Process, str] = {}
        deadline = time.monotonic() + timeout
        while cli.poll() is None:
            if time.monotonic() > deadline:
                cli.kill()
                cli.wait(timeout=10)
                raise TimeoutError(f"never reached {point}:\n{log.read_text()[-3000:]}")
            try:
                for p in psutil.Process(cli.pid).children(recursive=True):
                    # the latest command line: a child seen between fork and exec still
                    # shows its parent's
                    seen[p] = " ".join(p.cmdline())
            except psutil.Error:  # it exited meanwhile, or a child did
                pass
            time.sleep(0.1)
    return KilledRun(cli.returncode, seen, log)
