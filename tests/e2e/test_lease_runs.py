"""Two `synthgen run` processes against the same output prefix and run id at once: the second
is refused by the lease with a clear message; the first is not disturbed."""

from __future__ import annotations

import json

import pytest

from synthgen.config import config_from_dict
from synthgen.io.lease import read_lease
from synthgen.io.store import Store
from tests.crash_helpers import run_cli, start_cli, wait_for
from tests.helpers import fake_config, published_manifest, write_config

pytestmark = pytest.mark.slow


def test_second_concurrent_run_is_refused_and_the_first_completes(tmp_path, prefect_api):
    out = tmp_path / "out"
    data = fake_config(str(out), shards__size=3, model__fake__seconds_per_shard=1.0)
    cfg_path = write_config(tmp_path / "c.yaml", data)
    cfg = config_from_dict(data)
    store = Store(cfg.output)

    first = start_cli(cfg_path, tmp_path / "first.json", tmp_path / "first.log")
    wait_for(lambda: read_lease(store, cfg.run_id) is not None, 120, "the first run's lease")
    holder = read_lease(store, cfg.run_id)

    code, summary, text = run_cli(cfg_path, tmp_path, "second", timeout=120)
    assert code == 5 and summary is None  # busy: another live run holds the lease
    assert "is being run by another live process" in text
    assert holder.holder in text and holder.host in text and f"pid {holder.pid}" in text
    assert "expires" in text and cfg.run_id in text
    assert "Starting temporary server" not in text  # refused by the CLI before any startup
    assert "Flow run" not in text

    assert first.wait(timeout=240) == 0, (tmp_path / "first.log").read_text()[-3000:]
    result = json.loads((tmp_path / "first.json").read_text())
    assert result["status"] == "complete" and result["shards_generated"] == 8
    manifest = published_manifest(out)
    assert manifest["rows"] == 24
    assert read_lease(store, cfg.run_id) is None  # released at the end

    # and afterwards the same run id can run again (nothing left to generate)
    code, summary, text = run_cli(cfg_path, tmp_path, "third")
    assert code == 0 and summary["shards_generated"] == 0, text[-2000:]
