"""Behaviour preserved across the stage refactor: the published rows of the embedded default
and of a 50-shard fake-engine run equal the golden rows captured before it
(`tests/e2e/golden/`, minus timestamps, worker names, device labels and the run id)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows.run import synthgen_run
from tests.conftest import REPO
from tests.e2e.golden.capture import HERE, canonical_rows, compare

pytestmark = pytest.mark.slow


def _golden(name: str) -> list[dict]:
    return json.loads((HERE / f"{name}.json").read_text())


def _now(output: str) -> list[dict]:
    # the golden files went through JSON: compare like with like
    return json.loads(json.dumps(canonical_rows(output), default=str))


def test_compare_sees_a_changed_row() -> None:
    golden = _golden("fake-50")
    changed = json.loads(json.dumps(golden))
    changed[3]["completion"] += " extra"
    assert compare(golden, golden) == []
    problems = compare(golden, changed)
    assert len(problems) == 1 and "completion" in problems[0]
    assert compare(golden, changed[1:])[0].startswith(f"{len(golden) - 1} rows published")


def test_fake_engine_50_shards_publish_the_golden_rows(tmp_path, prefect_api) -> None:
    out = tmp_path / "out"
    res = synthgen_run(
        config=str(REPO / "tests/e2e/golden/fake-50.yaml"), overrides=[f"output.uri={out}"]
    )
    assert res["status"] == "complete" and res["shards_total"] == 50, res
    assert compare(_golden("fake-50"), _now(str(out))) == []


def test_embedded_default_publishes_the_golden_rows(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "synthgen.cli", "run", str(REPO / "configs/default.yaml"),
         "--set", f"output.uri={out}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert compare(_golden("default"), _now(str(out))) == []
