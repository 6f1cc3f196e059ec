"""The exit codes of `synthgen`, each through the real CLI in a subprocess: 2 invalid input
(one `synthgen: error:` line naming the override or file, no traceback), 3 incomplete (the
budget stopped the run), and no temporary file left by a failed write. 0 is every other e2e
test's, 5 (busy) tests/e2e/test_lease_runs.py's, 130/143 tests/e2e/test_kill.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from synthgen.cli import exit_code
from synthgen.cli.lifecycle import EXIT_BUSY, EXIT_INCOMPLETE, EXIT_INVALID
from synthgen.errors import (
    BudgetExhausted,
    ConfigError,
    HubError,
    HubTokenError,
    PreflightError,
    PromptError,
    RunIncomplete,
    RunLockedError,
    StorageError,
)
from synthgen.io.store import atomic_write
from tests.conftest import REPO
from tests.crash_helpers import child_env
from tests.helpers import fake_config, write_config


def _cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthgen.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=child_env(**env),
    )  # fmt: skip


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("synthgen: error:")]
    assert len(errors) == 1, done.stderr
    return done.stderr  # the one error line, with its detail lines (indented) under it


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("a..b=1", "--set 'a..b=1': malformed key 'a..b'"),
        ("=1", "--set '=1': empty key"),
        ("model.=1", "--set 'model.=1': malformed key"),
        ("model.bogus=1", "--set 'model.bogus=1': model.bogus: unknown key"),
        ("bogus.deep=1", "--set 'bogus.deep=1': bogus: unknown key"),
        ("shards.size=-3", "--set 'shards.size=-3': shards.size:"),
        ("no-equals-sign", "--set 'no-equals-sign': expected key.path=value"),
    ],
)
def test_a_bad_override_is_exit_2_naming_it(tmp_path, override, says) -> None:
    cfg = write_config(tmp_path / "c.yaml", fake_config(str(tmp_path / "out")))
    done = _cli("run", cfg, "--set", override)
    assert done.returncode == 2, done.stderr
    assert says in _one_error_line(done)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_missing_config_is_exit_2(tmp_path) -> None:
    done = _cli("run", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert "nope.yaml: config file not found" in _one_error_line(done)


def test_unusable_output_is_invalid_input_exit_2(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    cfg = write_config(tmp_path / "c.yaml", fake_config(str(blocker / "out")))
    done = _cli("run", cfg)
    assert done.returncode == 2, done.stderr
    assert "not writable" in _one_error_line(done) or "output" in done.stderr


@pytest.mark.slow
def test_a_run_stopped_by_the_budget_is_exit_3(tmp_path, prefect_api) -> None:
    data = fake_config(
        str(tmp_path / "out"),
        shards__size=4,  # 6 shards
        model__fake__seconds_per_shard=1.0,
        # the embedded cluster's one worker (named 0) leased at 3600 $/h: ~$1 per shard
        cost__worker_prices={"0": 3600.0},
        budget__max_cost_usd=1.5,
    )
    cfg = write_config(tmp_path / "c.yaml", data)
    summary = tmp_path / "s.json"
    done = _cli("run", cfg, "--summary-json", str(summary), timeout=400)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert json.loads(summary.read_text())["status"] == "partial"


def test_expected_failures_map_to_documented_codes() -> None:
    assert exit_code(ConfigError("x")) == EXIT_INVALID
    assert exit_code(PromptError("x")) == EXIT_INVALID
    assert exit_code(PreflightError("x")) == EXIT_INVALID
    assert exit_code(HubTokenError("x")) == EXIT_INVALID
    assert exit_code(RunIncomplete("x")) == EXIT_INCOMPLETE
    assert exit_code(BudgetExhausted("x")) == EXIT_INCOMPLETE
    assert exit_code(StorageError("x")) == EXIT_INCOMPLETE
    assert exit_code(HubError("x")) == EXIT_INCOMPLETE
    assert exit_code(RunLockedError("x")) == EXIT_BUSY


def test_a_failed_local_write_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    import fsspec

    target = tmp_path / "d" / "x.json"

    def refuse(src, dst):
        raise PermissionError("refused")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        atomic_write(fsspec.filesystem("file"), str(target), b"{}")
    assert list((tmp_path / "d").iterdir()) == []
