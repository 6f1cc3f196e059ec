"""Canonical published rows of a run, for the behaviour-preservation test.

`python -m tests.e2e.golden.capture NAME OUTPUT_DIR` writes `tests/e2e/golden/NAME.json`
from a published dataset (how the golden files were made, before the stage refactor).
Rows are compared minus what legitimately varies between runs and versions: timestamps,
worker names, device labels, the run id (derived from the config's fingerprint, which
grows with new config keys) and sampling keys added since the golden file was written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

IGNORED = {"created_at", "worker", "device", "run_id"}
HERE = Path(__file__).parent


def dataset_files(output: str) -> list[str]:
    root = Path(output) / "dataset"
    data = root / "data"
    base = data if data.is_dir() else root
    return sorted(
        str(p)
        for p in base.rglob("*.parquet")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(base).parts)
    )


def canonical_rows(output: str) -> list[dict[str, Any]]:
    files = dataset_files(output)
    if not files:
        raise FileNotFoundError(f"no published Parquet files under {output}/dataset")
    table = ds.dataset(files, format="parquet").to_table()
    rows = []
    for row in table.to_pylist():
        out = {k: v for k, v in row.items() if k not in IGNORED}
        if isinstance(out.get("sampling"), str):
            out["sampling"] = json.loads(out["sampling"])
        rows.append(out)
    return sorted(rows, key=lambda r: (r["prompt_id"], r.get("sample_index") or 0))


def compare(golden: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[str]:
    """Differences, described; empty when `now` preserves `golden`. Columns and sampling keys
    that did not exist when the golden file was written are ignored."""
    problems: list[str] = []
    if len(golden) != len(now):
        problems.append(f"{len(now)} rows published, golden has {len(golden)}")
    by_id = {r["prompt_id"]: r for r in now}
    for g in golden:
        r = by_id.get(g["prompt_id"])
        if r is None:
            problems.append(f"prompt {g['prompt_id']} missing")
            continue
        for key, value in g.items():
            got = r.get(key)
            if key == "sampling" and isinstance(got, dict):
                got = {k: got.get(k) for k in value}
            if got != value:
                problems.append(f"prompt {g['prompt_id']}: {key} = {got!r}, golden {value!r}")
    return problems


def main() -> None:
    name, output = sys.argv[1], sys.argv[2]
    rows = canonical_rows(output)
    (HERE / f"{name}.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(f"{len(rows)} rows -> {HERE / f'{name}.json'}")


if __name__ == "__main__":
    main()
